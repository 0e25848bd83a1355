"""A FastAPI backend that looks calls up (``GET /calls/{sid}``) and receives
Exotel's call events (``POST /exotel/events?key=...``).

One client for the app's lifetime (its pool, single-flight and retry budget are
shared by every request), the lookup bounded by a deadline of its own, and every
library error answered as an RFC 9457 problem document::

    EXOTEL_API_KEY=... EXOTEL_API_TOKEN=... EXOTEL_ACCOUNT_SID=... EXOTEL_REGION=in \\
        CCM_EVENTS_KEY=... uvicorn examples.fastapi_app:app

The receiver answers 200 as soon as an event is parsed and hands it to a
:class:`CallWatch`, which gives each call that ends to ``on_ended`` once: from
its terminal event, or, when that has not come ``terminal_deadline`` seconds
after the call's first event (Exotel may deliver a callback late, or not at
all), from polling Get Call Details until the call is terminal.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import os
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from ccm_async import (
    AsyncCcmClient,
    CallDetails,
    CallEvent,
    CcmError,
    StatusCallback,
    WaitTimeoutError,
    parse_call_event,
)

LOOKUP_TIMEOUT = float(os.environ.get("CCM_LOOKUP_TIMEOUT", "10"))
"""Seconds a web request waits for its lookup, retries included."""
TERMINAL_DEADLINE = float(os.environ.get("CCM_TERMINAL_DEADLINE", "600"))
"""Seconds after a call's first event before its end is polled for instead."""
MAX_EVENT_BODY = 1024 * 1024
"""The largest event body read (a status callback is a few hundred bytes)."""
LONGEST_CALL = 4 * 3600.0
"""Seconds a call can last (Make Call's TimeLimit): how long its end is polled for."""

logger = logging.getLogger(__name__)

OnEnded = Callable[[CallDetails], Awaitable[None]]


def create_app(
    environ: Mapping[str, str] | None = None,
    *,
    lookup_timeout: float = LOOKUP_TIMEOUT,
    terminal_deadline: float = TERMINAL_DEADLINE,
    on_ended: OnEnded | None = None,
    max_pending: int = 10_000,
    **client_options: Any,
) -> FastAPI:
    """The app, its client configured from ``environ`` (``os.environ`` by default)
    and ``client_options`` (:class:`AsyncCcmClient`'s keyword arguments); the
    events' key is ``CCM_EVENTS_KEY`` there (no key: every event is refused).
    ``on_ended`` is given each call that ends (by default, it is logged)."""
    environ = os.environ if environ is None else environ
    events_key = environ.get("CCM_EVENTS_KEY", "").encode()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        access_log = logging.getLogger("uvicorn.access")
        access_log.addFilter(hide_key)
        async with (
            AsyncCcmClient.from_env(environ, **client_options) as ccm,
            CallWatch(
                ccm,
                on_ended or log_ended,
                terminal_deadline=terminal_deadline,
                lookup_timeout=lookup_timeout,
                max_pending=max_pending,
            ) as watch,
        ):
            app.state.ccm = ccm
            app.state.watch = watch
            yield
        access_log.removeFilter(hide_key)

    app = FastAPI(lifespan=lifespan, default_response_class=AsciiJSONResponse)

    @app.get("/calls/{sid}")
    async def get_call(sid: str, request: Request) -> dict[str, Any]:
        ccm: AsyncCcmClient = request.app.state.ccm
        return (await ccm.get_call(sid, timeout=lookup_timeout)).to_dict()

    @app.post("/exotel/events")
    async def exotel_event(request: Request, key: str = "") -> Response:
        # Exotel does not sign callbacks: the URL's key is the only proof.
        if not events_key or not hmac.compare_digest(key.encode(), events_key):
            return problem_answer(403, "Forbidden")
        body = await read_at_most(request, MAX_EVENT_BODY)
        if body is None:
            return problem_answer(413, "Content Too Large")
        event = parse_call_event(body, request.headers.get("content-type"))
        watch: CallWatch | None = getattr(request.app.state, "watch", None)
        if watch is None or not watch.accept(event):  # Exotel sends it again later
            return problem_answer(503, "Service Unavailable", retry_after=60)
        return Response(status_code=200)

    @app.exception_handler(CcmError)
    async def problem(request: Request, exc: CcmError) -> JSONResponse:
        problem = exc.to_problem()
        return AsciiJSONResponse(problem.body, status_code=problem.status, headers=problem.headers)

    return app


