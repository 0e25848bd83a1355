"""FakeCcm: an ASGI fake of the CCM Get Call Details API, with fault injection."""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import enum
import hashlib
import json
import math
import random
import re
import secrets
import socket
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final, TypedDict, cast

import anyio
import anyio.lowlevel
import attrs
import httpx

from ccm_async import AsyncCcmClient, CallDetails, RateLimit
from ccm_async._convert import V3_KEYS, ApiVersion

__all__ = ["FakeCcm", "Fault", "RecordedRequest", "serve_asgi"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CALL_PATH: Final = re.compile(
    r"/(?P<version>v2|v3)/accounts/(?P<account>[^/]+)/calls/(?P<sid>[^/]+)"
)
_MESSAGES: Final = {
    401: "Authorization failed",
    403: "Forbidden",
    404: "Call not found / unsupported in this API",
    405: "Method not allowed",
    429: "Too many requests",
    500: "Internal Server Error",
}
_IST: Final = dt.timezone(dt.timedelta(hours=5, minutes=30))
_UNIX_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH: Final = dt.datetime(2024, 1, 1, tzinfo=_IST)
# v3 sends none of these, and its placeholder for an end not yet known is the epoch.
_NOT_IN_V3: Final = ("updated_time", "start_time", "assigned_agent_details", "customer_details")
_V3_NOT_YET: Final = _UNIX_EPOCH.astimezone(_IST).isoformat(" ")
_ISO_T: Final = re.compile(r"(?<=^[0-9]{4}-[0-9]{2}-[0-9]{2})T")


@attrs.frozen
class _Codes:
    """The error codes a version's generated answers carry."""

    not_found: int
    rate_limited: int | None


_CODES: Final[dict[str, _Codes]] = {
    "v2": _Codes(not_found=3043, rate_limited=None),
    "v3": _Codes(not_found=10744, rate_limited=10724),
}


class _Kind(enum.Enum):
    ENVELOPE = "envelope"
    HTML = "html"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    OVERSIZED = "oversized"
    DISCONNECT = "disconnect"
    STALL = "stall"
    HANG = "hang"


@attrs.frozen(kw_only=True)
class Fault:
    """One way for FakeCcm to answer badly. Build it with the class methods."""

    kind: _Kind
    http_status: int = 200
    code: int | None = None
    error_code: int | None = None
    retry_after: str | None = None
    size: int = 0

    @classmethod
    def server_error(
        cls, code: int = 1100, *, http_status: int = 500, retry_after: float | None = None
    ) -> Fault:
        """The API's 500 envelope with ``error_data.code`` = ``code`` (1100, 3042, 3046,
        3075). ``http_status=200`` sends it on an HTTP 200, as Exotel has been seen to."""
        return cls._envelope(http_status, 500, code, retry_after)

    @classmethod
    def not_found(cls, code: int = 3043) -> Fault:
        """The API's 404 envelope (3043, 3044, 3045)."""
        return cls._envelope(404, 404, code, None)

    @classmethod
    def unauthorized(cls) -> Fault:
        """The API's 401/1010 envelope."""
        return cls._envelope(401, 401, 1010, None)

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = None) -> Fault:
        """A 429 envelope, with a ``Retry-After`` header when given (seconds or HTTP date)."""
        return cls._envelope(429, 429, None, retry_after)

    @classmethod
    def html(cls, status: int = 502, *, retry_after: float | None = None) -> Fault:
        """A load balancer's HTML error page (not the envelope)."""
        return cls(kind=_Kind.HTML, http_status=status, retry_after=_header(retry_after))

    @classmethod
    def malformed(cls) -> Fault:
        """An HTTP 200 whose body is not JSON."""
        return cls(kind=_Kind.MALFORMED)

    @classmethod
    def truncated(cls) -> Fault:
        """An HTTP 200 whose JSON body is cut in half (a consistent Content-Length)."""
        return cls(kind=_Kind.TRUNCATED)

    @classmethod
    def oversized(cls, size: int = 2 * 1024 * 1024, *, declare_length: bool = True) -> Fault:
        """An HTTP 200 with a body of ``size`` bytes, sent in chunks; with
        ``declare_length=False`` it is sent without a Content-Length."""
        return cls(kind=_Kind.OVERSIZED, size=size, code=1 if declare_length else 0)

    @classmethod
    def disconnect(cls) -> Fault:
        """Headers and half the body, then the connection is closed (on a socket only)."""
        return cls(kind=_Kind.DISCONNECT)

    @classmethod
    def stall(cls) -> Fault:
        """Headers and half the body, then nothing more until the client goes away."""
        return cls(kind=_Kind.STALL)

    @classmethod
    def hang(cls) -> Fault:
        """Accept the request and never answer, until the client goes away."""
        return cls(kind=_Kind.HANG)

    @classmethod
    def _envelope(
        cls, http_status: int, code: int, error_code: int | None, retry_after: float | str | None
    ) -> Fault:
        return cls(
            kind=_Kind.ENVELOPE,
            http_status=http_status,
            code=code,
            error_code=error_code,
            retry_after=_header(retry_after),
        )


