"""The HTTP exchange behind one seam: ``await engine.get(url, call_sid)`` -> :class:`Reply`.

An engine sends one GET (no redirects), reads the body within the cap, gunzips
it and reads ``Retry-After`` and the rate-limit headers (``_pacing``); every
failure to get a response becomes a :class:`TransportError` (a
:class:`RequestTimeoutError` for timeouts) with the original as its cause. The
engines, chosen by the client's ``transport=`` and ``http_client=``:

- :class:`PoolEngine` (default): an httpcore pool of our own, fed httpcore
  requests directly: no httpx Request/Response objects, auth flow, cookies or
  hooks on the way (see :mod:`ccm_async._transport` for the pool itself).
- :class:`ClientEngine`: through ``httpx.AsyncClient.send``; a user's own
  ``http_client`` (its hooks, proxies and TLS settings apply), or ours when the
  environment names proxies (httpx's mounts apply them).
- :class:`~ccm_async._aiohttp.AiohttpEngine` (``transport="aiohttp"``): an
  ``aiohttp.ClientSession`` of our own, with no httpx objects on the way.

An engine the client owns holds its connections per event loop
(:class:`~ccm_async._loops.PerLoop`); :mod:`ccm_async._engines` picks the
engine for a client's arguments.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

import httpx

from ccm_async._body import decompress, over_declared_cap, read_capped, too_large
from ccm_async._config import MAX_BODY_BYTES
from ccm_async._errors import (
    CcmError,
    ClientClosedError,
    RequestTimeoutError,
    ResponseFormatError,
    TransportError,
    one_line,
)
from ccm_async._loops import PerLoop
from ccm_async._pacing import RateWindow, parse_rate_window
from ccm_async._retry_after import parse_retry_after

if TYPE_CHECKING:
    # Imported with the first pool: httpcore imports trio whenever it is installed.
    import httpcore

__all__ = [
    "ClientEngine",
    "Engine",
    "PoolEngine",
    "Reply",
    "default_ssl_context",
    "failures_as_transport_errors",
    "reply",
]

_STREAM_ERRORS: Final = (httpx.HTTPError, httpx.StreamError)


class Reply(NamedTuple):
    """What one GET brought back: the status, the decoded body, ``Retry-After``
    and the rate-limit window the headers describe."""

    status: int
    body: bytes
    retry_after: float | None
    rate_window: RateWindow | None


def reply(status: int, body: bytes, header: Callable[[str], str | None]) -> Reply:
    """The :class:`Reply` of a response, its headers read through ``header``
    (a lower-case name's value, or None)."""
    return Reply(
        status,
        body,
        parse_retry_after(header("retry-after")),
        parse_rate_window(
            header("x-ratelimit-remaining"),
            header("x-ratelimit-reset"),
            header("x-ratelimit-limit"),
        ),
    )


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

        request = httpcore.Request(b"GET", url, headers=self._headers, extensions=self._extensions)
        with failures_as_transport_errors(call_sid):
            # Building the pool is a failure of this lookup's too (a changed httpcore).
            pool = await self._pools.get()
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
        body = decompress(raw, headers.get("content-encoding"), call_sid)
        return reply(response.status, body, headers.get)

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
        with failures_as_transport_errors(call_sid):
            http_client = await self._client()
            request = http_client.build_request("GET", url, headers=self._headers)
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
    return reply(response.status_code, body, response.headers.get)


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