class AsciiJSONResponse(JSONResponse):
    """JSON in ASCII: a server's text may hold a lone surrogate (half an emoji,
    say), which JSON can carry escaped but UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


_KEY_PARAMETER = re.compile(r"(?<=[?&])key=[^&\s]*")


def hide_key(record: logging.LogRecord) -> bool:
    """A log filter: the events' key out of uvicorn's access log (its URL)."""
    if isinstance(record.args, tuple):
        record.args = tuple(
            _KEY_PARAMETER.sub("key=***", arg) if isinstance(arg, str) else arg
            for arg in record.args
        )
    return True


async def read_at_most(request: Request, limit: int) -> bytes | None:
    """The request's body, or None if it is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None  # refused before it is sent
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def problem_answer(status: int, title: str, *, retry_after: int | None = None) -> JSONResponse:
    """An RFC 9457 answer of the app's own (not a library error's)."""
    return AsciiJSONResponse(
        {"type": "about:blank", "title": title, "status": status},
        status_code=status,
        headers={} if retry_after is None else {"retry-after": str(retry_after)},
        media_type="application/problem+json",
    )


async def log_ended(call: CallDetails) -> None:
    """The default ``on_ended``: log the call's end."""
    logger.info("call %s ended: %s", call.call_sid, call.call_status)


class CallWatch:
    """Gives each call that ends to ``on_ended``, once, from its terminal event or,
    when that is late, from polling; at most ``max_pending`` events are handled
    (and calls watched) at once. Enter it (``async with``) to run it."""

    def __init__(
        self,
        ccm: AsyncCcmClient,
        on_ended: OnEnded = log_ended,
        *,
        terminal_deadline: float = TERMINAL_DEADLINE,
        lookup_timeout: float = LOOKUP_TIMEOUT,
        max_pending: int = 10_000,
    ) -> None:
        self._ccm = ccm
        self._on_ended = on_ended
        self._terminal_deadline = terminal_deadline
        self._lookup_timeout = lookup_timeout
        self._max_pending = max_pending
        self._pending = 0
        self._terminal_events: dict[str, anyio.Event] = {}
        # Exotel retries a callback it thinks failed: an end is given once.
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._task_group = anyio.create_task_group()
        self._open = False

    async def __aenter__(self) -> CallWatch:
        await self._task_group.__aenter__()
        self._open = True
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._open = False
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(*exc_info)

    def accept(self, event: CallEvent | StatusCallback) -> bool:
        """Hand ``event`` over without waiting; False when too many are pending,
        or the watch is not running."""
        if not self._open or self._pending >= self._max_pending:
            return False
        self._pending += 1
        self._task_group.start_soon(self._handle, event)
        return True

    async def _handle(self, event: CallEvent | StatusCallback) -> None:
        try:
            if event.call_sid in self._ended:
                return
            if event.is_terminal:
                await self._end_from(event)
            elif event.call_sid not in self._terminal_events:
                await self._watch(event.call_sid)
        finally:
            self._pending -= 1

    async def _end_from(self, event: CallEvent | StatusCallback) -> None:
        if (terminal_event := self._terminal_events.get(event.call_sid)) is not None:
            terminal_event.set()
        if isinstance(event, CallEvent) and event.call.is_terminal:
            await self._end(event.call)
            return
        # v1's callback says little, and CCM may not have the end yet: its details
        # say the rest once it has.
        try:
            call = await self._ccm.get_call(event.call_sid, timeout=self._lookup_timeout)
        except CcmError as exc:
            logger.warning("call %s: %s; polling for its end", event.call_sid, exc)
        else:
            if call.is_terminal:
                await self._end(call)
                return
        await self._poll_for_end(event.call_sid)

    async def _watch(self, call_sid: str) -> None:
        terminal_event = self._terminal_events[call_sid] = anyio.Event()
        try:
            with anyio.move_on_after(self._terminal_deadline):
                await terminal_event.wait()
                return
        finally:
            del self._terminal_events[call_sid]
        await self._poll_for_end(call_sid)

    async def _poll_for_end(self, call_sid: str) -> None:
        with anyio.move_on_after(LONGEST_CALL):
            while call_sid not in self._ended:
                try:
                    call = await self._ccm.wait_for_terminal(call_sid, timeout=LONGEST_CALL)
                except WaitTimeoutError:
                    break
                except CcmError as exc:  # an outage, say: the end is polled for again
                    logger.warning("call %s: %s; polling again in a minute", call_sid, exc)
                    await anyio.sleep(60)
                else:
                    await self._end(call)
                    return
        if call_sid not in self._ended:
            logger.warning("call %s: no end in %gs of polling", call_sid, LONGEST_CALL)

    async def _end(self, call: CallDetails) -> None:
        if call.call_sid is None or call.call_sid in self._ended:
            return
        self._ended[call.call_sid] = None
        if len(self._ended) > self._max_pending:
            self._ended.popitem(last=False)
        try:
            await self._on_ended(call)
        except Exception:  # the app's own code: its failure is this call's alone
            logger.exception("call %s: on_ended failed", call.call_sid)


app = create_app()
