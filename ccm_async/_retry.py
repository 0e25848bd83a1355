"""RetryPolicy, the shared retry budget, and the tenacity loop of one lookup.

What is retried: :class:`ServerError` (every 5xx, also an HTTP 200 whose
envelope says 5xx), :class:`RateLimitError` and :class:`TransportError`. Never
an error the next attempt would repeat (not found, authentication, other 4xx,
a malformed body, an invalid SID), and never a cancellation: the predicate
tests ``Exception`` subclasses only, so ``CancelledError`` and trio's
``Cancelled`` (BaseExceptions) always propagate at once.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import attrs

from ccm_async._errors import (
    ApiError,
    CcmError,
    ConfigurationError,
    ErrorAnswer,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from ccm_async._telemetry import LookupTrace

if TYPE_CHECKING:
    import tenacity

__all__ = [
    "Caller",
    "Deadline",
    "Lookup",
    "RetryBudget",
    "RetryPolicy",
    "backoff_is_instant",
    "instant_backoff",
    "is_retryable",
    "timed_out",
]

logger: Final = logging.getLogger("ccm_async")

_T = TypeVar("_T")
_RETRY_AFTER_CAP: Final = 60.0
_instant = False


def _bounded(
    low: float, high: float, *, integer: bool = False
) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    kinds = int if integer else int | float
    kind = "an integer" if integer else "a number"

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        # A bool is an int to Python, never a count or a number of seconds to a user;
        # NaN fails the comparison and an infinity is out of every range.
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name} must be {kind} "
                f"from {low:g} to {high:g}"
            )

    return check


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How one lookup retries, and the retry budget its client shares.

    Backoff is exponential from ``wait_initial``, doubling per retry, capped at
    ``wait_max``, with *full jitter*: the wait is drawn uniformly from zero up to
    that value. Full jitter spreads a thousand lookups that failed together over
    the whole interval, so they do not come back together, and it does the least
    total waiting of the usual jitter schemes. A ``Retry-After`` on a 429 or 503
    is waited exactly, when it is at most min(60 s, the time left); when it is
    longer the lookup gives up at once with that response's error. A 429's
    ``Retry-After`` also pauses every send of the client; a lookup that would
    wait for that pause longer than min(60 s, its time left) fails at once with a
    :class:`RateLimitError` (``retry_after``: the pause still to run), sending
    nothing.

    Attributes:
        attempts: attempts per lookup, the first included (1-20).
        wait_initial: the first backoff's upper bound, in seconds.
        wait_max: the cap on any backoff, in seconds.
        timeout: the lookup's deadline in seconds, over every wait (the client's
            pause, a retry's slot and rate-limit permit, backoff) and attempt. It
            starts at the first send, or when the lookup begins waiting out the
            client's pause, if sooner: queueing for a first slot and a first
            permit (the client's own bounds) does not count.
        budget_tokens: the retry budget (gRPC retry throttling), shared by all
            lookups of a client: every failed attempt takes a token, every
            success gives back ``budget_refill``, and retries happen only while
            more than half the tokens are left. Under a total outage this caps
            retries at about ``budget_tokens / 2`` in all.
        budget_refill: tokens a successful attempt gives back.
    """

    attempts: int = attrs.field(default=4, validator=_bounded(1, 20, integer=True))
    wait_initial: float = attrs.field(default=0.25, validator=_bounded(0.0, 60.0))
    wait_max: float = attrs.field(default=8.0, validator=_bounded(0.0, 300.0))
    timeout: float = attrs.field(default=30.0, validator=_bounded(0.001, 3600.0))
    budget_tokens: float = attrs.field(default=500.0, validator=_bounded(2.0, 1e9))
    budget_refill: float = attrs.field(default=0.1, validator=_bounded(0.0, 1e9))

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """The jittered wait before retry ``retry_number`` (1 for the first retry)."""
        ceiling = min(self.wait_max, self.wait_initial * 2.0 ** (retry_number - 1))
        return (rng or random).uniform(0.0, ceiling)


class RetryBudget:
    """A token bucket shared by every lookup of one client (gRPC's retry throttling)."""

    def __init__(self, tokens: float, refill: float) -> None:
        self._max = tokens
        self._tokens = tokens
        self._refill = refill

    @property
    def tokens(self) -> float:
        """The tokens left."""
        return self._tokens

    def record_success(self) -> None:
        """An attempt got an answer that was not a retryable failure."""
        self._tokens = min(self._max, self._tokens + self._refill)

    def record_failure(self) -> None:
        """An attempt failed in a way that is retried."""
        self._tokens = max(0.0, self._tokens - 1.0)

    def allows_retry(self) -> bool:
        """Whether a retry may be sent now."""
        return self._tokens > self._max / 2


def is_retryable(exc: BaseException) -> bool:
    """Whether a next attempt could succeed where this one failed."""
    return isinstance(exc, ServerError | RateLimitError | TransportError) and not getattr(
        exc, "deadline_exceeded", False
    )


