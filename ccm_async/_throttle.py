"""The concurrency bound and request-rate limiting, shared by every lookup of a client.

:class:`Slots` bounds the requests in flight; a retry goes ahead of first
attempts in its queue, so that it does not wait behind a whole bulk fetch
while its deadline runs.

A permit is taken after the concurrency slot, just before the send, and held
until the exchange ends. With a configured :class:`RateLimit` no window of
``per`` seconds holds more than ``requests`` of the client's requests as the
server counts them, by arrival (:class:`SlidingWindow` says how). Without
one it adapts to 429s: a sustained share of them lowers its rate
(multiplicative decrease, from the rate the server was seen to accept), and
successes raise it back slowly (additive increase). A 429's ``Retry-After``
pauses every send of the client for as long as it says, never longer; a lookup
that may not wait that long fails at once instead (``Lookup.wait_out_pause``).
The server's own rate-limit headers pace the sends as well (``_pacing``).
"""

from __future__ import annotations

import collections
import importlib.util
import re
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Protocol

import anyio
import anyio.lowlevel
import attrs

from ccm_async._errors import ConfigurationError, shown
from ccm_async._pacing import HeaderPacer
from ccm_async._retry import backoff_is_instant

if TYPE_CHECKING:
    from ccm_async._shared import SharedStore, SharedWindow


class Release(Protocol):
    """Gives a permit back: its exchange ended now, or (``sent=False``) never began."""

    def __call__(self, *, sent: bool) -> None: ...


__all__ = [
    "AdaptiveRate",
    "Permit",
    "RateLimit",
    "Release",
    "SlidingWindow",
    "Slots",
    "Throttle",
    "redacted_url",
]


class Slots:
    """A FIFO semaphore of ``size`` slots whose retries queue ahead of first attempts."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._first: collections.deque[anyio.Event] = collections.deque()
        self._retries: collections.deque[anyio.Event] = collections.deque()

    @asynccontextmanager
    async def hold(self, *, retry: bool) -> AsyncGenerator[None]:
        """Hold a slot for the block."""
        await self._acquire(retry=retry)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, *, retry: bool) -> None:
        if self._free and not (self._first or self._retries):
            await anyio.lowlevel.checkpoint_if_cancelled()
            self._free -= 1
            return
        handed = anyio.Event()
        queue = self._retries if retry else self._first
        queue.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self._release()  # handed a slot while leaving: pass it on
            else:
                queue.remove(handed)
            raise

    def _release(self) -> None:
        for queue in (self._retries, self._first):
            if queue:
                queue.popleft().set()  # the slot goes straight to the next in line
                return
        self._free += 1


def redacted_url(url: str) -> str:
    """``url`` as messages and reprs show it: its scheme, host, port and path, with
    ``***@`` for whatever came before an ``@``, and ``?...`` for a query (either may
    hold a password, which may itself hold any of ``#/?@``)."""
    scheme, _, rest = url.partition("://")
    _, at, location = rest.rpartition("@")
    place = re.split(r"[?#]", location, maxsplit=1)
    return shown(f"{scheme}://{'***@' if at else ''}{place[0]}{'?...' if len(place) > 1 else ''}")


def _shown_storage(url: str | None) -> str:
    return repr(url if url is None else redacted_url(url))


@attrs.frozen(kw_only=True)
class RateLimit:
    """At most ``requests`` requests start in any ``per`` seconds (Exotel's default
    for an account is 200 per 60 s).

    ``storage``, a Redis URL (``redis://``, ``rediss://`` or ``unix://``; the
    ``redis`` extra), shares the limit with every client of the same account and
    API host that names the same Redis, in any process on any host; None keeps it
    to this client. ``storage_timeout`` bounds each Redis operation: past it, or
    when Redis fails, the client keeps to its share of the limit on its own.
    """

    requests: int
    per: float = 60.0
    storage: str | None = attrs.field(default=None, repr=_shown_storage)
    storage_timeout: float = 0.25

    def __attrs_post_init__(self) -> None:
        # A bool is an int to Python, never a count or a number of seconds to a user;
        # NaN fails the comparison and an infinity is out of range.
        requests, per = self.requests, self.per
        if (
            isinstance(requests, bool)
            or not isinstance(requests, int)
            or not 1 <= requests <= 1_000_000
        ):
            raise ConfigurationError("RateLimit.requests must be an integer from 1 to 1000000")
        if isinstance(per, bool) or not isinstance(per, int | float) or not 0.001 <= per <= 86_400:
            raise ConfigurationError("RateLimit.per must be from 0.001 to 86400 seconds")
        _check_storage(self.storage)
        timeout = self.storage_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0.001 <= timeout <= 10
        ):
            raise ConfigurationError("RateLimit.storage_timeout must be from 0.001 to 10 seconds")


_STORAGE_SCHEMES: Final = ("redis", "rediss", "unix")


