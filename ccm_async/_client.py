"""AsyncCcmClient: the client's lifecycle and the way of one lookup.

``get_call(sid)`` -> validate the SID -> concurrency slot -> httpx GET (no
redirects, body capped) -> decode status and envelope -> ``CallDetails`` or a
typed :class:`~ccm_async.CcmError`.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self

import anyio
import httpx

from ccm_async._config import (
    DEFAULT_TIMEOUT,
    MAX_BODY_BYTES,
    Credentials,
    Region,
    resolve_base_url,
    settings_from_env,
    validate_call_sid,
)
from ccm_async._convert import decode_response
from ccm_async._errors import (
    ConfigurationError,
    RequestTimeoutError,
    ResponseFormatError,
    TransportError,
    parse_retry_after,
)
from ccm_async._models import CallDetails
from ccm_async._version import __version__

__all__ = ["AsyncCcmClient"]

logger: Final = logging.getLogger("ccm_async")

_MAX_CONCURRENCY_LIMIT: Final = 4096
_USER_AGENT: Final = f"ccm-async/{__version__}"


class AsyncCcmClient:
    """An async client for Exotel's CCM Get Call Details API.

    Use it as ``async with AsyncCcmClient(...) as ccm:`` (or call :meth:`aclose`).
    It owns one pooled ``httpx.AsyncClient``, or uses ``http_client`` if given,
    which it then leaves open for its owner to close.

    Args:
        api_key: the account's API key.
        api_token: the API token; it never appears in a repr, log line or message.
        account_sid: the account SID.
        region: ``"sg"`` (Singapore, the default) or ``"in"`` (Mumbai).
        base_url: overrides the region's host; https unless the host is loopback.
        max_concurrency: requests in flight at once, across all lookups (1-4096).
        timeout: httpx's per-request timeouts, a float or an ``httpx.Timeout``.
        http_client: an ``httpx.AsyncClient`` of your own (proxies, event hooks, TLS).
    """

    def __init__(
        self,
        *,
        api_key: str,
        api_token: str,
        account_sid: str,
        region: Region | str = Region.SINGAPORE,
        base_url: str | None = None,
        max_concurrency: int = 32,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        credentials = Credentials(api_key=api_key, api_token=api_token, account_sid=account_sid)
        if not isinstance(max_concurrency, int) or not (
            1 <= max_concurrency <= _MAX_CONCURRENCY_LIMIT
        ):
            raise ConfigurationError(
                f"max_concurrency must be an integer from 1 to {_MAX_CONCURRENCY_LIMIT}"
            )
        self._base_url = resolve_base_url(region, base_url)
        self._account_sid = credentials.account_sid
        self._calls_url = f"{self._base_url}/v2/accounts/{credentials.account_sid}/calls/"
        self._headers = {
            "authorization": credentials.authorization(),
            "accept": "application/json",
            "content-type": "application/json",
            "accept-encoding": "gzip",
            "user-agent": _USER_AGENT,
        }
        self._max_concurrency = max_concurrency
        self._slots = anyio.Semaphore(max_concurrency)
        self._owns_http = http_client is None
        self._http = http_client or _new_http_client(max_concurrency, timeout)
        self._closed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """A client configured from the environment.

        Reads ``EXOTEL_API_KEY``, ``EXOTEL_API_TOKEN``, ``EXOTEL_ACCOUNT_SID`` and
        ``EXOTEL_REGION`` (``sg`` or ``in``) or ``EXOTEL_CCM_BASE_URL``; ``options``
        are passed to the constructor and win over the environment.
        """
        return cls(**{**settings_from_env(environ), **options})

    @property
    def base_url(self) -> str:
        """The API host this client talks to."""
        return self._base_url

    @property
    def account_sid(self) -> str:
        """The account whose calls are looked up."""
        return self._account_sid

    def __repr__(self) -> str:
        return f"<AsyncCcmClient account_sid={self._account_sid!r} base_url={self._base_url!r}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (unless the ``http_client`` was yours)."""
        self._closed = True
        if self._owns_http:
            await self._http.aclose()

    async def get_call(self, call_sid: str) -> CallDetails:
        """The details of one call.

        Raises:
            InvalidCallSidError: before any request, if ``call_sid`` cannot be one.
            CallNotFoundError, AuthenticationError, RateLimitError, ServerError,
            ApiError, TransportError, ResponseFormatError: see the exception tree.
        """
        call_sid = validate_call_sid(call_sid)
        if self._closed:
            raise RuntimeError("the client is closed")
        async with self._slots:
            return await self._request(call_sid)

    async def _request(self, call_sid: str) -> CallDetails:
        request = self._http.build_request("GET", self._calls_url + call_sid, headers=self._headers)
        started = time.monotonic()
        try:
            response = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                body = await _read_capped(response, call_sid)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(_describe(exc), call_sid=call_sid) from exc
        except httpx.RequestError as exc:
            raise TransportError(_describe(exc), call_sid=call_sid) from exc
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "GET call %s: HTTP %d in %.1f ms",
                call_sid,
                response.status_code,
                (time.monotonic() - started) * 1000,
            )
        return decode_response(
            response.status_code,
            body,
            call_sid=call_sid,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


def _describe(exc: httpx.RequestError) -> str:
    # httpx's messages name the failure, never the request's headers.
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _new_http_client(max_concurrency: int, timeout: float | httpx.Timeout) -> httpx.AsyncClient:
    # The pool matches the concurrency bound, so a queued lookup waits for a
    # slot, never for a connection (httpx's PoolTimeout).
    limits = httpx.Limits(
        max_connections=max_concurrency, max_keepalive_connections=max_concurrency
    )
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)


async def _read_capped(response: httpx.Response, call_sid: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large(call_sid)
    body = bytearray()
    try:
        # Raw bytes, decoded below: a decoding error raised inside httpx's
        # generators would strand them unfinished (a ResourceWarning on trio).
        async for chunk in response.aiter_raw():
            if response.is_closed:
                continue
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                # Closing the stream ends the iteration without reading the rest;
                # breaking out instead would strand httpx's inner generators.
                await response.aclose()
    except (httpx.HTTPError, httpx.StreamError):
        if len(body) <= MAX_BODY_BYTES:
            raise  # a real failure, not the stream we closed
    if len(body) > MAX_BODY_BYTES:
        raise _too_large(call_sid)
    return _decompress(bytes(body), response.headers.get("content-encoding", ""), call_sid)


def _decompress(body: bytes, encoding: str, call_sid: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise ResponseFormatError(
            f"unexpected content-encoding {encoding!r:.40}", call_sid=call_sid
        )
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        # Bounded output: a small compressed bomb cannot expand past the cap.
        data = decoder.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise ResponseFormatError(f"undecodable gzip body: {exc}", call_sid=call_sid) from exc
    if len(data) > MAX_BODY_BYTES:
        raise _too_large(call_sid)
    return data


def _too_large(call_sid: str) -> ResponseFormatError:
    return ResponseFormatError(
        f"response body exceeds {MAX_BODY_BYTES} bytes; refused", call_sid=call_sid
    )
