"""Single-flight for concurrent lookups of one SID, and the terminal-call cache.

Concurrent lookups of one SID share one request, whether or not the client is
used as ``async with``. Inside that block the flight runs in the client's task
group: every caller, the first included, waits for it, and a cancelled caller
only stops waiting. The request is cancelled when its last caller has gone, and
that caller returns only after the request has unwound, so nothing outlives the
code that asked. Without the block there is no task of the client's own: the
first caller runs the request in its task, and if it is cancelled while others
wait, the flight is abandoned and a waiter takes over with a request of its own
(the work cannot move to another task); the others then join that one.

A flight runs until the last of its callers' deadlines (``_retry.Deadline``): a
caller with a short timeout stops waiting at its own and leaves the request to
the others, or sooner, failing with the error that stopped it, when the flight
begins a wait (a 429 pause, a backoff) that would outlast it.

Without the block, the first caller's own timeout or cancellation ends the
request it runs (the others then start it again): a client warns once, at the
first lookup that joins a flight run in another caller's task.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.abc

from ccm_async._errors import ClientClosedError
from ccm_async._models import CallDetails
from ccm_async._retry import Caller, Deadline

__all__ = ["SingleFlight", "TerminalCache"]

_T = TypeVar("_T")


class _Flight(Generic[_T]):
    def __init__(self, *, in_caller: bool, caller: Caller | None) -> None:
        self.in_caller = in_caller  # run in its first caller's task, not the client's group
        self.callers = Deadline(float("inf") if caller is None else caller.at)
        self.callers.join(caller)
        self.waiters = 0
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.result: _T | None = None
        self.error: Exception | None = None
        self.abandoned = False  # its caller was cancelled: a waiter takes over


class SingleFlight(Generic[_T]):
    """Concurrent calls for one key share one run of the work."""

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[_T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def call(
        self,
        key: str,
        work: Callable[[Deadline], Awaitable[_T]],
        group: anyio.abc.TaskGroup | None,
        *,
        caller: Caller | None,
        on_join: Callable[[bool], None],
    ) -> _T:
        """The result of ``work(callers)``, shared with concurrent calls for ``key``.

        The flight runs in ``group``, or without one in the caller's task; it may
        run until ``callers``, the latest deadline of the calls sharing it
        (``caller``'s own, or None without one). ``on_join`` is called when this
        call joins another's flight, with whether that runs in its caller's task.
        """
        while True:
            flight = self._flights.get(key)
            if flight is not None:
                on_join(flight.in_caller)
                flight.callers.join(caller)
            elif group is None:
                return await self._run_here(key, work, caller)
            else:
                flight = self._flights[key] = _Flight(in_caller=False, caller=caller)
                group.start_soon(self._fly, key, flight, work)
            await self._wait(key, flight)
            if not flight.abandoned:
                return self._outcome(key, flight)
            # The caller that ran it was cancelled: this one runs (or joins) the next.

    async def _wait(self, key: str, flight: _Flight[_T]) -> None:
        flight.waiters += 1
        try:
            await flight.done.wait()
        except BaseException:
            await self._leave(key, flight)
            raise
        flight.waiters -= 1

    @staticmethod
    def _outcome(key: str, flight: _Flight[_T]) -> _T:
        if flight.error is not None:
            raise flight.error
        if flight.result is None:
            raise ClientClosedError("the client was closed during the lookup", call_sid=key)
        return flight.result

    async def _leave(self, key: str, flight: _Flight[_T]) -> None:
        flight.waiters -= 1
        if flight.waiters or flight.in_caller or flight.done.is_set():
            return
        # The last caller is gone: cancel the request and see it unwind.
        self._forget(key, flight)
        flight.scope.cancel()
        with anyio.CancelScope(shield=True):
            await flight.done.wait()

    async def _run_here(
        self, key: str, work: Callable[[Deadline], Awaitable[_T]], caller: Caller | None
    ) -> _T:
        flight = self._flights[key] = _Flight[_T](in_caller=True, caller=caller)
        try:
            flight.result = await work(flight.callers)
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:
            flight.abandoned = True  # cancelled, or interrupted: not an outcome to share
            raise
        finally:
            self._land(key, flight)
        return flight.result

    async def _fly(
        self, key: str, flight: _Flight[_T], work: Callable[[Deadline], Awaitable[_T]]
    ) -> None:
        try:
            with flight.scope:
                flight.result = await work(flight.callers)
        except Exception as exc:
            flight.error = exc
        finally:
            self._land(key, flight)

    def _land(self, key: str, flight: _Flight[_T]) -> None:
        """The flight is over: its waiters are woken."""
        self._forget(key, flight)
        flight.done.set()

    def _forget(self, key: str, flight: _Flight[_T]) -> None:
        """New callers of ``key`` no longer join ``flight``."""
        if self._flights.get(key) is flight:
            del self._flights[key]


class TerminalCache:
    """Up to ``size`` terminal calls (they no longer change), least recently used out first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._calls: collections.OrderedDict[str, CallDetails] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, call_sid: str) -> CallDetails | None:
        """The cached call, marked as just used; None when absent."""
        call = self._calls.get(call_sid)
        if call is not None:
            self._calls.move_to_end(call_sid)
        return call

    def put(self, call_sid: str, call: CallDetails) -> None:
        """Keep ``call`` if it is terminal; active calls are never cached."""
        if not self._size or not call.is_terminal:
            return
        self._calls[call_sid] = call
        self._calls.move_to_end(call_sid)
        if len(self._calls) > self._size:
            self._calls.popitem(last=False)
