"""Bulk lookups: a fixed set of workers pulling SIDs from any iterable, one result per item.

:func:`stream_results` is ``AsyncCcmClient.stream_calls``: ``concurrency``
workers take items from the source lazily (memory does not grow with the
number of SIDs), look each one up with ``get_call``, and send its
:class:`CallResult`, which carries the item, down a bounded stream. Items are
SIDs, or anything a ``sid`` function takes the SID from (a queue's message);
what that function raises is the caller's own bug and stops the stream. One
SID's failure (a :class:`CcmError`, an invalid SID or a non-string item
included) is that SID's result. What the lookup or the source raises
otherwise stops the whole stream and is raised as itself, never inside an
``ExceptionGroup``: the source's own exception, an
:class:`AuthenticationError` or :class:`ConfigurationError` (no other SID
would fare better), or the client being closed under the batch
(:class:`ClientClosedError`).
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from ccm_async._config import call_sid_of
from ccm_async._errors import (
    AuthenticationError,
    CcmError,
    ClientClosedError,
    ConfigurationError,
    forget_frames,
    shown,
)
from ccm_async._models import CallDetails, CallResult

__all__ = ["gather_results", "stream_results"]

_END: Final = object()  # the source is exhausted (None is an item like any other)
# Raised from a lookup, these end a batch: no other SID would fare better.
_STOPS_THE_BATCH: Final = (AuthenticationError, ConfigurationError, ClientClosedError)

_GetCall = Callable[[str], Awaitable[CallDetails]]
SidOf = Callable[[Any], object]
"""A batch's ``sid`` function: an item's call SID."""


@asynccontextmanager
async def stream_results(
    items: Iterable[object] | AsyncIterable[object],
    *,
    get_call: _GetCall,
    concurrency: int,
    sid: SidOf | None = None,
) -> AsyncGenerator[AsyncIterator[CallResult]]:
    """The result of every item, as they complete."""
    source = _aiter(items)
    send, receive = anyio.create_memory_object_stream[CallResult](concurrency)
    pulling = anyio.Lock()
    stopped_by: list[BaseException] = []

    async def work(out: anyio.abc.ObjectSendStream[CallResult]) -> None:
        async with out:
            while True:
                try:
                    async with pulling:
                        item = await anext(source, _END)
                    if item is _END:
                        return
                    outcome = await _result(get_call, item if sid is None else sid(item), item)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:
                    # The source failed (KeyboardInterrupt and SystemExit included), or
                    # the batch must stop: raised below, unwrapped, in the caller's task.
                    stopped_by.append(exc)
                    group.cancel_scope.cancel()
                    return
                await out.send(outcome)

    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as group, receive:
            for _ in range(concurrency):
                group.start_soon(work, send.clone())
            send.close()
            try:
                yield receive
            except BaseException as exc:
                body_error = exc
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _close_source(source)
    # Raised here rather than inside the task group, which would wrap them. The
    # stopping error comes first: the body was cancelled because of it.
    if stopped_by:
        raise stopped_by[0]
    if body_error is not None:
        raise body_error


async def gather_results(
    items: Iterable[object],
    *,
    get_call: _GetCall,
    concurrency: int,
    sid: SidOf | None = None,
) -> list[CallResult]:
    """One result per input position, in input order; each distinct SID looked up once."""
    items = list(items)
    sids = items if sid is None else [sid(item) for item in items]
    # Keyed by the plain string: a str subclass's own hash or __str__ (an Enum's)
    # must not split one SID in two. A non-string is never a SID (and may not be
    # hashable): its result is made on its own.
    keys = [call_sid_of(each) if isinstance(each, str) else None for each in sids]
    distinct = dict.fromkeys(key for key in keys if key is not None)
    by_sid: dict[str, CallResult] = {}
    async with stream_results(distinct, get_call=get_call, concurrency=concurrency) as results:
        async for outcome in results:
            by_sid[outcome.call_sid] = outcome
    return [
        _for_item(by_sid[key], item) if key is not None else await _result(get_call, each, item)
        for key, each, item in zip(keys, sids, items, strict=True)
    ]


def _for_item(shared: CallResult, item: object) -> CallResult:
    # Duplicates share one lookup; each position keeps its own item.
    return shared if shared.item is item else attrs.evolve(shared, item=item)


async def _result(get_call: _GetCall, call_sid: object, item: object) -> CallResult:
    try:
        call = await get_call(call_sid)  # type: ignore[arg-type]  # checked there
    except _STOPS_THE_BATCH:
        raise
    except CcmError as exc:
        forget_frames(exc)  # again: the frames of single-flight's task have ended now
        return CallResult(call_sid=_sid_of(call_sid, exc), error=exc, item=item)
    return CallResult(call_sid=call_sid_of(call_sid), call=call, item=item)


def _sid_of(call_sid: object, error: CcmError) -> str:
    # A non-string is named by its error's short printable repr.
    return call_sid_of(call_sid) if isinstance(call_sid, str) else error.call_sid or shown(call_sid)


def _aiter(items: Iterable[object] | AsyncIterable[object]) -> AsyncIterator[object]:
    if isinstance(items, AsyncIterable):
        return aiter(items)
    return _from_sync(iter(items))


async def _from_sync(items: Iterator[object]) -> AsyncGenerator[object]:
    for item in items:
        yield item


async def _close_source(source: AsyncIterator[object]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()