def _header(value: float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return f"{value:g}"


class FakeCredentials(TypedDict):
    """The fake's credentials, as keyword arguments for :class:`AsyncCcmClient`."""

    api_key: str
    api_token: str
    account_sid: str


@attrs.frozen
class RecordedRequest:
    """A request FakeCcm saw, and the status it answered (0 when it never answered).

    ``time`` is when it arrived, by ``anyio.current_time()`` of the loop serving it:
    in-process that is the test's own clock (virtual, if the test's is), on a
    socket the monotonic clock of the server's thread.
    """

    method: str
    path: str
    query: str
    call_sid: str | None
    status: int
    time: float


@attrs.define
class _RandomPlan:
    fault: Fault
    rate: float
    max_per_sid: int | None


class FakeCcm:
    """A fake of the CCM Get Call Details API, as an ASGI application.

    It checks HTTP Basic auth (the 401/1010 envelope when wrong), serves the calls
    you :meth:`add_call` on both versions' paths (``/v2/...`` as v2's ``data``,
    ``/v3/...`` as v3's ``call_details``), answers other SIDs with the 404
    envelope (3043, or v3's 10744), or, with
    ``generate=True``, with a deterministic realistic call (so a million SIDs need
    no setup; ``missing_rate`` of them are not found). It fails on demand
    (:meth:`fail`, :meth:`fail_randomly`), adds ``latency`` (seconds, or a
    ``(low, high)`` range), and records the last ``log_size`` requests. With
    ``rate_limit`` it answers 429 to requests beyond that many in any window (a
    sliding window per account, as a server counts), with a ``Retry-After`` when
    ``rate_limit_retry_after`` is set. With ``rate_limit_headers`` the window is a
    fixed one instead, as the newer Exotel docs describe: every answer carries
    ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``
    (seconds to the reset, to the millisecond, as the answer leaves; the client
    reads Exotel's epoch seconds too) and the excess gets a 429 with
    ``Retry-After`` and a ``RestException`` body. Its clock is ``anyio.current_time()``: in a
    test on a virtual clock, its latency and its window run on that clock too.

    Use it in-process with :meth:`client` (fast), or on a real socket with
    :meth:`serve` (needs ``ccm-async[testing]``) for what only a socket shows:
    timeouts, dropped connections, body size limits, pooling.
    """

    def __init__(
        self,
        *,
        api_key: str = "fake-api-key",
        api_token: str = "fake-api-token",  # noqa: S107 - the fake's own, not a secret
        account_sid: str = "fake-account",
        generate: bool = False,
        missing_rate: float = 0.0,
        latency: float | tuple[float, float] = 0.0,
        seed: int = 0,
        log_size: int = 10_000,
        rate_limit: RateLimit | None = None,
        rate_limit_retry_after: bool = False,
        rate_limit_headers: bool = False,
    ) -> None:
        self.api_key = api_key
        self.api_token = api_token
        self.account_sid = account_sid
        self.generate = generate
        self.missing_rate = missing_rate
        self.latency = latency
        self._authorization = "Basic " + base64.b64encode(f"{api_key}:{api_token}".encode()).decode(
            "ascii"
        )
        self._random = random.Random(seed)
        self._calls: dict[str, dict[str, Any]] = {}
        self._sid_faults: dict[str, collections.deque[Fault]] = {}
        self._sid_faults_forever: dict[str, Fault] = {}
        self._random_plans: list[_RandomPlan] = []
        self._random_failures: collections.Counter[str] = collections.Counter()
        self._log: collections.deque[RecordedRequest] = collections.deque(maxlen=log_size)
        self.rate_limit = rate_limit
        self.rate_limit_retry_after = rate_limit_retry_after
        self.rate_limit_headers = rate_limit_headers
        self._window_end = -math.inf
        self._window_used = 0
        self._admitted: collections.deque[float] = collections.deque(
            maxlen=rate_limit.requests if rate_limit else 0
        )
        self.request_count = 0
        """Every request seen since creation (the log keeps only the last ``log_size``)."""
        self.in_flight = 0
        """Requests being answered right now."""
        self.max_in_flight = 0
        """The most requests that were being answered at once."""

    def __repr__(self) -> str:
        return f"<FakeCcm account_sid={self.account_sid!r} calls={len(self._calls)}>"

    @property
    def credentials(self) -> FakeCredentials:
        """The fake's own ``api_key``, ``api_token`` and ``account_sid``, as keyword arguments."""
        return {
            "api_key": self.api_key,
            "api_token": self.api_token,
            "account_sid": self.account_sid,
        }

    def client(self, **options: Any) -> AsyncCcmClient:
        """An :class:`AsyncCcmClient` wired to this fake in-process (no socket).

        ``options`` go to the constructor and may override the fake's credentials
        (to test wrong ones).
        """
        http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self))
        settings: dict[str, Any] = {
            **self.credentials,
            "base_url": "http://127.0.0.1",
            "http_client": http_client,
        }
        return AsyncCcmClient(**{**settings, **options})

    # -- what it serves ---------------------------------------------------------

    def add_call(self, call: CallDetails | Mapping[str, Any]) -> None:
        """Serve ``call`` (a CallDetails, or v2's raw ``data`` object, which may be
        malformed; v3's paths serve it renamed, see :mod:`ccm_async._convert`)."""
        data = call.to_dict() if isinstance(call, CallDetails) else dict(call)
        sid = data.get("call_sid")
        if not isinstance(sid, str):
            raise ValueError("a call needs a string call_sid")
        self._calls[sid] = data

    def has_call(self, call_sid: str) -> bool:
        """Whether ``call_sid`` is found (added, or generated and not missing)."""
        return self._call_data(call_sid) is not None

    def _call_data(self, call_sid: str) -> dict[str, Any] | None:
        data = self._calls.get(call_sid)
        if data is None and self.generate:
            digest = int.from_bytes(hashlib.blake2b(call_sid.encode(), digest_size=16).digest())
            if (digest >> 64) % 1_000_000 >= self.missing_rate * 1_000_000:
                data = _generated_call(call_sid, digest)
        return data

    # -- faults -------------------------------------------------------------------

    def fail(self, call_sid: str, fault: Fault, *, times: int | None = None) -> None:
        """Answer ``call_sid`` with ``fault``: the next ``times`` requests, or every one."""
        if times is None:
            self._sid_faults_forever[call_sid] = fault
        else:
            self._sid_faults.setdefault(call_sid, collections.deque()).extend([fault] * times)

    def fail_randomly(self, fault: Fault, *, rate: float, max_per_sid: int | None = None) -> None:
        """Answer a ``rate`` share of requests with ``fault``, chosen by the fake's seeded
        random generator. ``max_per_sid`` caps the random failures of one SID, counted
        over every random plan, so that a test's outcome does not depend on luck."""
        self._random_plans.append(_RandomPlan(fault, rate, max_per_sid))

    def clear_faults(self) -> None:
        """Forget every fault plan."""
        self._sid_faults.clear()
        self._sid_faults_forever.clear()
        self._random_plans.clear()
        self._random_failures.clear()

    def _pick_fault(self, call_sid: str) -> Fault | None:
        queued = self._sid_faults.get(call_sid)
        if queued:
            fault = queued.popleft()
            if not queued:
                del self._sid_faults[call_sid]
            return fault
        standing = self._sid_faults_forever.get(call_sid)
        if standing is not None:
            return standing
        for plan in self._random_plans:
            capped = (
                plan.max_per_sid is not None and self._random_failures[call_sid] >= plan.max_per_sid
            )
            if self._random.random() < plan.rate and not capped:
                self._random_failures[call_sid] += 1
                return plan.fault
        return None

    # -- what it saw --------------------------------------------------------------

    @property
    def requests(self) -> tuple[RecordedRequest, ...]:
        """The last ``log_size`` requests, oldest first."""
        return tuple(self._log)

    def requests_for(self, call_sid: str) -> int:
        """How many of the logged requests asked for ``call_sid``."""
        return sum(1 for request in self._log if request.call_sid == call_sid)

    def statuses_by_window(self) -> list[list[int]]:
        """With ``rate_limit_headers``: the statuses of the logged requests in each
        fixed window, oldest first, a window opened by the first arrival after the
        last one ended, as the fake opens them. To measure how a client paces itself."""
        if self.rate_limit is None or not self.rate_limit_headers:
            msg = "fixed windows need FakeCcm(rate_limit=..., rate_limit_headers=True)"
            raise ValueError(msg)
        windows: list[list[int]] = []
        window_end = -math.inf
        for request in sorted(self._log, key=lambda r: r.time):
            if request.time >= window_end:
                window_end = request.time + self.rate_limit.per
                windows.append([])
            windows[-1].append(request.status)
        return windows

    # -- ASGI ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        arrived = anyio.current_time()
        self.request_count += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        match = _CALL_PATH.fullmatch(scope["path"])
        status = 0
        try:
            status = await self._answer(scope, receive, send, match)
        finally:
            self.in_flight -= 1
            self._log.append(
                RecordedRequest(
                    method=scope["method"],
                    path=scope["path"],
                    query=bytes(scope.get("query_string", b"")).decode("latin-1"),
                    call_sid=match["sid"] if match else None,
                    status=status,
                    time=arrived,
                )
            )

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, match: re.Match[str] | None
    ) -> int:
        if match is None:
            return await _send_envelope(send, 404, 404, error_code=1000, message="Not found")
        call_sid = match["sid"]
        if scope["method"] != "GET":
            return await _send_envelope(send, 405, 405, error_code=None)
        if _header_value(scope, b"authorization") != self._authorization:
            return await _send_envelope(send, 401, 401, error_code=1010)
        if match["account"] != self.account_sid:
            return await _send_envelope(send, 403, 403, error_code=1003)
        version: ApiVersion = "v3" if match["version"] == "v3" else "v2"
        codes = _CODES[version]
        wait = self._admit()
        # The window as the request arrived, as a server's limiter counts it.
        used, window_end = self._window_used, self._window_end
        if wait is not None:
            # Retry-After is whole seconds (RFC 9110): round up, never early.
            retry_after = [(b"retry-after", str(math.ceil(wait)).encode())]
            if self.rate_limit_headers:
                headers = [*self._window_headers(used, window_end), *retry_after]
                return await _send_rest_exception(send, math.ceil(wait), headers)
            headers = retry_after if self.rate_limit_retry_after else []
            return await _send_envelope(
                send, 429, 429, error_code=codes.rate_limited, headers=headers
            )
        await self._delay()
        headers = self._window_headers(used, window_end)
        fault = self._pick_fault(call_sid)
        if fault is not None:
            return await _send_fault(fault, receive, send)
        data = self._call_data(call_sid)
        if data is None:
            return await _send_envelope(send, 404, 404, error_code=codes.not_found, headers=headers)
        return await _send_json(send, 200, _success(data, version, self.account_sid), headers)

    def _admit(self) -> float | None:
        """None if the rate limit admits a request now, else the seconds until it would."""
        if self.rate_limit is None:
            return None
        if self.rate_limit_headers:
            return self._admit_in_fixed_window(self.rate_limit)
        return self._admit_in_sliding_window(self.rate_limit)

    def _admit_in_fixed_window(self, limit: RateLimit) -> float | None:
        now = anyio.current_time()
        if now >= self._window_end:
            self._window_end = now + limit.per
            self._window_used = 0
        admitted = self._window_used < limit.requests
        self._window_used += admitted
        return None if admitted else self._window_end - now

    def _window_headers(self, used: int, window_end: float) -> list[tuple[bytes, bytes]]:
        """The headers of the fixed window a request arrived in, when the fake sends
        them: what was left of it then (``used`` of it), and its reset as seen when
        the answer leaves."""
        limit = self.rate_limit
        if limit is None or not self.rate_limit_headers:
            return []
        # The reset as seconds from now, rounded up to the millisecond: read on the
        # fake's own clock, it is exact on a virtual one too, where epoch seconds
        # (time.time()) would drift from the loop's clock.
        left = max(0.0, window_end - anyio.current_time())
        return [
            (b"x-ratelimit-limit", str(limit.requests).encode()),
            (b"x-ratelimit-remaining", str(limit.requests - used).encode()),
            (b"x-ratelimit-reset", f"{math.ceil(left * 1000) / 1000:.3f}".encode()),
        ]

    def _admit_in_sliding_window(self, limit: RateLimit) -> float | None:
        now = anyio.current_time()
        admitted = self._admitted
        if len(admitted) == admitted.maxlen:
            # The oldest, admitted at t, counts until t + per: the sum, as a client's
            # window computes it (now - t can round to just under per).
            counted_until = admitted[0] + limit.per
            if now < counted_until:
                return counted_until - now
        admitted.append(now)
        return None

    async def _delay(self) -> None:
        latency = self.latency
        if isinstance(latency, tuple):
            latency = self._random.uniform(*latency)
        if latency > 0:
            await anyio.sleep(latency)

    # -- call events ----------------------------------------------------------------

    async def post_call_event(
        self,
        url: str,
        call_sid: str,
        *,
        event_type: str = "terminal",
        http_client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        """POST to ``url`` the CCM status callback Exotel would send for ``call_sid``
        (JSON: ``event_details.event_type`` and, as ``call_details``, the call as this
        fake serves it now), to test a receiver. Returns the receiver's answer.

        ``http_client`` sends it (an in-process app's, say); by default a new one.
        """
        body = {"event_details": {"event_type": event_type}, "call_details": self._served(call_sid)}
        return await _post_json(url, http_client, body)

    async def post_status_callback(
        self,
        url: str,
        call_sid: str,
        *,
        event_type: str | None = "terminal",
        form: bool = True,
        http_client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        """POST to ``url`` Exotel's v1 status callback for ``call_sid`` as this fake
        serves it now: form-encoded (or JSON with ``form=False``), times as
        ``YYYY-MM-DD HH:mm:ss`` in India time (whole seconds, as v1 has them; v3's
        placeholder for "not yet", the Unix epoch, as v1's ``0000-00-00 00:00:00``).
        With ``event_type`` None, only the four fields of the plain callback;
        otherwise the event's fields and ``Legs``."""
        fields = _status_callback(self._served(call_sid), event_type)
        if form:
            return await _post(url, http_client, data=_form_fields(fields))
        return await _post_json(url, http_client, fields)

    def _served(self, call_sid: str) -> dict[str, Any]:
        data = self._call_data(call_sid)
        if data is None:
            raise ValueError("the fake serves no call with that SID")
        return data

    # -- on a socket --------------------------------------------------------------

    def serve(
        self, *, host: str = "127.0.0.1", port: int = 0
    ) -> contextlib.AbstractAsyncContextManager[str]:
        """Serve the fake on a real socket; yields its base URL (``http://127.0.0.1:PORT``).

        The server (uvicorn, from the ``testing`` extra) runs its own event loop in
        a thread, so this works whichever async backend the caller runs.
        """
        return serve_asgi(self, host=host, port=port, name="FakeCcm")


@asynccontextmanager
async def serve_asgi(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, lifespan: bool = False, name: str
) -> AsyncGenerator[str]:
    """Serve the ASGI ``app`` under uvicorn, its own event loop in a thread, on a
    socket bound before the server starts (no port race); yields its base URL.

    With ``lifespan`` the app's startup runs first, and a failed one is a RuntimeError.
    """
    try:
        import uvicorn  # noqa: PLC0415 - an optional extra
    except ImportError as exc:  # pragma: no cover - the test suite has it
        raise RuntimeError(
            f"{name} on a socket needs uvicorn: pip install 'ccm-async[testing]'"
        ) from exc
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say
    # so, and without it every keep-alive response waits ~40 ms (delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        app,
        lifespan="on" if lifespan else "off",
        log_config=None,
        log_level="critical",
        access_log=False,
        timeout_graceful_shutdown=2,
        # Longer than the client keeps idle connections (5 s): at equal timeouts
        # the server closes one just as the client reuses it.
        timeout_keep_alive=60,
        backlog=4096,
        # asyncio's loop, not uvloop's: the fake's clock (its rate-limit window,
        # RecordedRequest.time) then has the monotonic clock's resolution, where
        # uvloop's counts whole milliseconds.
        loop="asyncio",
    )
    server = uvicorn.Server(config)

    def run() -> None:
        # A failed startup is uvicorn's sys.exit(3), which the loop below reports.
        with contextlib.suppress(SystemExit):
            server.run(sockets=[sock])

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"{name}'s server failed to start")
            await anyio.sleep(0.005)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await anyio.to_thread.run_sync(thread.join)
        sock.close()


