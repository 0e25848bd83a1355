"""Single-flight for concurrent lookups of one SID, and the terminal-call cache.

A flight runs in the client's task group (the client must be entered with
``async with`` for flights to be shared). Every caller, the first included,
waits for the flight; a cancelled caller only stops waiting. The flight's
request is cancelled when its last caller has gone, and that caller returns
only after the request has unwound, so nothing outlives the code that asked.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.abc

from ccm_async._errors import ClientClosedError
from ccm_async._models import CallDetails

__all__ = ["SingleFlight", "TerminalCache"]

_T = TypeVar("_T")


class _Flight(Generic[_T]):
    def __init__(self) -> None:
        self.waiters = 0
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.result: _T | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[_T]):
    """Concurrent calls for one key share one run of the work."""

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[_T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def call(
        self,
        key: str,
        work: Callable[[], Awaitable[_T]],
        group: anyio.abc.TaskGroup | None,
        *,
        on_join: Callable[[], None],
    ) -> _T:
        """The result of ``work()``, shared with concurrent calls for ``key``.

        Without a task group to run flights in, ``work`` runs in the caller's task.
        ``on_join`` is called when this call joins another's flight.
        """
        if group is None:
            return await work()
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            group.start_soon(self._fly, key, flight, work)
        else:
            on_join()
        flight.waiters += 1
        try:
            await flight.done.wait()
        except BaseException:
            await self._leave(key, flight)
            raise
        flight.waiters -= 1
        if flight.error is not None:
            raise flight.error
        if flight.result is None:
            raise ClientClosedError("the client was closed during the lookup", call_sid=key)
        return flight.result

    async def _leave(self, key: str, flight: _Flight[_T]) -> None:
        flight.waiters -= 1
        if flight.waiters or flight.done.is_set():
            return
        # The last caller is gone: cancel the request and see it unwind.
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.scope.cancel()
        with anyio.CancelScope(shield=True):
            await flight.done.wait()

    async def _fly(self, key: str, flight: _Flight[_T], work: Callable[[], Awaitable[_T]]) -> None:
        try:
            with flight.scope:
                flight.result = await work()
        except Exception as exc:
            flight.error = exc
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.done.set()


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
