"""The httpcore connection pool of a client that owns one (used by ``_http.PoolEngine``).

httpcore's pool asks every connection, on every request it places, whether the
connection has expired; each answer looks the socket up through anyio's typed
attributes, which builds a dict of lookups per call. Measured here, that was
about a fifth of a lookup's CPU time at 10 connections, and it grows with the
pool. The streams below remember their socket, so the question costs a poll.
And the pool's pass that hands connections to requests is quadratic in the
connections (see :class:`Pool`); ours is linear. httpcore is httpx's own
transport layer, installed with it.
"""

from __future__ import annotations

import collections
import select
import socket
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

__all__ = ["Backend", "Pool", "pool_limits"]


def pool_limits(max_connections: int) -> httpx.Limits:
    """A pool of ``max_connections``, all of them kept alive between requests."""
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class Pool(httpcore.AsyncConnectionPool):
    """httpcore's pool, with its request-to-connection assignment made linear.

    httpcore 1.0 reassigns on every request placed and every response closed,
    and each pass costs O(connections² + connections x queued requests); it
    also hands one idle connection to every queued request, and all but one
    fail, re-queue and trigger another pass (encode/httpcore#1035, open). At
    256 connections that was ~12 ms of CPU per request, measured, for httpx
    as for us. This pass is O(connections + requests): each idle connection
    goes to at most one request, and a connection handed to a request that has
    not started on it yet is neither handed out again nor closed.

    It serves one client's requests: one origin, every connection kept alive
    (``max_keepalive_connections == max_connections``, see :func:`pool_limits`).
    httpcore has had this pass since 1.0.3 (the ``lowest`` test session runs on
    that release); the 1.0.0-1.0.2 pool never calls it and works as it did.
    """

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        reserved = {id(request.connection) for request in self._requests if request.connection}
        closing: list[httpcore.AsyncConnectionInterface] = []
        kept: list[httpcore.AsyncConnectionInterface] = []
        free: collections.deque[httpcore.AsyncConnectionInterface] = collections.deque()
        for connection in self._connections:
            if id(connection) in reserved:
                kept.append(connection)
            elif connection.is_closed():
                continue
            elif connection.has_expired():
                closing.append(connection)
            else:
                kept.append(connection)
                if connection.is_available():
                    free.append(connection)
        self._connections = kept
        for request in self._requests:
            if request.connection is not None:
                continue
            if free:
                connection = free.popleft()
            elif len(kept) < self._max_connections:
                connection = self.create_connection(request.request.url.origin)
                kept.append(connection)
            else:
                break  # the rest wait for a connection to come back
            request.assign_to_connection(connection)
        return closing


class Backend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._inner = cast("httpcore.AsyncNetworkBackend", httpcore.AnyIOBackend())

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Stream(httpcore.AsyncNetworkStream):
    """A network stream that remembers its socket."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: socket.socket | None = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's interface
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._socket
        if info == "is_readable":
            return self._socket is None or _readable(self._socket)
        return self._stream.get_extra_info(info)


def _readable(sock: socket.socket) -> bool:
    # An idle keep-alive connection that is readable was closed by the server.
    if sock.fileno() == -1:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