def _check_storage(url: object) -> None:
    if url is None:
        return
    if not isinstance(url, str):
        raise ConfigurationError(
            f"RateLimit.storage must be a Redis URL or None, got {type(url).__name__}"
        )
    scheme = url.partition("://")[0].lower()
    if scheme not in _STORAGE_SCHEMES or len(url) > 2000 or not url.isprintable() or " " in url:
        raise ConfigurationError(
            "RateLimit.storage must be a URL of redis://, rediss:// or unix://, got "
            f"'{redacted_url(url)}'"
        )
    if importlib.util.find_spec("redis") is None:
        raise ConfigurationError(
            "RateLimit.storage needs the redis extra: pip install 'ccm-async[redis]'"
        )
    import redis.connection  # noqa: PLC0415 - the redis extra's

    try:
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # pyright: ignore[reportUnknownMemberType]
    except ValueError:  # its message may quote the password: not chained
        raise ConfigurationError(
            f"RateLimit.storage is not a URL redis-py reads: '{redacted_url(url)}' (its host, "
            "port, database and options)"
        ) from None


class SlidingWindow:
    """Never more than ``requests`` requests in any window of ``per`` seconds, as the
    server counts them: by when they arrive.

    The client cannot see an arrival, only that it came before the exchange's end
    (the response, or the failure). So a request is counted at its exchange's end,
    and one still in flight counts as in the window; a permit is given only while
    fewer than ``requests`` are in flight or ended within the last ``per`` seconds.
    However long a new connection takes to open, two requests ``requests`` apart
    then reach the server at least ``per`` seconds apart.
    """

    def __init__(self, limit: RateLimit) -> None:
        self._requests = limit.requests
        self._per = limit.per
        self._in_flight = 0
        self._ended: collections.deque[float] = collections.deque()
        self._change: anyio.Event | None = None
        self._lock = anyio.Lock()

    async def acquire(self) -> bool:
        """Wait for a permit; True when that meant waiting (for the window or in line).

        The permit is held until :meth:`release`.
        """
        waited = self._lock.locked()
        async with self._lock:
            while not self._has_room():
                waited = True
                await self._wait_for_room()
            self._in_flight += 1
            return waited

    def count(self) -> None:
        """A permit given elsewhere (a shared window's), counted here as one of its own."""
        self._in_flight += 1

    def limit_to(self, limit: RateLimit) -> None:
        """Admit by ``limit`` from now on, the requests already counted included."""
        self._requests, self._per = limit.requests, limit.per
        if self._change is not None:
            self._change.set()  # a waiter looks again: a higher limit may have room

    def release(self, *, sent: bool) -> None:
        """The permit's exchange ended now; ``sent=False``: it never began (not counted)."""
        self._in_flight -= 1
        if sent:
            self._ended.append(anyio.current_time())
        if self._change is not None:
            self._change.set()

    def record(self, *, limited: bool) -> None:
        """A configured limit does not adapt."""

    def _has_room(self) -> bool:
        now = anyio.current_time()
        while self._ended and self._ended[0] + self._per <= now:
            self._ended.popleft()
        return self._in_flight + len(self._ended) < self._requests

    async def _wait_for_room(self) -> None:
        # Room comes when the oldest end leaves the window, or when a permit held
        # in flight is given back unused.
        self._change = anyio.Event()
        if not self._ended:
            await self._change.wait()
            return
        with anyio.move_on_after(self._ended[0] + self._per - anyio.current_time()) as timer:
            await self._change.wait()
        if timer.cancelled_caught:
            # Its time in the window is over (popped here: the clock's arithmetic
            # may put "now" a hair short of ended + per).
            self._ended.popleft()


