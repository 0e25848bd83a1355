"""AsyncCcmClient: the client's lifecycle and the orchestration of one lookup.

``get_call(sid)`` -> validate the SID -> terminal-call cache -> single-flight
(:mod:`._flights`) -> retry loop (:mod:`._retry`) [ client-wide pause ->
concurrency slot -> rate-limit permit (:mod:`._throttle`) -> the engine's GET
(:mod:`._http`, body capped by :mod:`._body`) -> release slot -> decode status
and envelope (:mod:`._convert`) ] -> ``CallDetails`` or a typed
:class:`~ccm_async.CcmError`. No slot is held while waiting between attempts.
Bulk lookups (``get_calls``, ``stream_calls``) are :mod:`._bulk`'s workers
around :meth:`AsyncCcmClient.get_call`.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Self

import anyio
import anyio.abc
import httpx

from ccm_async._bulk import gather_results, stream_results
from ccm_async._config import (
    DEFAULT_TIMEOUT,
    Credentials,
    Region,
    call_sid_of,
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
    ClientClosedError,
    ConfigurationError,
    RateLimitError,
    TransportError,
    WaitTimeoutError,
    forget_frames,
    shown,
)
from ccm_async._flights import SingleFlight, TerminalCache
from ccm_async._http import client_engine, current_loop, own_engine
from ccm_async._models import CallDetails, CallResult, ClientStats
from ccm_async._retry import Lookup, RetryBudget, RetryPolicy, is_retryable
from ccm_async._throttle import AdaptiveRate, Permit, RateLimit, Slots, Throttle
from ccm_async._version import __version__

__all__ = ["AsyncCcmClient"]

logger: Final = logging.getLogger("ccm_async")
logger.addHandler(logging.NullHandler())  # a library leaves output to the application

_MAX_CONCURRENCY_LIMIT: Final = 4096
DEFAULT_RETRY: Final = RetryPolicy()
_SINGLE_ATTEMPT: Final = RetryPolicy(attempts=1)
_USER_AGENT: Final = f"ccm-async/{__version__}"
# Raised from a lookup, these end a batch: no other SID would fare better.
_STOPS_THE_BATCH: Final = (AuthenticationError, ConfigurationError, ClientClosedError)


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
        self._running: set[anyio.CancelScope] = set()
        _check_type("retry", retry, RetryPolicy)
        _check_type("rate_limit", rate_limit, RateLimit)
        _check_type("http_client", http_client, httpx.AsyncClient)
        self._policy = _SINGLE_ATTEMPT if retry is None else retry
        self._budget = RetryBudget(self._policy.budget_tokens, self._policy.budget_refill)
        self._rate_limit = rate_limit
        self._throttle = Throttle(rate_limit)
        self._loop: object = None
        self._counters = _Counters()
        self._timeout = httpx.Timeout(timeout) if http_client is None else http_client.timeout
        if http_client is None:
            self._engine = own_engine(
                transport,
                base_url=self._base_url,
                headers=self._headers,
                max_connections=max_concurrency,
                timeout=self._timeout,
            )
        else:
            self._engine = client_engine(http_client, headers=self._headers)
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
    def timeout(self) -> httpx.Timeout:
        """The per-request timeouts (a user's ``http_client``'s own, when given)."""
        return self._timeout

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
            raise ClientClosedError("the client is closed")
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
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close the client: lookups and batches still running raise ClientClosedError.

        Safe from any task, also while the ``async with`` block runs (whose end then
        finishes the job); the pool is closed unless the ``http_client`` was yours.
        """
        self._closed = True
        # The lookups themselves, not the task group: the group's scope also holds
        # the body of the ``async with`` block, which is its owner's to end.
        for scope in self._running:
            scope.cancel()
        await self._engine.aclose()

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
            raise ClientClosedError("the client is closed", call_sid=call_sid)
        cached = self._cache.get(call_sid)
        if cached is not None:
            return cached
        return await self._flights.call(call_sid, lambda: self._lookup(call_sid), self._group)

    async def get_calls(
        self, call_sids: Iterable[str], *, concurrency: int | None = None
    ) -> list[CallResult]:
        """Fetch many calls; one :class:`CallResult` per input position, in input order.

        Each distinct SID is fetched once. One SID's failure (not found, retries
        exhausted, an invalid SID, a non-string item) is that SID's ``error``; it
        never fails the batch. An :class:`AuthenticationError` or
        :class:`ConfigurationError` is not one SID's problem: it stops the batch
        at once (no further requests, in-flight ones cancelled) and is raised, as
        is :class:`ClientClosedError` when the client is closed under the batch.
        ``concurrency`` is the number of lookups in progress (default: the
        client's ``max_concurrency``).
        """
        return await gather_results(
            call_sids, result=self._result, concurrency=self._workers(concurrency)
        )

    def stream_calls(
        self,
        call_sids: Iterable[str] | AsyncIterable[str],
        *,
        concurrency: int | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[CallResult]]:
        """Fetch calls and yield their :class:`CallResult` as they complete.

        ``call_sids`` may be any iterable or async iterable (an event stream, a
        generator over a file): a fixed set of ``concurrency`` workers pulls from it
        lazily, so memory does not grow with the number of SIDs. One result per
        input item, duplicates and non-strings included. Leaving the block early
        (break, exception, cancellation) stops reading the input (closing an async
        generator), cancels lookups in flight, and returns only when nothing it
        started is still running. What stops :meth:`get_calls` stops the stream
        and is raised as itself; so is an exception of the source's own.

        Use it as::

            async with ccm.stream_calls(sids) as results:
                async for result in results:
                    ...
        """
        return stream_results(
            call_sids, result=self._result, concurrency=self._workers(concurrency)
        )

    def _workers(self, concurrency: int | None) -> int:
        workers = self._max_concurrency if concurrency is None else concurrency
        _check_count("concurrency", workers, _MAX_CONCURRENCY_LIMIT)
        return workers

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

    async def _result(self, item: object) -> CallResult:
        try:
            call = await self.get_call(item)  # type: ignore[arg-type]  # checked there
        except _STOPS_THE_BATCH:
            raise
        except CcmError as exc:
            forget_frames(exc)  # again: the frames of single-flight's task have ended now
            return CallResult(call_sid=_sid_of(item, exc), error=exc)
        return CallResult(call_sid=call_sid_of(item), call=call)

    async def _lookup(self, call_sid: str) -> CallDetails:
        self._follow_the_event_loop()
        lookup = Lookup(call_sid, self._policy, self._budget, self._counters.deny_retry)
        # Cancelled by aclose(), from any task: the lookup then ends as ClientClosedError.
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                call = await lookup.run(self._attempt)
            except CcmError as exc:
                if exc.call_sid is None:
                    exc.call_sid = call_sid  # every error is about the SID it failed for
                # A failed lookup's frames hold its response body: a kept error keeps
                # only itself.
                forget_frames(exc)
                raise
            finally:
                self._running.discard(scope)
            self._cache.put(call_sid, call)
            return call
        raise ClientClosedError("the client was closed during the lookup", call_sid=call_sid)

    def _follow_the_event_loop(self) -> None:
        # Waits, pauses and windows are times on the loop's own clock, and its
        # primitives belong to it: a new loop starts them afresh (the engine
        # opens fresh connections on its own).
        loop = current_loop()
        if loop is not self._loop:
            if self._loop is not None:
                self._slots = Slots(self._max_concurrency)
                self._throttle = Throttle(self._rate_limit)
            self._loop = loop

    async def _attempt(self, lookup: Lookup) -> CallDetails:
        if lookup.attempts:
            self._counters.retries += 1
        # The deadline runs from the first send, or from the start of a wait for the
        # client's pause if that comes first. Queueing for a first slot and a first
        # permit does not count: those are the client's own bounds, which a bulk
        # fetch at 200/min waits on by design. From then on every wait counts, and
        # the lookup queues for slots ahead of first attempts. The pause is waited
        # holding nothing, and looked at again just before the send: it may have
        # begun (another lookup's 429) while this one waited for a slot or a permit.
        while True:
            if await lookup.wait_out_pause(self._throttle.pause_left()):
                self._counters.rate_limit_waits += 1
            with anyio.CancelScope(deadline=lookup.deadline) as scope:
                async with (
                    self._slots.hold(retry=lookup.started),
                    self._throttle.permit() as permit,
                ):
                    lookup.start()
                    scope.deadline = lookup.deadline
                    if permit.waited:
                        self._counters.rate_limit_waits += 1
                    if not self._throttle.pause_left():
                        lookup.attempts += 1
                        return await self._exchange(lookup.call_sid, lookup.attempts, permit)
            if scope.cancelled_caught:
                raise lookup.deadline_error()

    async def _exchange(self, call_sid: str, attempt: int, permit: Permit) -> CallDetails:
        """One request and its decoding, fed back to the budget and the limiter."""
        started = anyio.current_time()
        status: int | str = "no response"
        try:
            self._counters.requests += 1
            try:
                reply = await self._engine.get(self._calls_url + call_sid, call_sid)
            finally:
                # An answer or a failure comes no earlier than the request reached
                # the server, if it did: the rate window counts it from now.
                permit.end()
            status = reply.status
            self._counters.responses[status] += 1
            call = decode_response(
                status, reply.body, call_sid=call_sid, retry_after=reply.retry_after
            )
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


def _check_type(name: str, value: object, expected: type) -> None:
    if value is not None and not isinstance(value, expected):
        raise ConfigurationError(
            f"{name} must be a {expected.__module__}.{expected.__qualname__} or None, "
            f"not {type(value).__name__}"
        )


def _check_count(name: str, value: object, high: int, *, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(f"{name} must be an integer from {low} to {high}")


def _pool_size(http_client: httpx.AsyncClient) -> int | None:
    """The connection limit of an httpx client's default transport, if it can be read."""
    pool = getattr(getattr(http_client, "_transport", None), "_pool", None)
    size = getattr(pool, "_max_connections", None)
    return size if isinstance(size, int) and size > 0 else None


def _sid_of(item: object, error: CcmError) -> str:
    # A non-string item is named by its error's short printable repr.
    return call_sid_of(item) if isinstance(item, str) else error.call_sid or shown(item)
