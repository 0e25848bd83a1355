"""Pacing from the server's rate-limit headers.

Exotel's newer docs describe, per account, ``X-RateLimit-Remaining`` (requests
left in the window) and ``X-RateLimit-Reset`` (when the window resets, in epoch
seconds) on responses. When both come, :class:`HeaderPacer` spreads the
remaining requests evenly over the time to the reset instead of running into
429s; requests in flight count as spent, since the server may have counted
them already. When the headers do not come, or their window has passed,
nothing is held back. Nor is a send whose turn is more than a minute away (a
day's quota spent): it goes, and the server's 429 decides, whose
``Retry-After`` pauses the client or fails a lookup at once; a header never
makes a lookup hang. It works beside a configured ``RateLimit`` or the
adaptive rate (``_throttle``), whichever is stricter holding a send back.
"""

from __future__ import annotations

import math
import time
from typing import Final

import anyio
import attrs

__all__ = ["HeaderPacer", "RateWindow", "parse_rate_window"]

_EPOCH_FROM: Final = 1e9
"""A reset below this many seconds is a delay (as some servers send), not a time."""
_LONGEST_WINDOW: Final = 86_400.0
_SAME_WINDOW: Final = 0.5
"""Resets this close are one window's: whole seconds, read at different moments."""
_LONGEST_WAIT: Final = 60.0
"""The longest wait for a turn; a longer one is left to the server's 429."""
_GRACE: Final = 0.02
"""Seconds past the reset before a send counts on the new window: the reset is
read off another clock, and rounded."""


@attrs.frozen
class RateWindow:
    """What a response said of the account's window: ``remaining`` requests in it,
    and ``reset_in`` seconds until it resets (from when the response was read)."""

    remaining: int
    reset_in: float


def parse_rate_window(
    remaining: str | None, reset: str | None, *, now: float | None = None
) -> RateWindow | None:
    """The window the two headers describe, or None if either is missing or not
    plausible (not a count, not a time within a day). ``now`` is epoch seconds."""
    if remaining is None or reset is None:
        return None
    try:
        count = int(remaining.strip())
        moment = float(reset.strip())
    except ValueError:
        return None
    if not 0 <= count <= 1_000_000_000 or not math.isfinite(moment):
        return None
    wall = time.time() if now is None else now
    reset_in = moment - wall if moment >= _EPOCH_FROM else moment
    if not 0.0 <= reset_in <= _LONGEST_WINDOW:
        return None
    return RateWindow(count, reset_in)


class HeaderPacer:
    """Sends spaced so that the window's remaining requests last until its reset."""

    def __init__(self) -> None:
        self._reset_at = -math.inf  # on the event loop's clock
        self._remaining = 0
        self._in_flight = 0
        self._last_send = -math.inf
        self._change: anyio.Event | None = None
        self._lock = anyio.Lock()

    def observe(self, window: RateWindow) -> None:
        """Take in what a response said; a response from an earlier window is ignored."""
        now = anyio.current_time()
        reset_at = now + window.reset_in + _GRACE
        if now >= self._reset_at or reset_at > self._reset_at + _SAME_WINDOW:
            self._reset_at, self._remaining = reset_at, window.remaining
        elif reset_at >= self._reset_at - _SAME_WINDOW:
            # Answers come back out of order: the fewest left is the latest count.
            self._remaining = min(self._remaining, window.remaining)
        self._changed()

    async def acquire(self) -> bool:
        """Wait for this send's turn in the window; True when that meant waiting."""
        now = anyio.current_time()
        if not self._lock.locked() and now >= self._reset_at:
            self._in_flight += 1  # no window known: the common case costs nothing
            self._last_send = now
            return False
        waited = self._lock.locked()
        async with self._lock:
            while 0 < (delay := self._delay()) <= _LONGEST_WAIT:
                waited = True
                self._change = anyio.Event()
                with anyio.move_on_after(delay):
                    await self._change.wait()
            self._in_flight += 1
            self._last_send = anyio.current_time()
            return waited

    def release(self, *, sent: bool) -> None:
        """The exchange ended (or never began): it is no longer in flight."""
        self._in_flight -= 1
        self._changed()

    def _delay(self) -> float:
        """Seconds until the next send may go: 0 once the window is over; else the
        ``allowed`` sends still to come are spaced evenly between the last send
        and the reset, the last of them short of it."""
        now = anyio.current_time()
        left = self._reset_at - now
        if left <= 0:
            return 0.0
        allowed = self._remaining - self._in_flight
        if allowed <= 0:
            return left
        spacing = (self._reset_at - self._last_send) / (allowed + 1)
        return max(0.0, self._last_send + spacing - now)

    def _changed(self) -> None:
        if self._change is not None:
            self._change.set()
