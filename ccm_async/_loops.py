"""Connections belong to the event loop that opened them: one holder per loop.

An engine the client owns is built on first use and built again, with fresh
connections, when the client is used from another event loop (two
``asyncio.run`` in a row); otherwise the first requests there would go out on
the old loop's dead connections. A user's ``http_client`` is theirs to keep on
one loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Generic, Protocol, TypeVar

import sniffio

from ccm_async._errors import ClientClosedError

__all__ = ["PerLoop", "current_loop"]


def current_loop() -> object:
    """The running event loop (asyncio's loop, or trio's run token)."""
    if sniffio.current_async_library() == "trio":
        import trio  # noqa: PLC0415 - only under trio, which is then imported

        return trio.lowlevel.current_trio_token()
    import asyncio  # noqa: PLC0415 - loaded by then: it runs this code

    return asyncio.get_running_loop()


class _Closable(Protocol):
    async def aclose(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)


class PerLoop(Generic[_C]):
    """One connection holder (a pool, a transport, a client) per event loop.

    Built on first use on a loop; built again, with fresh connections, when used
    from another loop. The one of a loop is closed by :meth:`aclose` or, if the
    client was never closed, when that loop ends: asyncio (``asyncio.run``) and
    trio finalize the async generators still open when a run ends, while the
    loop still runs, so the holder is closed on its own loop instead of being
    left to the garbage collector with its sockets open.
    """

    def __init__(self, build: Callable[[], _C]) -> None:
        self._build = build
        self._current: _C | None = None
        self._loop: object = None
        self._closer: AsyncGenerator[None] | None = None
        self._closed = False

    async def get(self) -> _C:
        """The holder of the running loop; after :meth:`aclose`, ClientClosedError."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        loop = current_loop()
        current = self._current
        if current is None or loop is not self._loop:
            current = self._current = self._build()
            self._loop = loop
            # Started here, so that this loop's asyncgen hooks know it from now on.
            self._closer = _closed_with_the_loop(current)
            await anext(self._closer)
        return current

    async def aclose(self) -> None:
        """Close the running loop's holder (another loop's was closed when it ended)."""
        self._closed = True
        closer, self._closer, self._current = self._closer, None, None
        if closer is not None and self._loop is current_loop():
            await closer.aclose()


async def _closed_with_the_loop(holder: _Closable) -> AsyncGenerator[None]:
    try:
        yield
    finally:
        await holder.aclose()
