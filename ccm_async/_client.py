"""AsyncCcmClient: the client's lifecycle and the way of one lookup.

```get_call(sid)`` -> validate the SID -> retry loop [ client-wide pause ->
concurrency slot -> rate-limit permit -> httpx GET (no redirects, body capped)
-> release slot -> decode status and envelope ] -> ``CallDetails`` or a typed
:class:`~ccm_async.CcmError`. No slot is held while waiting between attempts.
"""

from __future__ import annotations

import collections
import logging
import zlib
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
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
    ApiError,
    ConfigurationError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    TransportError,
    parse_retry_after,
)
from ccm_async._models import CallDetails, ClientStats
from ccm_async._retry import Lookup, RetryBudget, RetryPolicy, is_retryable
from ccm_async._throttle import AdaptiveRate, RateLimit, Slots, Throttle
from ccm_async._version import __version__

__all__ = ["AsyncCcmClient"]

logger: Final = logging.getLogger("ccm_async")
logger.addHandler(logging.NullHandler())  # a library leaves output to the application

_MAX_CONCURRENCY_LIMIT: Final = 4096
DEFAULT_RETRY: Final = RetryPolicy()
_SINGLE_ATTEMPT: Final = RetryPolicy(attempts=1)
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
        timeout: httpx's per-request timeouts, a float or an ``httpx.Timeout``
            (the lookup's overall deadline is ``RetryPolicy.timeout``).
        retry: a :class:`RetryPolicy`, or None for a single attempt.
        rate_limit: a :class:`RateLimit` the client keeps to, or None to adapt to 429s.
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
        retry: RetryPolicy | None = DEFAULT_RETRY,
        rate_limit: RateLimit | None = None,
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
        self._slots = Slots(max_concurrency)
        self._policy = retry or _SINGLE_ATTEMPT
        self._budget = RetryBudget(self._policy.budget_tokens, self._policy.budget_refill)
        self._throttle = Throttle(rate_limit)
        self._counters = _Counters()
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

    @property
    def stats(self) -> ClientStats:
        """A snapshot of what this client has done so far."""
        counters = self._counters
        limiter = self._throttle.limiter
        return ClientStats(
            requests=counters.requests,
            retries=counters.retries,
            responses=MappingProxyType(dict(counters.responses)),
            transport_errors=counters.transport_errors,
            budget_denials=counters.budget_denials,
            rate_limit_waits=counters.rate_limit_waits,
            adaptive_rate=limiter.rate if isinstance(limiter, AdaptiveRate) else None,
        )

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
        """The details of one call, retried as the client's :class:`RetryPolicy` says.

        Raises:
            InvalidCallSidError: before any request, if ``call_sid`` cannot be one.
            CallNotFoundError, AuthenticationError, RateLimitError, ServerError,
            ApiError, TransportError, ResponseFormatError: see the exception tree;
            ``attempts`` on the error says how many requests were sent.
        """
        call_sid = validate_call_sid(call_sid)
        if self._closed:
            raise RuntimeError("the client is closed")
        lookup = Lookup(call_sid, self._policy, self._budget, self._counters.deny_retry)
        return await lookup.run(self._attempt)

    async def _attempt(self, lookup: Lookup) -> CallDetails:
        if lookup.attempts:
            self._counters.retries += 1
        # The deadline covers every wait once the first attempt was sent; a slot
        # is held only from the rate-limit permit to the end of the response.
        with anyio.CancelScope(deadline=lookup.deadline) as scope:
            if await self._throttle.wait_pause():
                self._counters.rate_limit_waits += 1
            async with self._slots.hold(retry=lookup.attempts > 0):
                if await self._throttle.limiter.acquire():
                    self._counters.rate_limit_waits += 1
                lookup.start()
                scope.deadline = lookup.deadline
                lookup.attempts += 1
                return await self._exchange(lookup.call_sid, lookup.attempts)
        raise lookup.deadline_error()

    async def _exchange(self, call_sid: str, attempt: int) -> CallDetails:
        """One request and its decoding, fed back to the budget and the limiter."""
        started = anyio.current_time()
        status: int | str = "no response"
        try:
            status, body, retry_after = await self._send(call_sid)
            call = decode_response(status, body, call_sid=call_sid, retry_after=retry_after)
        except TransportError:
            self._counters.transport_errors += 1
            self._budget.record_failure()
            raise
        except ApiError as exc:
            if isinstance(exc, RateLimitError) and exc.retry_after is not None:
                self._throttle.pause(exc.retry_after)
                self._throttle.limiter.record(limited=False)
            else:
                self._throttle.limiter.record(limited=isinstance(exc, RateLimitError))
            if is_retryable(exc):
                self._budget.record_failure()
            else:
                self._budget.record_success()
            raise
        else:
            self._throttle.limiter.record(limited=False)
            self._budget.record_success()
            return call
        finally:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "GET call %s attempt %d: %s in %.1f ms",
                    call_sid,
                    attempt,
                    status,
                    (anyio.current_time() - started) * 1000,
                    extra={"call_sid": call_sid, "attempt": attempt, "status": status},
                )

    async def _send(self, call_sid: str) -> tuple[int, bytes, float | None]:
        """The HTTP exchange: status, body (capped) and Retry-After; no redirects."""
        request = self._http.build_request("GET", self._calls_url + call_sid, headers=self._headers)
        self._counters.requests += 1
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
        self._counters.responses[response.status_code] += 1
        return (
            response.status_code,
            body,
            parse_retry_after(response.headers.get("retry-after")),
        )


class _Counters:
    """The mutable tallies behind :attr:`AsyncCcmClient.stats`."""

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self.responses: collections.Counter[int] = collections.Counter()
        self.transport_errors = 0
        self.budget_denials = 0
        self.rate_limit_waits = 0

    def deny_retry(self) -> None:
        self.budget_denials += 1


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