async def _post(url: str, http_client: httpx.AsyncClient | None, **body: Any) -> httpx.Response:
    if http_client is not None:
        return await http_client.post(url, **body)
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.post(url, **body)


async def _post_json(
    url: str, http_client: httpx.AsyncClient | None, document: object
) -> httpx.Response:
    # In ASCII, as Exotel's JSON is: a lone surrogate a call may hold has no UTF-8.
    content = json.dumps(document).encode()
    headers = {"content-type": "application/json"}
    return await _post(url, http_client, content=content, headers=headers)


def _status_callback(data: Mapping[str, Any], event_type: str | None) -> dict[str, Any]:
    """v1's status callback fields for a call served as v2's ``data``."""
    recordings = cast("list[object]", data.get("recordings") or [None])
    first_recording = _object(recordings[0] if isinstance(recordings, list) else None)
    fields: dict[str, Any] = {
        "CallSid": data["call_sid"],
        "Status": data.get("call_status"),
        "DateUpdated": _v1_time(data.get("updated_time")),
        "RecordingUrl": first_recording.get("url"),
    }
    if event_type is None:
        return fields
    agent, customer = (
        _object(data.get(key)) for key in ("assigned_agent_details", "customer_details")
    )
    return {
        **fields,
        "EventType": event_type,
        "DateCreated": _v1_time(data.get("created_time")),
        "StartTime": _v1_time(data.get("start_time")),
        "EndTime": _v1_time(data.get("end_time")),
        "ConversationDuration": data.get("total_talk_time"),
        "Direction": data.get("direction"),
        # Make Call connects From (the agent) first, then To (the customer).
        "From": agent.get("contact_uri"),
        "To": customer.get("contact_uri"),
        "PhoneNumberSid": data.get("virtual_number"),
        "CustomField": data.get("custom_field"),
        "Legs": [
            {"OnCallDuration": data.get("total_talk_time"), "Status": data.get("call_status")}
        ],
    }


