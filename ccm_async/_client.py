"""AsyncCcmClient: the client's lifecycle and the orchestration of one lookup.

One SID, one file per step: ``get_call(sid)`` validates the SID
(:mod:`._config`), answers from the terminal-call cache or joins the SID's
single flight (:mod:`._flights`), and runs the lookup's retry loop
(:mod:`._retry`), each attempt of which (:mod:`._attempt`) waits out the
client-wide pause, takes a concurrency slot and a rate-limit permit
(:mod:`._throttle`), sends the engine's GET (:mod:`._http`, the body capped by
:mod:`._body`) and decodes status and envelope (:mod:`._convert`) into a
``CallDetails`` (:mod:`._models`) or a typed :class:`~ccm_async.CcmError`
(:mod:`._errors`). No slot is held while waiting between attempts.

Built from its arguments by :mod:`._setup`; counted by :mod:`._stats`; each
lookup and each of its sends is traced (:mod:`._telemetry`, OpenTelemetry's
spans and metrics in :mod:`._otel` when the extra is installed). Bulk
lookups (``get_calls``, ``stream_calls``) are :mod:`._bulk`'s workers around
:meth:`AsyncCcmClient.get_call`; ``wait_for_terminal`` is :mod:`._polling`'s.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar, overload

import anyio
import anyio.abc
import httpx

from ccm_async._attempt import Attempts
from ccm_async._bulk import gather_results, stream_results
from ccm_async._config import DEFAULT_TIMEOUT, Region, settings_from_env, validate_call_sid
from ccm_async._convert import ApiVersion
from ccm_async._errors import CcmError, ClientClosedError, forget_frames
from ccm_async._flights import SingleFlight, TerminalCache
from ccm_async._models import CallDetails, CallResult, ClientStats
from ccm_async._polling import poll_until_terminal
from ccm_async._retry import Caller, Deadline, RetryPolicy, timed_out
from ccm_async._setup import (
    DEFAULT_RETRY,
    MAX_CONCURRENCY_LIMIT,
    check_count,
    check_lookup_timeout,
    client_setup,
)
from ccm_async._telemetry import LookupTrace
from ccm_async._throttle import RateLimit

__all__ = ["AsyncCcmClient"]

_Item = TypeVar("_Item")

logger: Final = logging.getLogger("ccm_async")
logger.addHandler(logging.NullHandler())  # a library leaves output to the application


class AsyncCcmClient:
    """An async client for Exotel's CCM Get Call Details API.

    Use it as ``async with AsyncCcmClient(...) as ccm:``, or make it once (a
    web app's module, say) and close it with :meth:`aclose`. Either way,
    concurrent lookups of one SID share one request (single-flight), and
    cancelling one of their callers never fails the others: inside the block
    the request runs in the client's own task, without it a waiter takes over
    from a cancelled first caller with a request of its own. It owns one pooled
    ``httpx.AsyncClient``, or uses ``http_client`` if given, which it then leaves
    open for its owner to close.

    Args:
        api_key: the account's API key.
        api_token: the API token; it never appears in a repr, log line or message.
        account_sid: the account SID.
        region: ``"sg"`` (Singapore, the default) or ``"in"`` (Mumbai).
        base_url: overrides the region's host; https unless the host is loopback.
        api_version: ``"v2"`` (the default) or ``"v3"``, Exotel's Voice v3 call
            details (beta); both give the same :class:`CallDetails`.
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
        telemetry: with the ``ccm-async[otel]`` extra installed, traces and metrics
            go to OpenTelemetry's global providers; False turns that off.
    """

    def __init__(
        self,
        *,
        api_key: str,
        api_token: str,
        account_sid: str,
        region: Region | str = Region.SINGAPORE,
        base_url: str | None = None,
        api_version: ApiVersion = "v2",
        max_concurrency: int = 32,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        rate_limit: RateLimit | None = None,
        cache_size: int = 0,
        http_client: httpx.AsyncClient | None = None,
        transport: Literal["httpx", "aiohttp"] = "httpx",
        telemetry: bool = True,
    ) -> None:
        setup = client_setup(
            api_key=api_key,
            api_token=api_token,
            account_sid=account_sid,
            region=region,
            base_url=base_url,
            api_version=api_version,
            max_concurrency=max_concurrency,
            timeout=timeout,
            retry=retry,
            rate_limit=rate_limit,
            cache_size=cache_size,
            http_client=http_client,
            transport=transport,
            telemetry=telemetry,
        )
        self._setup = setup
        self._attempts = Attempts(setup)
        self._cache = TerminalCache(setup.cache_size)
        self._flights: SingleFlight[CallDetails] = SingleFlight()
        self._group: anyio.abc.TaskGroup | None = None
        self._running: set[anyio.CancelScope] = set()
        self._closed = False
        self._warned_of_sharing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """A client configured from the environment.

        Reads ``EXOTEL_API_KEY``, ``EXOTEL_API_TOKEN``, ``EXOTEL_ACCOUNT_SID``,
        ``EXOTEL_REGION`` (``sg`` or ``in``) or ``EXOTEL_CCM_BASE_URL``, and
        ``EXOTEL_API_VERSION`` (``v2`` or ``v3``); ``options`` are passed to the
        constructor and win over the environment.
        """
        return cls(**{**settings_from_env(environ), **options})

    @property
    def base_url(self) -> str:
        """The API host this client talks to."""
        return self._setup.base_url

    @property
    def api_version(self) -> ApiVersion:
        """The API version this client asks (``"v2"`` or ``"v3"``)."""
        return self._setup.api_version

    @property
    def account_sid(self) -> str:
        """The account whose calls are looked up."""
        return self._setup.account_sid

    @property
    def timeout(self) -> httpx.Timeout:
        """The per-request timeouts (a user's ``http_client``'s own, when given)."""
        return self._setup.timeout

    @property
    def stats(self) -> ClientStats:
        """A snapshot of what this client has done so far."""
        return self._attempts.stats()

    def __repr__(self) -> str:
        setup = self._setup
        return f"<AsyncCcmClient account_sid={setup.account_sid!r} base_url={setup.base_url!r}>"

    @property
    def max_concurrency(self) -> int:
        """The bound on requests in flight (lowered to the pool of a smaller ``http_client``)."""
        return self._setup.max_concurrency

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
        await self._setup.engine.aclose()
        if self._setup.shared is not None:
            await self._setup.shared.aclose()

    async def get_call(
        self,
        call_sid: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the lookup plans its waits by
    ) -> CallDetails:
        """The details of one call, retried as the client's :class:`RetryPolicy` says.

        A terminal call in the cache is returned without a request; concurrent
        lookups of one SID share one request.

        ``timeout`` bounds this lookup from now, everything included: queueing for
        a slot and a rate-limit permit, the client's pause after a 429, attempts
        and backoff. A wait that would outlast it is not begun: the lookup fails
        at once with the error that stopped it (a :class:`RateLimitError` whose
        ``retry_after`` is the pause still to run, or the last attempt's error),
        and never later than its deadline (then a :class:`RequestTimeoutError`).
        A request other callers share goes on for them.

        Raises:
            InvalidCallSidError: before any request, if ``call_sid`` cannot be one.
            CallNotFoundError, AuthenticationError, RateLimitError, ServerError,
            ApiError, TransportError, ResponseFormatError: see the exception tree;
            ``attempts`` on the error says how many requests were sent.
        """
        check_lookup_timeout(timeout)
        return await self._get_call(call_sid, timeout=timeout)

    async def _get_call(
        self,
        call_sid: str,
        origin: object = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> CallDetails:
        """:meth:`get_call` (``timeout`` checked), its trace linked to a batch's ``origin``."""
        with self._setup.telemetry.lookup(origin) as trace:
            call_sid = validate_call_sid(call_sid)
            trace.identify(call_sid)
            if self._closed:
                raise ClientClosedError("the client is closed", call_sid=call_sid)
            cached = self._cache.get(call_sid)
            if cached is not None:
                trace.served_from_cache()
                return cached

            def joined(in_caller: bool) -> None:
                trace.shared()
                if in_caller:
                    self._warn_of_sharing()

            def shared(caller: Caller | None) -> Awaitable[CallDetails]:
                return self._flights.call(
                    call_sid,
                    lambda callers: self._lookup(call_sid, trace, callers),
                    self._group,
                    caller=caller,
                    on_join=joined,
                )

            if timeout is None:
                return await shared(None)
            # The caller stops waiting at its own deadline, whoever else still waits,
            # or sooner when the lookup begins a wait that would outlast it.
            caller = Caller(anyio.current_time() + timeout)
            with caller.scope:
                return await shared(caller)
            raise caller.error or timed_out(
                f"no answer within this lookup's timeout of {timeout:g}s", call_sid=call_sid
            )

    def _warn_of_sharing(self) -> None:
        if self._warned_of_sharing:
            return
        self._warned_of_sharing = True
        logger.warning(
            "concurrent lookups of one call SID share a request run in the first "
            "caller's task, because this client is not used as `async with`: if that "
            "caller is cancelled or times out, the others send the request again; "
            "enter the client (`async with client:`, in an app's lifespan) to share "
            "requests fully"
        )

    @overload
    async def get_calls(
        self,
        items: Iterable[str],
        *,
        concurrency: int | None = None,
        sid: None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - each lookup's own deadline
    ) -> list[CallResult]: ...
    @overload
    async def get_calls(
        self,
        items: Iterable[_Item],
        *,
        concurrency: int | None = None,
        sid: Callable[[_Item], str],
        timeout: float | None = None,  # noqa: ASYNC109 - each lookup's own deadline
    ) -> list[CallResult]: ...
    async def get_calls(
        self,
        items: Iterable[Any],
        *,
        concurrency: int | None = None,
        sid: Callable[[Any], str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - each lookup's own deadline
    ) -> list[CallResult]:
        """Fetch many calls; one :class:`CallResult` per input position, in input order.

        ``items`` are call SIDs, or anything ``sid`` takes a call's SID from (a
        queue's message, a row); each result's ``item`` is its input item. Each
        distinct SID is fetched once. One SID's failure (not found, retries
        exhausted, an invalid SID, a non-string SID) is that item's ``error``; it
        never fails the batch. An :class:`AuthenticationError` or
        :class:`ConfigurationError` is not one SID's problem: it stops the batch
        at once (no further requests, in-flight ones cancelled) and is raised, as
        is :class:`ClientClosedError` when the client is closed under the batch,
        and whatever ``sid`` raises (a bug of the caller's). ``concurrency`` is
        the number of lookups in progress (default: the client's ``max_concurrency``);
        ``timeout`` bounds each lookup as in :meth:`get_call`, from its start.
        """
        return await gather_results(
            items,
            get_call=self._batch_lookups(timeout),
            concurrency=self._workers(concurrency),
            sid=sid,
        )

    @overload
    def stream_calls(
        self,
        items: Iterable[str] | AsyncIterable[str],
        *,
        concurrency: int | None = None,
        sid: None = None,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[CallResult]]: ...
    @overload
    def stream_calls(
        self,
        items: Iterable[_Item] | AsyncIterable[_Item],
        *,
        concurrency: int | None = None,
        sid: Callable[[_Item], str],
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[CallResult]]: ...
    def stream_calls(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int | None = None,
        sid: Callable[[Any], str] | None = None,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[CallResult]]:
        """Fetch calls and yield their :class:`CallResult` as they complete.

        ``items`` may be any iterable or async iterable (an event stream, a
        generator over a file) of call SIDs, or of anything ``sid`` takes a call's
        SID from; each result's ``item`` is its input item, so a consumer acks the
        message a result is for. A fixed set of ``concurrency`` workers pulls from
        it lazily, so memory does not grow with the number of items. One result per
        input item, duplicates and non-strings included. Leaving the block early
        (break, exception, cancellation) stops reading the input (closing an async
        generator), cancels lookups in flight, and returns only when nothing it
        started is still running. What stops :meth:`get_calls` stops the stream
        and is raised as itself; so is an exception of the source's own.
        ``timeout`` bounds each lookup as in :meth:`get_call`, from its start.

        Use it as::

            async with ccm.stream_calls(sids) as results:
                async for result in results:
                    ...
        """
        return stream_results(
            items,
            get_call=self._batch_lookups(timeout),
            concurrency=self._workers(concurrency),
            sid=sid,
        )

    def _batch_lookups(self, timeout: float | None) -> Callable[[str], Awaitable[CallDetails]]:
        # Each lookup of a batch is traced on its own, linked to the caller's span
        # as it is now, rather than as one of a batch span's thousands of children.
        check_lookup_timeout(timeout)
        return functools.partial(
            self._get_call, origin=self._setup.telemetry.batch_origin(), timeout=timeout
        )

    def _workers(self, concurrency: int | None) -> int:
        workers = self._setup.max_concurrency if concurrency is None else concurrency
        check_count("concurrency", workers, MAX_CONCURRENCY_LIMIT)
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
        return await poll_until_terminal(
            self.get_call, call_sid, timeout=timeout, interval=interval, max_interval=max_interval
        )

    async def _lookup(self, call_sid: str, trace: LookupTrace, callers: Deadline) -> CallDetails:
        lookup = self._attempts.lookup(call_sid, trace, callers)
        # Cancelled by aclose(), from any task: the lookup then ends as ClientClosedError.
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                call = await lookup.run(self._attempts.attempt)
            except CcmError as exc:
                if exc.call_sid is None:
                    exc.call_sid = call_sid  # every error is about the SID it failed for
                # A failed lookup's frames hold its response body: a kept error keeps
                # only itself.
                forget_frames(exc)
                raise
            finally:
                self._running.discard(scope)
                trace.sent(lookup.attempts)
            self._cache.put(call_sid, call)
            return call
        raise ClientClosedError("the client was closed during the lookup", call_sid=call_sid)