def timed_out(message: str, *, call_sid: str) -> RequestTimeoutError:
    """The error of a lookup that ran out of time (never retried)."""
    error = RequestTimeoutError(message, call_sid=call_sid)
    error.deadline_exceeded = True
    return error


def backoff_is_instant() -> bool:
    """Whether :func:`instant_backoff` is on."""
    return _instant


@contextlib.contextmanager
def instant_backoff() -> Generator[None]:
    """Make every retry wait, and every 429 pause, zero seconds inside the block.

    For users' test suites: retries still happen and still count (and the waits
    the policy chose are still logged); only the waiting is skipped. A configured
    rate limit still applies.
    """
    global _instant  # noqa: PLW0603 - a process-wide testing switch, like stamina's
    previous, _instant = _instant, True
    try:
        yield
    finally:
        _instant = previous


class Caller:
    """One caller of a lookup with a deadline of its own: it waits in ``scope``
    until ``at``, and is let go sooner, with an error, when the lookup begins a
    wait that would outlast it."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.scope = anyio.CancelScope(deadline=at)
        self.error: CcmError | None = None  # why it was let go before its deadline

    def let_go(self, error: CcmError) -> None:
        """Stop waiting now, failing with ``error``."""
        self.error = error
        self.scope.cancel()


class Deadline:
    """Until when the callers of one lookup wait for it: the latest of their own
    deadlines (``get_call(timeout=...)``), infinite while one has none.

    A lookup shared by several callers runs until the last of them stops
    waiting, so a caller with a short timeout never cuts the request short for
    the others; it only stops waiting itself. The bounds of the waits in flight
    follow when a caller with a later deadline joins, and a wait the lookup
    begins lets go at once the callers it would outlast (:meth:`waiting_until`).
    """

    def __init__(self, at: float = float("inf")) -> None:
        self.at = at
        self._scopes: dict[anyio.CancelScope, Lookup] = {}
        self._callers: list[Caller] = []
        self._wait: tuple[float, CcmError] | None = None  # the wait begun last: its end, its cause

    def join(self, caller: Caller | None) -> None:
        """A caller waiting until its own deadline (None: without one) joined."""
        if caller is None:
            self.extend(float("inf"))
            return
        self._callers.append(caller)
        self.extend(caller.at)
        if self._wait is not None and caller.at <= self._wait[0]:
            caller.let_go(self._wait[1])  # it joined a wait that outlasts it

    def extend(self, at: float) -> None:
        """A caller waiting until ``at`` joined."""
        if at > self.at:
            self.at = at
            for scope, lookup in self._scopes.items():
                scope.deadline = lookup.deadline

    def waiting_until(self, until: float, error: CcmError) -> None:
        """The lookup waits until ``until``: a caller it would outlast fails now with
        ``error``, rather than at its deadline with a timeout."""
        self._wait = (until, error)
        for caller in self._callers:
            if caller.at <= until and caller.error is None:
                caller.let_go(error)

    @contextlib.contextmanager
    def bound(self, lookup: Lookup) -> Generator[anyio.CancelScope]:
        """A scope cancelled at ``lookup``'s deadline, however that moves."""
        with anyio.CancelScope(deadline=lookup.deadline) as scope:
            self._scopes[scope] = lookup
            try:
                yield scope
            finally:
                del self._scopes[scope]