def _object(value: object) -> Mapping[str, Any]:
    return cast("dict[str, Any]", value) if isinstance(value, dict) else {}


def _v1_time(value: object) -> object:
    # v1 says local time in India, without an offset. A value that is no ISO
    # timestamp (a malformed call added on purpose) is posted as it is.
    try:
        moment = dt.datetime.fromisoformat(value)  # type: ignore[arg-type]
        local = moment.astimezone(_IST)
    except (TypeError, ValueError, OverflowError):  # past year 9999 in India too
        return value
    if moment == _UNIX_EPOCH:
        return "0000-00-00 00:00:00"
    return f"{local.year:04d}-{local:%m-%d %H:%M:%S}"  # strftime's %Y drops zeros


def _form_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """``fields`` as a form, ``Legs`` as ``Legs[0][Status]`` and so on."""
    form = {name: _form_value(value) for name, value in fields.items() if name != "Legs"}
    for index, leg in enumerate(fields.get("Legs", ())):
        form.update({f"Legs[{index}][{name}]": _form_value(value) for name, value in leg.items()})
    return form


def _form_value(value: object) -> str:
    return "" if value is None else str(value)


def _header_value(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


def _success(
    data: dict[str, Any], version: ApiVersion = "v2", account_sid: str = "fake-account"
) -> dict[str, Any]:
    if version == "v3":
        response = {"code": 200, "status": "success", "call_details": _v3_call(data, account_sid)}
    else:
        v2_data = {key: value for key, value in data.items() if key != "legs_url"}
        response = {"code": 200, "error_data": None, "status": "success", "data": v2_data}
    return {
        "request_id": secrets.token_hex(16),
        "method": "GET",
        "http_code": 200,
        "metadata": None,
        "response": response,
    }


def _v3_call(data: dict[str, Any], account_sid: str) -> dict[str, Any]:
    """v2's ``data`` as v3 sends it: fields renamed, v2's own left out, timestamps
    with a space, the epoch for an end not yet known, and the legs' path."""
    call = {V3_KEYS.get(key, key): value for key, value in data.items() if key not in _NOT_IN_V3}
    for key in ("created_time", "end_time"):
        if isinstance(call.get(key), str):
            call[key] = _ISO_T.sub(" ", call[key])
    if call.get("end_time") is None and call.get("state") == "active":
        call["end_time"] = _V3_NOT_YET
    if call.get("legs") is None:
        call["legs"] = f"/v3/accounts/{account_sid}/calls/{call.get('sid')}/legs"
    return call


async def _send_envelope(
    send: Send,
    http_status: int,
    code: int,
    *,
    error_code: int | None,
    message: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> int:
    text = message or _MESSAGES.get(code, "Error")
    document = {
        "request_id": secrets.token_hex(16),
        "method": "GET",
        "http_code": http_status,
        "metadata": None,
        "response": {
            "code": code,
            "error_data": {"code": error_code, "message": text, "description": text},
            "status": "failure",
            "data": None,
        },
    }
    return await _send_json(send, http_status, document, headers)


async def _send_rest_exception(
    send: Send, seconds: int, headers: Iterable[tuple[bytes, bytes]]
) -> int:
    exception = {
        "Status": 429,
        "Message": f"Rate limit exceeded. Try again in {seconds} seconds.",
        "Code": "RATE_LIMIT_EXCEEDED",
    }
    return await _send_json(send, 429, {"RestException": exception}, headers)


async def _send_json(
    send: Send,
    status: int,
    document: object,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> int:
    body = json.dumps(document, separators=(",", ":")).encode()
    return await _send_body(send, status, body, b"application/json", headers)


async def _send_body(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> int:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return status


async def _send_fault(fault: Fault, receive: Receive, send: Send) -> int:
    retry_after = [(b"retry-after", fault.retry_after.encode())] if fault.retry_after else []
    match fault.kind:
        case _Kind.ENVELOPE:
            return await _send_envelope(
                send,
                fault.http_status,
                fault.code or fault.http_status,
                error_code=fault.error_code,
                headers=retry_after,
            )
        case _Kind.HTML:
            page = f"<html><body><h1>{fault.http_status} Bad Gateway</h1></body></html>"
            return await _send_body(
                send, fault.http_status, page.encode(), b"text/html", retry_after
            )
        case _Kind.MALFORMED:
            return await _send_body(send, 200, b"{'call_sid': nope", b"application/json")
        case _Kind.TRUNCATED:
            body = json.dumps(_success(_generated_call("truncated", 7))).encode()
            return await _send_body(send, 200, body[: len(body) // 2], b"application/json")
        case _Kind.OVERSIZED:
            return await _until_disconnect(
                receive, _send_oversized(send, fault.size, declare_length=bool(fault.code))
            )
        case _Kind.DISCONNECT:
            # Returning mid-body makes the server close the connection.
            return await _send_half_body(send)
        case _Kind.STALL:
            await _send_half_body(send)
            await _wait_for_disconnect(receive)
            return 200
        case _Kind.HANG:
            await _wait_for_disconnect(receive)
            return 0


async def _send_half_body(send: Send) -> int:
    body = json.dumps(_success(_generated_call("partial", 7))).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    return 200


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_disconnect(receive: Receive, sending: Awaitable[int]) -> int:
    # A client that gives up mid-body closes the connection: stop writing then.
    status = 0

    async def send_all() -> None:
        nonlocal status
        status = await sending
        group.cancel_scope.cancel()

    async def watch() -> None:
        await _wait_for_disconnect(receive)
        group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(send_all)
        group.start_soon(watch)
    return status or 200


async def _send_oversized(send: Send, size: int, *, declare_length: bool) -> int:
    headers = [(b"content-type", b"application/json")]
    if declare_length:
        headers.append((b"content-length", str(size).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    chunk = b" " * 65536
    sent = 0
    while sent < size:
        piece = chunk[: size - sent]
        sent += len(piece)
        await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
        await anyio.lowlevel.checkpoint()  # lets the server notice a closed connection
    return 200


_DIRECTIONS: Final = ("outbound", "outbound-api", "outbound-dial", "inbound")
_STATUSES: Final = ("completed", "completed", "completed", "busy", "no-answer", "failed")


def _generated_call(call_sid: str, digest: int) -> dict[str, Any]:
    """A realistic call, the same every time for the same SID."""
    created = _EPOCH + dt.timedelta(seconds=digest % 31_536_000)
    talk = digest % 600
    state = "active" if digest % 97 == 0 else "terminal"
    agent = f"{digest % 10**10:010d}"
    return {
        "call_sid": call_sid,
        "direction": _DIRECTIONS[digest % len(_DIRECTIONS)],
        "virtual_number": f"+9180{digest % 10**8:08d}",
        "call_state": state,
        "call_status": None if state == "active" else _STATUSES[digest % len(_STATUSES)],
        "assigned_agent_details": {
            "user_id": f"{digest:032x}"[:32],
            "user_name": f"Agent {agent[:4]}",
            "contact_uri": f"+9199{agent[:8]}",
            "group_id": None,
            "group_name": None,
            "status": "completed",
        },
        "customer_details": {
            "contact_name": f"Customer {agent[4:8]}",
            "contact_uri": f"+9198{agent[2:10]}",
            "status": "completed",
        },
        "created_time": created.isoformat(),
        "updated_time": (created + dt.timedelta(seconds=talk + 30)).isoformat(),
        "start_time": (created + dt.timedelta(seconds=5)).isoformat(),
        "end_time": (created + dt.timedelta(seconds=talk + 20)).isoformat(),
        "total_duration": talk + 15,
        "total_talk_time": talk,
        "custom_field": None,
        "app_id": None,
        "app_name": None,
        "digits": None,
        "recordings": [
            {"url": f"https://recordings.example.com/{call_sid}.mp3"},
        ],
    }
