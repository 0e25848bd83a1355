"""The HTTP exchange behind one seam: ``await engine.get(url, call_sid)`` -> :class:`Reply`.

An engine sends one GET (no redirects), reads the body within the cap, gunzips
it and reads ``Retry-After``; every failure to get a response becomes a
:class:`TransportError` (a :class:`RequestTimeoutError` for timeouts) with the
original as its cause. The engines, chosen by the client's ``transport=`` and
``http_client=``:

- :class:`PoolEngine` (default): an httpcore pool of our own, fed httpcore
  requests directly: no httpx Request/Response objects, auth flow, cookies or
  hooks on the way (see :mod:`ccm_async._transport` for the pool itself).
- :class:`ClientEngine`: through ``httpx.AsyncClient.send``; a user's own
  ``http_client`` (its hooks, proxies and TLS settings apply), or ours when the
  environment names proxies (httpx's mounts apply them).
- :class:`~ccm_async._aiohttp.AiohttpEngine` (``transport="aiohttp"``): an
  ``aiohttp.ClientSession`` of our own, with no httpx objects on the way.

A connection belongs to the event loop that opened it. An engine the client
owns is built on first use and built again, with fresh connections, when the
client is used from another event loop (two ``asyncio.run`` in a row);
otherwise the first requests there would go out on the old loop's dead
connections. A user's ``http_client`` is theirs to keep on one loop.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import urllib.request
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Final, Generic, Literal, NamedTuple, Protocol, TypeVar

import httpx
import sniffio

from ccm_async._body import decompress, over_declared_cap, read_capped, too_large
from ccm_async._config import MAX_BODY_BYTES
from ccm_async._errors import (
    CcmError,
    ClientClosedError,
    ConfigurationError,
    RequestTimeoutError,
    ResponseFormatError,
    TransportError,
    one_line,
    parse_retry_after,
)

if TYPE_CHECKING:
    # Imported with the first pool: httpcore imports trio whenever it is installed.
    import httpcore

__all__ = [
    "ClientEngine",
    "Engine",
    "PerLoop",
    "Reply",
    "client_engine",
    "default_ssl_context",
    "failures_as_transport_errors",
    "own_engine",
]

_STREAM_ERRORS: Final = (httpx.HTTPError, httpx.StreamError)


class Reply(NamedTuple):
    """What one GET brought back: the status, the decoded body and ``Retry-After``."""

    status: int
    body: bytes
    retry_after: float | None


class Engine(Protocol):
    """One GET at a time, many at once; closed once."""

    async def get(self, url: str, call_sid: str) -> Reply:
        """Send a GET to ``url`` (about ``call_sid``) and read its reply."""
        ...

    async def aclose(self) -> None:
        """Close the connections this engine owns."""
        ...


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """One verifying context for every client of the process, built on first use.

    Loading the CA bundle costs tens of milliseconds: a multi-tenant backend
    building a client per account pays it once. ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` choose the CAs, as in httpx, when it is built.
    """
    return httpx.create_ssl_context()


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


class PoolEngine:
    """Requests straight into an httpcore pool of our own, one pool per event loop."""

    def __init__(
        self, *, host: str, headers: dict[str, str], max_connections: int, timeout: httpx.Timeout
    ) -> None:
        self._headers = [(b"host", host.encode("ascii"))] + [
            (name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()
        ]
        self._extensions = {"timeout": timeout.as_dict()}
        self._max_connections = max_connections
        self._pools = PerLoop(self._new_pool)

    def _new_pool(self) -> httpcore.AsyncConnectionPool:
        from ccm_async._transport import Backend, pool_class, pool_limits  # noqa: PLC0415

        limits = pool_limits(self._max_connections)
        return pool_class()(
            ssl_context=default_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=Backend(),
        )

    async def get(self, url: str, call_sid: str) -> Reply:
        import httpcore  # noqa: PLC0415 - loaded with the pool

        pool = await self._pools.get()
        request = httpcore.Request(b"GET", url, headers=self._headers, extensions=self._extensions)
        with failures_as_transport_errors(call_sid):
            response = await pool.handle_async_request(request)
            try:
                headers = _header_map(response.headers)
                if over_declared_cap(headers.get("content-length")):
                    raise too_large(call_sid)
                raw = await read_capped(
                    response.aiter_stream(),
                    close=response.aclose,
                    stream_errors=(httpcore.ReadError,),
                    call_sid=call_sid,
                )
            finally:
                await response.aclose()
        return Reply(
            response.status,
            decompress(raw, headers.get("content-encoding"), call_sid),
            parse_retry_after(headers.get("retry-after")),
        )

    async def aclose(self) -> None:
        await self._pools.aclose()


class ClientEngine:
    """Requests through an ``httpx.AsyncClient``: a user's own (left open for its owner,
    on the loop they use it on), or proxied ones of ours, one per event loop."""

    def __init__(
        self,
        http_client: httpx.AsyncClient | PerLoop[httpx.AsyncClient],
        *,
        headers: dict[str, str],
    ) -> None:
        self._clients = http_client
        self._headers = headers
        self._closed = False

    async def _client(self) -> httpx.AsyncClient:
        clients = self._clients
        if not isinstance(clients, httpx.AsyncClient):
            return await clients.get()
        if self._closed:
            raise ClientClosedError("the client is closed")
        return clients

    async def get(self, url: str, call_sid: str) -> Reply:
        http_client = await self._client()
        request = http_client.build_request("GET", url, headers=self._headers)
        with failures_as_transport_errors(call_sid):
            response = await http_client.send(request, stream=True, follow_redirects=False)
            return await read_httpx_response(response, call_sid)

    async def aclose(self) -> None:
        self._closed = True
        if isinstance(self._clients, PerLoop):
            await self._clients.aclose()


async def read_httpx_response(response: httpx.Response, call_sid: str) -> Reply:
    try:
        if response.is_stream_consumed:
            body = _already_read(response, call_sid)
        else:
            if over_declared_cap(response.headers.get("content-length")):
                raise too_large(call_sid)
            raw = await read_capped(
                response.aiter_raw(),
                close=response.aclose,
                stream_errors=_STREAM_ERRORS,
                call_sid=call_sid,
            )
            body = decompress(raw, response.headers.get("content-encoding"), call_sid)
    finally:
        await response.aclose()
    return Reply(response.status_code, body, parse_retry_after(response.headers.get("retry-after")))


def _already_read(response: httpx.Response, call_sid: str) -> bytes:
    # A user's event hook (or httpx.MockTransport) read the body first; httpx decoded it.
    try:
        body = response.content
    except httpx.ResponseNotRead:
        raise ResponseFormatError(
            "the response body was streamed by something else (an event hook?) before "
            "ccm_async could read it",
            call_sid=call_sid,
        ) from None
    if len(body) > MAX_BODY_BYTES:
        raise too_large(call_sid)
    return body


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    # The few headers read here; names compared without case, values as Latin-1.
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in headers}


@contextlib.contextmanager
def failures_as_transport_errors(call_sid: str) -> Generator[None]:
    """Anything that stops a response from arriving is this lookup's TransportError,
    whichever engine sent it (a timeout is a RequestTimeoutError)."""
    import httpcore  # noqa: PLC0415 - on first use, not with ccm_async

    try:
        yield
    except CcmError:
        raise
    except (httpx.TimeoutException, httpcore.TimeoutException, TimeoutError) as exc:
        # TimeoutError: asyncio's, and aiohttp's ServerTimeoutError and kin.
        raise RequestTimeoutError(_describe(exc), call_sid=call_sid) from _safe_cause(exc)
    except Exception as exc:
        # httpx/httpcore errors, or whatever a third-party transport raises: one
        # lookup's failure, not the batch's (the cause keeps the details).
        raise TransportError(_describe(exc), call_sid=call_sid) from _safe_cause(exc)


def _safe_cause(exc: Exception) -> Exception | None:
    # aiohttp's response errors carry the request, headers and all, in their args
    # and repr: the Authorization header would show wherever the cause is logged.
    return None if hasattr(exc, "request_info") else exc


def _describe(exc: BaseException) -> str:
    # The stacks' messages name the failure (and aiohttp's the URL, which holds no
    # credential), never the request's headers; aiohttp's may quote what the
    # server sent, hence one bounded, printable line.
    detail = one_line(str(exc))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def own_engine(
    transport: Literal["httpx", "aiohttp"],
    *,
    base_url: str,
    headers: dict[str, str],
    max_connections: int,
    timeout: httpx.Timeout,
) -> Engine:
    """The engine of a client without ``http_client``."""
    if transport == "aiohttp":
        engine = _aiohttp_engine(headers=headers, max_connections=max_connections, timeout=timeout)
        if _running_library() not in (None, "asyncio"):
            raise ConfigurationError(_AIOHTTP_NEEDS_ASYNCIO)
        return engine
    if transport != "httpx":
        raise ConfigurationError("transport must be 'httpx' or 'aiohttp'")
    if urllib.request.getproxies():
        # Proxies from the environment need httpx's mounts.
        from ccm_async._transport import pool_limits  # noqa: PLC0415

        clients = PerLoop(
            lambda: httpx.AsyncClient(
                limits=pool_limits(max_connections), timeout=timeout, verify=default_ssl_context()
            )
        )
        return ClientEngine(clients, headers=headers)
    host = httpx.URL(base_url).netloc.decode("ascii")
    return PoolEngine(host=host, headers=headers, max_connections=max_connections, timeout=timeout)


_AIOHTTP_NEEDS_ASYNCIO: Final = (
    "transport='aiohttp' needs asyncio (aiohttp runs on asyncio only); "
    "use the default transport='httpx' under trio"
)


def _running_library() -> str | None:
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


def client_engine(http_client: httpx.AsyncClient, *, headers: dict[str, str]) -> Engine:
    """The engine of a client given a user's ``http_client`` (left open for its owner)."""
    return ClientEngine(http_client, headers=headers)


def _aiohttp_engine(
    *, headers: dict[str, str], max_connections: int, timeout: httpx.Timeout
) -> Engine:
    # The extra, asked for first: an engine module imported before would not notice it gone.
    try:
        import aiohttp  # noqa: F401, PLC0415  # pyright: ignore[reportUnusedImport]
    except ImportError as exc:
        raise ConfigurationError(
            "transport='aiohttp' needs the extra: pip install 'ccm-async[aiohttp]'"
        ) from exc
    from ccm_async._aiohttp import AiohttpEngine  # noqa: PLC0415 - imports aiohttp

    return AiohttpEngine(
        headers=headers,
        max_connections=max_connections,
        timeout=timeout,
        asyncio_only=_AIOHTTP_NEEDS_ASYNCIO,
    )
