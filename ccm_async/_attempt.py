"""One attempt of a lookup, and what its outcome teaches the client.

An attempt waits out the client-wide pause holding nothing, takes a
concurrency slot and a rate-limit permit (``_throttle``), sends one GET
through the engine (``_http``) and decodes the answer (``_convert``). Its
outcome is fed back into the state that every lookup of the client shares:
the rate limiter and the pause (a 429), the retry budget (a retryable
failure or not), and the counters behind ``client.stats`` (``_stats``); its
waits and its send are told to the lookup's trace (``_telemetry``).
:class:`Attempts` holds that state; ``Lookup`` (``_retry``) decides whether
another attempt follows.
"""

from __future__ import annotations

import logging
from typing import Final

import anyio

from ccm_async._convert import decode_response
from ccm_async._errors import ApiError, CcmError, RateLimitError, TransportError
from ccm_async._loops import current_loop
from ccm_async._models import CallDetails, ClientStats
from ccm_async._retry import Deadline, Lookup, RetryBudget, is_retryable
from ccm_async._setup import Setup
from ccm_async._stats import Counters
from ccm_async._telemetry import LookupTrace
from ccm_async._throttle import Permit, Slots, Throttle

__all__ = ["Attempts"]

logger: Final = logging.getLogger("ccm_async")


class Attempts:
    """The attempts of one client's lookups, and the state their outcomes change."""

    def __init__(self, setup: Setup) -> None:
        self._setup = setup
        self._counters = Counters()
        self._budget = RetryBudget(setup.policy.budget_tokens, setup.policy.budget_refill)
        self._slots = Slots(setup.max_concurrency)
        self._throttle = Throttle(setup.rate_limit, shared=setup.shared)
        self._loop: object = None

    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        return self._counters.snapshot(self._throttle.limiter)

    def lookup(self, call_sid: str, trace: LookupTrace, callers: Deadline) -> Lookup:
        """The retry state of a new lookup of ``call_sid``, on the running event loop."""
        self._follow_the_event_loop()
        return Lookup(
            call_sid, self._setup.policy, self._budget, self._deny_retry, trace, callers=callers
        )

    def _deny_retry(self) -> None:
        self._counters.deny_retry()
        self._setup.telemetry.budget_denied()

    def _follow_the_event_loop(self) -> None:
        # Waits, pauses and windows are times on the loop's own clock, and its
        # primitives belong to it: a new loop starts them afresh (the engine
        # opens fresh connections on its own).
        loop = current_loop()
        if loop is not self._loop:
            if self._loop is not None:
                self._slots = Slots(self._setup.max_concurrency)
                self._throttle = Throttle(self._setup.rate_limit, shared=self._setup.shared)
            self._loop = loop

    async def attempt(self, lookup: Lookup) -> CallDetails:
        """One attempt of ``lookup``: the call, or the error this attempt met."""
        if lookup.attempts:
            self._counters.retries += 1
        # The policy's deadline runs from the first send, or from the start of a wait
        # for the client's pause if that comes first. Queueing for a first slot and a
        # first permit does not count: those are the client's own bounds, which a bulk
        # fetch at 200/min waits on by design (a caller's own timeout bounds them
        # all, from the moment it called). From then on every wait counts, and
        # the lookup queues for slots ahead of first attempts. The pause is waited
        # holding nothing, and looked at again just before the send: it may have
        # begun (another lookup's 429) while this one waited for a slot or a permit.
        while True:
            pause = self._throttle.pause_left()
            if await lookup.wait_out_pause(pause):
                self._counters.rate_limit_waits += 1
                lookup.trace.waited(pause, "pause")
            with lookup.callers.bound(lookup) as scope:
                async with (
                    self._slots.hold(retry=lookup.started),
                    self._throttle.permit() as permit,
                ):
                    lookup.start()
                    scope.deadline = lookup.deadline
                    if permit.waited is not None:
                        self._counters.rate_limit_waits += 1
                        lookup.trace.waited(permit.waited, "permit")
                    if not self._throttle.pause_left():
                        lookup.attempts += 1
                        return await self._exchange(lookup, permit)
            if scope.cancelled_caught:
                raise lookup.deadline_error()

    async def _exchange(self, lookup: Lookup, permit: Permit) -> CallDetails:
        """One request and its decoding, its error without the credentials' texts."""
        try:
            return await self._fed_back_exchange(lookup, permit)
        except CcmError as exc:
            self._setup.secrets.redact(exc)
            raise

    async def _fed_back_exchange(self, lookup: Lookup, permit: Permit) -> CallDetails:
        """One request and its decoding, fed back to the budget and the limiter."""
        call_sid, attempt = lookup.call_sid, lookup.attempts
        url = self._setup.calls_url + call_sid
        started = anyio.current_time()
        status: int | str = "no response"
        try:
            self._counters.requests += 1
            with lookup.trace.request(url, attempt) as request:
                try:
                    reply = await self._setup.engine.get(url, call_sid)
                finally:
                    # An answer or a failure comes no earlier than the request reached
                    # the server, if it did: the rate window counts it from now.
                    permit.end()
                request.answered(reply.status)
            status = reply.status
            self._counters.responses[status] += 1
            # The API's own answers only: a 5xx may be a gateway's or another backend's.
            if status < 500:
                self._throttle.pacer.observe(reply.rate_window, sequence=permit.sequence)
            call = decode_response(
                status,
                self._setup.secrets.redact_body(reply.body),
                call_sid=call_sid,
                retry_after=reply.retry_after,
                api_version=self._setup.api_version,
            )
        except TransportError:
            self._counters.transport_errors += 1
            self._budget.record_failure()
            raise
        except ApiError as exc:
            if isinstance(exc, RateLimitError) and exc.retry_after is not None:
                await self._throttle.pause(exc.retry_after)
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
