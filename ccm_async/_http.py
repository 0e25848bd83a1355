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
- :class:`TransportEngine`: straight into an httpx transport (aiohttp's, from
  httpx-aiohttp).

A connection belongs to the event loop that opened it. An engine the client
owns is built on first use and built again, with fresh connections, when the
client is used from another event loop (two ``asyncio.run`` in a row);
otherwise the first requests there would go out on the old loop's dead
connections. A user's ``http_client`` is theirs to keep on one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Literal, NamedTuple, Protocol

import httpcore
import httpx
import sniffio

from ccm_async._body import decompress, over_declared_cap, read_capped, too_large
from ccm_async._config import MAX_BODY_BYTES
from ccm_async._errors import (
    CcmError,
    ConfigurationError,
    RequestTimeoutError,
    ResponseFormatError,
    TransportError,
    parse_retry_after,
)
from ccm_async._transport import Backend, Pool, pool_limits

__all__ = ["ClientEngine", "Engine", "Reply", "client_engine", "own_engine"]

_STREAM_ERRORS: Final = (httpx.HTTPError, httpx.StreamError, httpcore.ReadError)


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
    return asyncio.get_running_loop()


def _timeouts(timeout: httpx.Timeout) -> dict[str, float | None]:
    return timeout.as_dict()


class PoolEngine:
    """Requests straight into an httpcore pool of our own, one pool per event loop."""

    def __init__(
        self, *, host: str, headers: dict[str, str], max_connections: int, timeout: httpx.Timeout
    ) -> None:
        self._headers = [(b"host", host.encode("ascii"))] + [
            (name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()
        ]
        self._extensions = {"timeout": _timeouts(timeout)}
        self._max_connections = max_connections
        self._pool: Pool | None = None
        self._loop: object = None

    def _current_pool(self) -> Pool:
        loop = current_loop()
        if self._pool is None or loop is not self._loop:
            self._pool, self._loop = self._new_pool(), loop
        return self._pool

    def _new_pool(self) -> Pool:
        limits = pool_limits(self._max_connections)
        return Pool(
            ssl_context=default_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=Backend(),
        )

    async def get(self, url: str, call_sid: str) -> Reply:
        pool = self._current_pool()
        request = httpcore.Request(b"GET", url, headers=self._headers, extensions=self._extensions)
        with _failures_as_transport_errors(call_sid):
            response = await pool.handle_async_request(request)
            try:
                headers = _header_map(response.headers)
                if over_declared_cap(headers.get("content-length")):
                    raise too_large(call_sid)
                raw = await read_capped(
                    response.aiter_stream(),
                    close=response.aclose,
                    stream_errors=_STREAM_ERRORS,
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
        pool, self._pool = self._pool, None
        if pool is not None and self._loop is current_loop():
            await pool.aclose()


class ClientEngine:
    """Requests through an ``httpx.AsyncClient``: a user's own, or a proxied one of ours."""

    def __init__(
        self, http_client: httpx.AsyncClient, *, headers: dict[str, str], owned: bool
    ) -> None:
        self.http_client = http_client
        self._headers = headers
        self._owned = owned

    async def get(self, url: str, call_sid: str) -> Reply:
        request = self.http_client.build_request("GET", url, headers=self._headers)
        with _failures_as_transport_errors(call_sid):
            response = await self.http_client.send(request, stream=True, follow_redirects=False)
            return await read_httpx_response(response, call_sid)

    async def aclose(self) -> None:
        if self._owned:
            await self.http_client.aclose()


class TransportEngine:
    """Requests straight into an httpx transport of ours, built per event loop."""

    def __init__(
        self,
        new_transport: Callable[[], httpx.AsyncBaseTransport],
        *,
        headers: dict[str, str],
        timeout: httpx.Timeout,
        asyncio_only: str,
    ) -> None:
        self._new_transport = new_transport
        self._headers = headers
        self._extensions = {"timeout": _timeouts(timeout)}
        self._asyncio_only = asyncio_only
        self._transport: httpx.AsyncBaseTransport | None = None
        self._loop: object = None

    def _current_transport(self) -> httpx.AsyncBaseTransport:
        if sniffio.current_async_library() != "asyncio":
            raise ConfigurationError(self._asyncio_only)
        loop = current_loop()
        if self._transport is None or loop is not self._loop:
            self._transport, self._loop = self._new_transport(), loop
        return self._transport

    async def get(self, url: str, call_sid: str) -> Reply:
        transport = self._current_transport()
        request = httpx.Request("GET", url, headers=self._headers, extensions=self._extensions)
        with _failures_as_transport_errors(call_sid):
            response = await transport.handle_async_request(request)
            return await read_httpx_response(response, call_sid)

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None and self._loop is current_loop():
            await transport.aclose()


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
def _failures_as_transport_errors(call_sid: str) -> Iterator[None]:
    """Anything that stops a response from arriving is this lookup's TransportError."""
    try:
        yield
    except CcmError:
        raise
    except (httpx.TimeoutException, httpcore.TimeoutException) as exc:
        raise RequestTimeoutError(_describe(exc), call_sid=call_sid) from exc
    except Exception as exc:
        # httpx/httpcore errors, or whatever a third-party transport raises: one
        # lookup's failure, not the batch's (the cause keeps the details).
        raise TransportError(_describe(exc), call_sid=call_sid) from exc


def _describe(exc: BaseException) -> str:
    # httpx's and httpcore's messages name the failure, never the request's headers.
    detail = str(exc)
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
        return TransportEngine(
            _aiohttp_transport(max_connections),
            headers=headers,
            timeout=timeout,
            asyncio_only="transport='aiohttp' needs asyncio (aiohttp runs on asyncio only); "
            "use the default transport under trio",
        )
    if transport != "httpx":
        raise ConfigurationError("transport must be 'httpx' or 'aiohttp'")
    if urllib.request.getproxies():
        # Proxies from the environment need httpx's mounts.
        http_client = httpx.AsyncClient(
            limits=pool_limits(max_connections), timeout=timeout, verify=default_ssl_context()
        )
        return ClientEngine(http_client, headers=headers, owned=True)
    host = httpx.URL(base_url).netloc.decode("ascii")
    return PoolEngine(host=host, headers=headers, max_connections=max_connections, timeout=timeout)


def client_engine(http_client: httpx.AsyncClient, *, headers: dict[str, str]) -> Engine:
    """The engine of a client given a user's ``http_client`` (left open for its owner)."""
    return ClientEngine(http_client, headers=headers, owned=False)


def _aiohttp_transport(max_connections: int) -> Callable[[], httpx.AsyncBaseTransport]:
    try:
        from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415 - an optional extra
    except ImportError as exc:
        raise ConfigurationError(
            "transport='aiohttp' needs the extra: pip install 'ccm-async[aiohttp]'"
        ) from exc
    limits = pool_limits(max_connections)
    return lambda: AiohttpTransport(limits=limits, verify=default_ssl_context())
