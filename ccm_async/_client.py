"""AsyncCcmClient: the client's lifecycle, one lookup's way, and bulk lookups.

``get_call(sid)`` -> validate the SID -> terminal-call cache -> single-flight
-> retry loop [ client-wide pause ->
concurrency slot -> rate-limit permit -> httpx GET (no redirects, body capped)
-> release slot -> decode status and envelope ] -> ``CallDetails`` or a typed
:class:`~ccm_async.CcmError`. No slot is held while waiting between attempts.
"""

from __future__ import annotations

import collections
import logging
import urllib.request
import zlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import asynccontextmanager
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Self

import anyio
import anyio.abc
import httpx

from ccm_async._config import (
    DEFAULT_TIMEOUT,
    MAX_BODY_BYTES,
    Credentials,
    Region,
    check_timeout,
    resolve_base_url,
    settings_from_env,
    validate_call_sid,
)
from ccm_async._convert import decode_response
from ccm_async._errors import (
    ApiError,
    AuthenticationError,
    CallNotFoundError,
    CcmError,
    ConfigurationError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    TransportError,
    WaitTimeoutError,
    parse_retry_after,
)
from ccm_async._flights import SingleFlight, TerminalCache
from ccm_async._models import CallDetails, CallResult, ClientStats
from ccm_async._retry import Lookup, RetryBudget, RetryPolicy, is_retryable
from ccm_async._throttle import AdaptiveRate, RateLimit, Slots, Throttle
from ccm_async._transport import new_transport, pool_limits
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

    Use it as ``async with AsyncCcmClient(...) as ccm:``. Inside that block,
    concurrent lookups of one SID share one request (single-flight); a client
    used without it (closed with :meth:`aclose`) works the same otherwise. It
    owns one pooled ``httpx.AsyncClient``, or uses ``http_client`` if given,
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
        cache_size: how many terminal calls to keep (they no longer change); 0 is off.
        http_client: an ``httpx.AsyncClient`` of your own (proxies, event hooks, TLS).
        transport: the HTTP stack of a client without ``http_client``: httpx's own,
            or ``"aiohttp"`` (the ``ccm-async[aiohttp]`` extra, asyncio only, no proxy
            settings from the environment), which measured 1.7x faster per lookup.
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
        cache_size: int = 0,
        http_client: httpx.AsyncClient | None = None,
        transport: Literal["httpx", "aiohttp"] = "httpx",
    ) -> None:
        credentials = Credentials(api_key=api_key, api_token=api_token, account_sid=account_sid)
        timeout = check_timeout(timeout)
        _check_count("max_concurrency", max_concurrency, _MAX_CONCURRENCY_LIMIT)
        _check_count("cache_size", cache_size, 10_000_000, low=0)
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
        # A pool of the user's that is smaller than the bound lowers the bound, so
        # a queued lookup waits for a slot, never for a connection (PoolTimeout).
        pool = _pool_size(http_client) if http_client is not None else None
        self._max_concurrency = min(max_concurrency, pool or max_concurrency)
        self._slots = Slots(self._max_concurrency)
        self._cache = TerminalCache(cache_size)
        self._flights: SingleFlight[CallDetails] = SingleFlight()
        self._group: anyio.abc.TaskGroup | None = None
        self._policy = retry or _SINGLE_ATTEMPT
        self._budget = RetryBudget(self._policy.budget_tokens, self._policy.budget_refill)
        self._throttle = Throttle(rate_limit)
        self._counters = _Counters()
        self._owns_http = http_client is None
        if http_client is None:
            http_client, self._transport = _own_http(transport, max_concurrency, timeout)
        else:
            self._transport = None
        self._http = http_client
        self._extensions = {"timeout": http_client.timeout.as_dict()}
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

    @property
    def max_concurrency(self) -> int:
        """The bound on requests in flight (lowered to the pool of a smaller ``http_client``)."""
        return self._max_concurrency

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("the client is closed")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel lookups still running; close the pool unless the ``http_client`` was yours."""
        self._closed = True
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        if self._owns_http:
            await self._http.aclose()

    async def get_call(self, call_sid: str) -> CallDetails:
        """The details of one call, retried as the client's :class:`RetryPolicy` says.

        A terminal call in the cache is returned without a request; concurrent
        lookups of one SID share one request.

        Raises:
            InvalidCallSidError: before any request, if ``call_sid`` cannot be one.
            CallNotFoundError, AuthenticationError, RateLimitError, ServerError,
            ApiError, TransportError, ResponseFormatError: see the exception tree;
            ``attempts`` on the error says how many requests were sent.
        """
        call_sid = validate_call_sid(call_sid)
        if self._closed:
            raise RuntimeError("the client is closed")
        cached = self._cache.get(call_sid)
        if cached is not None:
            return cached
        return await self._flights.call(call_sid, lambda: self._lookup(call_sid), self._group)

    async def get_calls(
        self, call_sids: Iterable[str], *, concurrency: int | None = None
    ) -> list[CallResult]:
        """Fetch many calls; one :class:`CallResult` per input position, in input order.

        Each distinct SID is fetched once. One SID's failure (not found, retries
        exhausted, an invalid SID) is that SID's ``error``; it never fails the batch.
        An :class:`AuthenticationError` is not one SID's problem: it stops the batch
        at once (no further requests, in-flight ones cancelled) and is raised.
        ``concurrency`` is the number of lookups in progress (default: the client's
        ``max_concurrency``).
        """
        sids = list(call_sids)
        by_sid: dict[str, CallResult] = {}
        async with self.stream_calls(dict.fromkeys(sids), concurrency=concurrency) as results:
            async for result in results:
                by_sid[result.call_sid] = result
        return [by_sid[sid] for sid in sids]

    @asynccontextmanager
    async def stream_calls(
        self,
        call_sids: Iterable[str] | AsyncIterable[str],
        *,
        concurrency: int | None = None,
    ) -> AsyncGenerator[AsyncIterator[CallResult]]:
        """Fetch calls and yield their :class:`CallResult` as they complete.

        ``call_sids`` may be any iterable or async iterable (an event stream, a
        generator over a file): a fixed set of ``concurrency`` workers pulls from it
        lazily, so memory does not grow with the number of SIDs. One result per
        input item, duplicates included. Leaving the block early (break, exception,
        cancellation) stops reading the input (closing an async generator),
        cancels lookups in flight, and returns only when nothing it started is
        still running. An :class:`AuthenticationError` stops the stream and is
        raised, as in :meth:`get_calls`.

        Use it as::

            async with ccm.stream_calls(sids) as results:
                async for result in results:
                    ...
        """
        workers = self._max_concurrency if concurrency is None else concurrency
        _check_count("concurrency", workers, _MAX_CONCURRENCY_LIMIT)
        source = _aiter(call_sids)
        send, receive = anyio.create_memory_object_stream[CallResult](workers)
        pulling = anyio.Lock()
        stopped_by: list[AuthenticationError] = []

        async def work(out: anyio.abc.ObjectSendStream[CallResult]) -> None:
            async with out:
                while True:
                    async with pulling:
                        call_sid = await anext(source, None)
                    if call_sid is None:
                        return
                    try:
                        result = await self._result(call_sid)
                    except AuthenticationError as exc:
                        stopped_by.append(exc)
                        group.cancel_scope.cancel()
                        return
                    await out.send(result)

        body_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as group, receive:
                for _ in range(workers):
                    group.start_soon(work, send.clone())
                send.close()
                try:
                    yield receive
                except BaseException as exc:
                    body_error = exc
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await _close_source(source)
        # Raised here rather than inside the task group, which would wrap them. An
        # AuthenticationError comes first: the body was cancelled because of it.
        if stopped_by:
            raise stopped_by[0]
        if body_error is not None:
            raise body_error

    async def wait_for_terminal(
        self,
        call_sid: str,
        *,
        timeout: float = 300.0,  # noqa: ASYNC109 - the issue's API; it raises WaitTimeoutError
        interval: float = 1.0,
        max_interval: float = 15.0,
    ) -> CallDetails:
        """Poll a call until it is terminal (the usual step after Make Call).

        Polls every ``interval`` seconds, growing by half each time up to
        ``max_interval``. A call not found yet counts as not ended (a call just
        made may take a moment to appear). Other errors are raised.

        Raises:
            WaitTimeoutError: (also a ``TimeoutError``) after ``timeout`` seconds,
                naming the SID and the last state seen.
        """
        call_sid = validate_call_sid(call_sid)
        last_state: str | None = None
        with anyio.move_on_after(timeout):
            while True:
                try:
                    call = await self.get_call(call_sid)
                except CallNotFoundError:
                    pass
                else:
                    if call.is_terminal:
                        return call
                    last_state = None if call.call_state is None else str(call.call_state)
                await anyio.sleep(interval)
                interval = min(max_interval, interval * 1.5)
        raise WaitTimeoutError(
            f"call {call_sid} was not terminal after {timeout:g}s "
            f"(last state: {last_state or 'not found'})",
            call_sid=call_sid,
            last_state=last_state,
        )

    async def _result(self, call_sid: str) -> CallResult:
        try:
            call = await self.get_call(call_sid)
        except AuthenticationError:
            raise
        except CcmError as exc:
            return CallResult(call_sid=call_sid, error=exc)
        return CallResult(call_sid=call_sid, call=call)

    async def _lookup(self, call_sid: str) -> CallDetails:
        lookup = Lookup(call_sid, self._policy, self._budget, self._counters.deny_retry)
        call = await lookup.run(self._attempt)
        self._cache.put(call_sid, call)
        return call

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
        url = self._calls_url + call_sid
        self._counters.requests += 1
        try:
            if self._transport is not None:
                request = httpx.Request(
                    "GET", url, headers=self._headers, extensions=self._extensions
                )
                response = await self._transport.handle_async_request(request)
            else:
                request = self._http.build_request("GET", url, headers=self._headers)
                response = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                body = await _read_capped(response, call_sid)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(_describe(exc), call_sid=call_sid) from exc
        except CcmError:
            raise
        except Exception as exc:
            # httpx.RequestError, or whatever a third-party transport raises: one
            # lookup's failure, not the batch's (the cause keeps the details).
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


def _check_count(name: str, value: object, high: int, *, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(f"{name} must be an integer from {low} to {high}")


def _own_http(
    transport: Literal["httpx", "aiohttp"], max_concurrency: int, timeout: float | httpx.Timeout
) -> tuple[httpx.AsyncClient, httpx.AsyncBaseTransport | None]:
    """The client's own pool, and the transport requests go straight into, if any.

    Straight into the transport means no auth flow, cookies, redirects or hooks to
    run. Proxies from the environment need httpx's mounts, so then requests go
    through ``AsyncClient.send`` (as they do through a user's own http_client).
    """
    if transport not in ("httpx", "aiohttp"):
        raise ConfigurationError("transport must be 'httpx' or 'aiohttp'")
    if transport == "httpx" and urllib.request.getproxies():
        return httpx.AsyncClient(limits=pool_limits(max_concurrency), timeout=timeout), None
    direct = new_transport(max_concurrency, stack=transport)
    return httpx.AsyncClient(transport=direct, timeout=timeout), direct


def _pool_size(http_client: httpx.AsyncClient) -> int | None:
    """The connection limit of an httpx client's default transport, if it can be read."""
    pool = getattr(getattr(http_client, "_transport", None), "_pool", None)
    size = getattr(pool, "_max_connections", None)
    return size if isinstance(size, int) and size > 0 else None


def _aiter(items: Iterable[str] | AsyncIterable[str]) -> AsyncIterator[str]:
    if isinstance(items, AsyncIterable):
        return aiter(items)
    return _from_sync(iter(items))


async def _from_sync(items: Iterator[str]) -> AsyncGenerator[str]:
    for item in items:
        yield item


async def _close_source(source: AsyncIterator[str]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


def _describe(exc: Exception) -> str:
    # httpx's messages name the failure, never the request's headers.
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


async def _read_capped(response: httpx.Response, call_sid: str) -> bytes:
    if response.is_stream_consumed:
        return _already_read(response, call_sid)
    declared = response.headers.get("content-length", "")
    # isascii: str.isdigit() also accepts digits int() refuses, such as '²'.
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
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
        raise _too_large(call_sid)
    return body


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