class AdaptiveRate:
    """AIMD pacing that converges on a server's limit without knowing it.

    Unlimited until 429s are sustained: at least ``_TRIGGER`` of them, and at
    least ``_SHARE`` of the last ``_WINDOW`` responses. A sprinkle of isolated
    429s (1% of responses) practically never reaches that: it does not throttle
    a bulk run.
    Then the rate becomes ``_DECREASE`` times the rate the server accepted (or
    the current rate, if lower), and no further decrease happens for a while,
    since requests sent at the old rate are still coming back. The accepted rate
    is measured over the successes of the last ``_SPAN`` seconds, or the last
    ``_WINDOW`` successes if those took longer: it rests on enough of them at a
    low rate, and on a whole second at a high one (where ``_WINDOW`` come back
    in a fraction of a second). Requests still in flight count as accepted: a
    429 comes back sooner than a success, so when the 429s begin, the successes
    sent before them are mostly still on their way.
    Each success adds a small step, so the rate climbs back over a few hundred
    requests. 429s with a ``Retry-After`` pause the client instead.
    """

    _WINDOW: Final = 100
    _SPAN: Final = 1.0
    _TRIGGER: Final = 10
    _SHARE: Final = 0.1
    _DECREASE: Final = 0.7
    _MIN_RATE: Final = 0.05
    _RECOVERY_REQUESTS: Final = 200.0

    def __init__(self) -> None:
        self.rate: float | None = None
        self._outcomes: collections.deque[tuple[float, bool]] = collections.deque(
            maxlen=self._WINDOW
        )
        self._accepted: collections.deque[float] = collections.deque()
        self._in_flight = 0
        self._step = 0.0
        self._hold_until = 0.0
        self._next_send = 0.0
        self._lock = anyio.Lock()

    async def acquire(self) -> bool:
        """Wait for the next paced send time; True when that meant waiting."""
        if self.rate is None:
            self._in_flight += 1
            return False
        waited = self._lock.locked()
        async with self._lock:
            now = anyio.current_time()
            send_at = max(now, self._next_send)
            self._next_send = send_at + 1.0 / self.rate
            if send_at > now:
                await anyio.sleep(send_at - now)
                waited = True
            self._in_flight += 1
            return waited

    def release(self, *, sent: bool) -> None:
        """The exchange ended (or never began): it is no longer in flight."""
        self._in_flight -= 1

    def record(self, *, limited: bool) -> None:
        """Feed back one response: was it a 429 without a Retry-After?"""
        now = anyio.current_time()
        self._outcomes.append((now, limited))
        if not limited:
            self._note_accepted(now)
            if self.rate is not None:
                self.rate += self._step
            return
        limited_count = sum(1 for _, was_limited in self._outcomes if was_limited)
        sustained = limited_count >= max(self._TRIGGER, self._SHARE * len(self._outcomes))
        if sustained and now >= self._hold_until:
            self._decrease(now)

    def _note_accepted(self, now: float) -> None:
        accepted = self._accepted
        accepted.append(now)
        while len(accepted) > self._WINDOW and accepted[0] <= now - self._SPAN:
            accepted.popleft()

    def _decrease(self, now: float) -> None:
        # The rate the server accepted; if it accepted nothing, what was sent.
        if self._accepted:
            accepted = len(self._accepted) + self._in_flight
            estimate = accepted / max(self._SPAN, now - self._accepted[0])
        else:
            estimate = len(self._outcomes) / max(self._SPAN, now - self._outcomes[0][0])
        current = estimate if self.rate is None else min(self.rate, estimate)
        self.rate = max(self._MIN_RATE, current * self._DECREASE)
        self._step = (current - self.rate) / self._RECOVERY_REQUESTS
        self._hold_until = now + max(1.0, 2.0 / self.rate)
        self._next_send = max(self._next_send, now + 1.0 / self.rate)
        self._outcomes.clear()


class Permit:
    """A request's place under the rate limit and the server's pacing, from before
    its send until its exchange ends."""

    def __init__(
        self, pacer: HeaderPacer, release: Release, *, waited: float | None, sequence: int
    ) -> None:
        self.waited = waited  # the seconds it waited for, None if it had no wait
        self.sequence = sequence  # the send's number, for the pacing by headers
        self._pacer = pacer
        self._release = release
        self._held = True

    def end(self, *, sent: bool = True) -> None:
        """The exchange ended (its request counts from now), or with ``sent=False``
        never began (the place goes back). Only the first call counts."""
        if self._held:
            self._held = False
            self._release(sent=sent)
            self._pacer.release(self.sequence)


class Throttle:
    """The client-wide pause (after a 429's Retry-After), the rate limiter, and the
    pacing by the server's headers."""

    def __init__(self, limit: RateLimit | None, *, shared: SharedStore | None = None) -> None:
        self.limiter: SlidingWindow | AdaptiveRate | SharedWindow
        if limit is None:
            self.limiter = AdaptiveRate()
        elif shared is None:
            self.limiter = SlidingWindow(limit)
        else:
            from ccm_async._shared import SharedWindow  # noqa: PLC0415 - the redis extra's

            self.limiter = SharedWindow(limit, shared, on_pause=self._pause_here)
        self.pacer = HeaderPacer()
        self._paused_until = 0.0

    @asynccontextmanager
    async def permit(self) -> AsyncGenerator[Permit]:
        """Wait for a permit, held for the block; the exchange ends it (:meth:`Permit.end`),
        and if none did, leaving the block gives it back unused."""
        asked = anyio.current_time()
        limiter = self.limiter
        if isinstance(limiter, SlidingWindow | AdaptiveRate):
            waited, release = await limiter.acquire(), limiter.release
        else:
            waited, release = await limiter.take()
        try:
            paced, sequence = await self.pacer.acquire()
        except BaseException:
            release(sent=False)
            raise
        wait = anyio.current_time() - asked if waited or paced else None
        permit = Permit(self.pacer, release, waited=wait, sequence=sequence)
        try:
            yield permit
        finally:
            permit.end(sent=False)

    async def pause(self, seconds: float) -> None:
        """Hold every send for ``seconds`` (the account is throttled): this client's,
        and with a shared limit every client's of the account."""
        if backoff_is_instant():
            return
        self._pause_here(seconds)
        if not isinstance(self.limiter, SlidingWindow | AdaptiveRate):
            await self.limiter.pause(seconds)

    def _pause_here(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, anyio.current_time() + seconds)

    def pause_left(self) -> float:
        """The seconds the pause still runs; 0.0 when there is none."""
        return max(0.0, self._paused_until - anyio.current_time())