class Lookup:
    """The retry state of one lookup: its attempts, deadline and the next wait."""

    def __init__(
        self,
        call_sid: str,
        policy: RetryPolicy,
        budget: RetryBudget,
        on_denied: Callable[[], None],
        trace: LookupTrace,
        *,
        callers: Deadline,
    ) -> None:
        self.call_sid = call_sid
        self.trace = trace
        self.policy = policy
        self.budget = budget
        self.callers = callers
        self.attempts = 0
        self.started = False  # whether the policy's deadline runs
        self.next_wait: float | None = 0.0
        self._policy_deadline = float("inf")
        self._decided_on: BaseException | None = None
        self._on_denied = on_denied

    @property
    def deadline(self) -> float:
        """When the lookup gives up: its policy's deadline, or its callers' if sooner."""
        return min(self._policy_deadline, self.callers.at)

    def start(self) -> None:
        """The policy's deadline starts now, unless it already runs."""
        if not self.started:
            self.started = True
            self._policy_deadline = anyio.current_time() + self.policy.timeout

    async def wait_out_pause(self, pause: float) -> bool:
        """Wait out ``pause`` seconds of the client's pause before a send; True if any.

        The deadline runs from here. A pause longer than min(60 s, the time left) is
        not waited: the lookup fails at once with a :class:`RateLimitError` whose
        ``retry_after`` is the pause still to run, and sends nothing more.
        """
        if pause <= 0:
            return False
        self.start()
        if not self._may_wait(pause):
            raise self._paused(pause)
        self._waits(pause, self._paused(pause))
        await anyio.sleep(pause)
        return True

    def _paused(self, pause: float) -> RateLimitError:
        return RateLimitError(
            f"rate limited: the client's pause after a 429 runs {pause:g}s more, longer "
            f"than this lookup may wait; nothing was sent [call_sid={self.call_sid}]",
            ErrorAnswer(http_status=429, call_sid=self.call_sid, retry_after=pause),
        )

    def _waits(self, seconds: float, error: CcmError) -> None:
        """A wait of ``seconds`` begins: callers it would outlast fail now with ``error``."""
        error.attempts = self.attempts
        if error.call_sid is None:
            error.call_sid = self.call_sid
        self.callers.waiting_until(anyio.current_time() + seconds, error)

    def deadline_error(self) -> RequestTimeoutError:
        """The error for a lookup whose deadline passed."""
        if self.callers.at < self._policy_deadline:
            what = "its callers' timeout passed"
        else:
            what = f"lookup deadline of {self.policy.timeout:g}s exceeded"
        return timed_out(f"{what} after {self.attempts} attempt(s)", call_sid=self.call_sid)

    async def run(self, attempt: Callable[[Lookup], Awaitable[_T]]) -> _T:
        """Run ``attempt`` under the policy; raises the last attempt's own error."""
        try:
            try:
                # The first attempt runs before tenacity is set up: most lookups
                # need no other, and that setup measured ~20 us a lookup.
                return await attempt(self)
            except Exception as exc:
                if not is_retryable(exc) or self.decide(exc) is None:
                    raise
                self._before_retry(exc)
            await anyio.sleep(self._sleep_time())
            import tenacity  # noqa: PLC0415 - loaded on a first retry, which most lookups never make

            retrying = tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception(is_retryable),
                stop=self.stop,
                wait=self.wait,
                sleep=anyio.sleep,
                before_sleep=lambda state: self._before_retry(_exception(state)),
                reraise=True,
            )
            return await retrying(attempt, self)
        except CcmError as exc:
            exc.attempts = self.attempts
            raise

    def stop(self, state: tenacity.RetryCallState) -> bool:
        """tenacity's stop: give up after this failure?"""
        return self.decide(_exception(state)) is None

    def wait(self, state: tenacity.RetryCallState) -> float:
        """tenacity's wait: seconds to sleep after this failure (0 when giving up)."""
        self.decide(_exception(state))
        return self._sleep_time()

    def decide(self, exc: BaseException | None) -> float | None:
        """The wait before the next attempt after the failure ``exc``, or None to give up.

        Decided once per failure, whichever of :meth:`stop` and :meth:`wait`
        tenacity asks first: the jittered backoff is drawn once and a budget
        denial counted once, so the order of its callbacks cannot change the
        answer.
        """
        if exc is not self._decided_on or exc is None:
            self._decided_on = exc
            self.next_wait = self._choose_wait(exc)
        return self.next_wait

    def _choose_wait(self, exc: BaseException | None) -> float | None:
        if self.attempts >= self.policy.attempts:
            return None
        wait = self._plan_wait(exc)
        if wait is None:
            return None
        if not self.budget.allows_retry():
            self._on_denied()
            return None
        return wait

    def _sleep_time(self) -> float:
        return 0.0 if _instant or self.next_wait is None else self.next_wait

    def _plan_wait(self, exc: BaseException | None) -> float | None:
        retry_after = _retry_after(exc)
        if retry_after is not None:
            return retry_after if self._may_wait(retry_after) else None
        wait = self.policy.backoff(self.attempts)
        return wait if wait < self.deadline - anyio.current_time() else None

    def _may_wait(self, seconds: float) -> bool:
        # The server's own wait (Retry-After, the pause it set) is kept to exactly,
        # or not at all: a lookup gives up rather than wait past 60 s or its deadline.
        # A wait that ends just as the deadline passes leaves no time for the send.
        return seconds <= _RETRY_AFTER_CAP and seconds < self.deadline - anyio.current_time()

    def _before_retry(self, exc: BaseException | None) -> None:
        self.trace.backoff(self.next_wait or 0.0, exc)
        if isinstance(exc, CcmError):
            self._waits(self._sleep_time(), exc)
        logger.warning(
            "retrying call %s after attempt %d of %d failed (%s); waiting %.3fs",
            self.call_sid,
            self.attempts,
            self.policy.attempts,
            type(exc).__name__,
            self.next_wait,
            extra={"call_sid": self.call_sid, "attempt": self.attempts, "wait": self.next_wait},
        )


def _exception(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _retry_after(exc: BaseException | None) -> float | None:
    if isinstance(exc, ApiError) and (isinstance(exc, RateLimitError) or exc.http_status == 503):
        return exc.retry_after
    return None
