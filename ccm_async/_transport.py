"""The httpcore connection pool of a client that owns one (used by ``_http.PoolEngine``).

httpcore's pool asks every connection, on every request it places, whether the
connection has expired; each answer looks the socket up through anyio's typed
attributes, which builds a dict of lookups per call. Measured here, that was
about a fifth of a lookup's CPU time at 10 connections, and it grows with the
pool. The streams below remember their socket, so the question costs a poll.
And the pool's pass that hands connections to requests is quadratic in the
connections (see :class:`Pool`); ours is linear. httpcore is httpx's own
transport layer, installed with it.

That pass is httpcore's private method, so it is guarded: ``pyproject.toml``
bounds httpcore to ``>=1.0.3,<1.1`` (the releases whose pass we replace), and
:func:`pool_class` falls back to httpcore's stock pool, with one warning
logged, when the method or the attributes it reads are missing.
"""

from __future__ import annotations

import collections
import functools
import logging
import select
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import anyio
import httpcore
import httpx

__all__ = ["Backend", "Pool", "fits", "pool_class", "pool_limits"]

_log = logging.getLogger("ccm_async")

# What Pool's pass reads and replaces in httpcore's pool, and in its queued requests.
_POOL_PARTS = ("_requests", "_connections", "_max_connections")
_REQUEST_PARTS = ("connection", "assign_to_connection", "request")


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
    not started on it yet is neither handed out again nor closed by a pass (the
    request checks it as it starts: :class:`_Checked`). A new connection left
    behind by a request cancelled before it started goes to the next request.

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
            if connection.is_closed():
                continue  # dropped, held or not, as httpcore's pass does
            if id(connection) in reserved:
                kept.append(connection)
            elif connection.has_expired():
                closing.append(connection)
            else:
                kept.append(connection)
                if connection.is_available() or _unused(connection):
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

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return _Checked(super().create_connection(origin))

    async def aclose(self) -> None:
        # httpcore closes the connections one by one, shielded from anyio's
        # cancellation only: asyncio's would stop it at the first, leaving the rest
        # open. Each one is closed whatever happens; the first failure goes on.
        closing, self._connections = self._connections, []
        failure: BaseException | None = None
        for connection in closing:
            try:
                with anyio.CancelScope(shield=True):
                    await connection.aclose()
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


def _unused(connection: httpcore.AsyncConnectionInterface) -> bool:
    # A connection that never carried a request, which no request holds: the one
    # it was made for was cancelled before it began on it. httpcore's pools keep
    # such a connection (connecting, or connected with nothing sent) against the
    # limit for good; at the limit, every later request times out.
    return isinstance(connection, _Checked) and connection.unused


class _Checked(httpcore.AsyncConnectionInterface):
    """A connection that checks, as its request starts on it, that it is still fit.

    Our pass never revisits a connection it has handed to a request that has
    not started yet (httpcore's pass would close it if it looked expired, even
    once that request had started: encode/httpcore#1110). So the request itself
    looks again when it starts: a connection that expired or that the server
    closed meanwhile is closed here, by the only request that holds it, and the
    pool places the request again instead of sending it on a dead socket.
    """

    def __init__(self, connection: httpcore.AsyncConnectionInterface) -> None:
        self._connection = connection
        self.unused = True
        # The pool asks these of the connections on its passes: bound straight to
        # the connection's own, they cost no extra call (0.16 against 0.20 us).
        self.can_handle_request = connection.can_handle_request  # type: ignore[method-assign]
        self.is_available = connection.is_available  # type: ignore[method-assign]
        self.has_expired = connection.has_expired  # type: ignore[method-assign]
        self.is_idle = connection.is_idle  # type: ignore[method-assign]
        self.is_closed = connection.is_closed  # type: ignore[method-assign]

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if self._connection.is_idle() and self._connection.has_expired():
            await self._connection.aclose()
            raise httpcore.ConnectionNotAvailable
        self.unused = False
        try:
            response = await self._connection.handle_async_request(request)
        except httpcore.ConnectionNotAvailable:
            raise  # it refused the request: not one to hand out again
        except BaseException:
            # A failed request leaves its connection idle or closed, unless it was
            # cancelled by asyncio, whose cancellation lands even in httpcore's
            # shielded checkpoints: then the connection may be left connecting,
            # connected with nothing sent, or active with no request on it, and no
            # pass would hand it out or close it again. It is closed here; one that
            # never connected has nothing to close, and serves the next request.
            await _close_if_stranded(self._connection)
            self.unused = _stranded(self._connection)
            raise
        response.stream = _ClosedInFull(response.stream, self._connection)
        return response

    async def aclose(self) -> None:
        await self._connection.aclose()

    def info(self) -> str:
        return self._connection.info()

    def __repr__(self) -> str:
        return repr(self._connection)


class _ClosedInFull:
    """A response body whose close, if asyncio's cancellation cuts it short, closes
    the connection: httpcore's close is shielded from anyio's cancellation only,
    and one cut short leaves the connection active with no request on it, held
    against the pool's limit for good."""

    def __init__(self, stream: Any, connection: httpcore.AsyncConnectionInterface) -> None:
        self._stream = stream
        self._connection = connection

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self._stream)

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        except BaseException:
            await _close_if_stranded(self._connection)
            raise


def _stranded(connection: httpcore.AsyncConnectionInterface) -> bool:
    # After a failure, neither idle nor closed: only asyncio's cancellation does that.
    return not (connection.is_idle() or connection.is_closed())


async def _close_if_stranded(connection: httpcore.AsyncConnectionInterface) -> None:
    if _stranded(connection):
        with anyio.CancelScope(shield=True):
            await connection.aclose()


def fits(stock: type[httpcore.AsyncConnectionPool]) -> bool:
    """Whether ``stock`` has the pass :class:`Pool` replaces and the parts it reads."""
    if not callable(getattr(stock, "_assign_requests_to_connections", None)):
        return False
    try:
        from httpcore._async.connection_pool import AsyncPoolRequest  # noqa: PLC0415

        queued = AsyncPoolRequest(httpcore.Request(b"GET", "http://127.0.0.1/"))
        # Built as PoolEngine builds its pool.
        pool = stock(
            ssl_context=None,
            max_connections=1,
            max_keepalive_connections=1,
            keepalive_expiry=5.0,
            network_backend=None,
        )
        return all(hasattr(pool, name) for name in _POOL_PARTS) and all(
            hasattr(queued, name) for name in _REQUEST_PARTS
        )
    except Exception:  # whatever a changed httpcore raises: it does not fit
        return False


@functools.cache
def pool_class() -> type[httpcore.AsyncConnectionPool]:
    """:class:`Pool` where it fits the installed httpcore, else httpcore's own pool."""
    if fits(httpcore.AsyncConnectionPool):
        return Pool
    _log.warning(
        "httpcore %s does not have the pool pass ccm_async replaces; using httpcore's stock pool",
        getattr(httpcore, "__version__", "?"),
    )
    return httpcore.AsyncConnectionPool


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
