"""Pacing from the server's rate-limit headers.

Exotel's newer docs describe, per account, ``X-RateLimit-Remaining`` (requests
left in the window) and ``X-RateLimit-Reset`` (when the window resets, in epoch
seconds) on responses. When both come, :class:`HeaderPacer` spreads the
remaining requests evenly over the time to the reset instead of running into
429s. Sends are numbered: an answer's ``remaining`` counts from its own
request, so every send after that one is spent from it, answered or not.
Past the reset, until an answer tells of the new window, at most the window's
limit goes out. When the headers never came, nothing is held back. Nor is a
send whose turn is more than a minute away (a day's quota spent), and no send
waits over a minute in all: it goes, and the server's 429 decides, whose
``Retry-After`` pauses the client or fails a lookup at once; a header never
makes a lookup hang. It works beside a configured ``RateLimit`` or the adaptive
rate (``_throttle``), whichever is stricter holding a send back.
"""

from __future__ import annotations

import bisect
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
    ``reset_in`` seconds until it resets (from when the response was read), and
    ``limit`` (``X-RateLimit-Limit``), when it was said."""

    remaining: int
    reset_in: float
    limit: int | None = None


def parse_rate_window(
    remaining: str | None, reset: str | None, limit: str | None = None, *, now: float | None = None
) -> RateWindow | None:
    """The window the headers describe, or None if ``remaining`` or ``reset`` is
    missing or not plausible (not a count, not a time within a day) or the window
    is already over (a reset now or past: its count is of that window, answered
    late). ``now`` is epoch seconds; a ``limit`` that is not a count is left out."""
    if remaining is None or reset is None:
        return None
    count = _count(remaining)
    try:
        moment = float(reset.strip())
    except ValueError:
        return None
    if count is None or not math.isfinite(moment):
        return None
    wall = time.time() if now is None else now
    reset_in = moment - wall if moment >= _EPOCH_FROM else moment
    if not 0.0 < reset_in <= _LONGEST_WINDOW:
        return None
    most = _count(limit) if limit is not None else None
    return RateWindow(count, reset_in, most if most else None)


def _count(text: str) -> int | None:
    try:
        count = int(text.strip())
    except ValueError:
        return None
    return count if 0 <= count <= 1_000_000_000 else None


class HeaderPacer:
    """Sends spaced so that the window's remaining requests last until its reset.

    Each send has a number. An answer to send ``n`` saying ``remaining`` allows
    sends up to ``n + remaining``, less the sends before ``n`` still unanswered:
    they may have reached the server after ``n`` did, uncounted. The answer to
    the latest send is the best count: an earlier send's answer, coming back
    later, counted fewer of the sends after it. Past the reset, before an answer
    tells of the new window, at most the window's limit goes out
    (``X-RateLimit-Limit``, or one more than the most ever said to remain): a
    client with more lookups waiting than the limit would otherwise send them
    all into the new window at once. The latest send's answer describes the
    window, whatever an earlier one said, and an earlier send's answer of another
    window says nothing. Answers within ``_SAME_WINDOW`` of its reset are the
    same window's, where the latest send's count and the latest reset count. No
    send waits more than ``_LONGEST_WAIT`` in all.
    """

    def __init__(self) -> None:
        self._reset_at = -math.inf  # on the event loop's clock
        self._sends = 0  # numbered from 1
        self._unanswered: list[int] = []  # the numbers in flight, in order
        self._allowed_until = 0  # the window allows sends up to this number
        self._counted_by = 0  # the send whose answer gave that count
        self._limit = math.inf  # no window known: nothing to hold back
        self._sent_past_reset = 0
        self._last_send = -math.inf
        self._change: anyio.Event | None = None
        self._lock = anyio.Lock()

    def observe(self, window: RateWindow | None, *, sequence: int) -> None:
        """Take in what the answer to send number ``sequence`` said (None: no
        headers, or none plausible)."""
        now = anyio.current_time()
        if window is None:
            return
        reset_at = now + window.reset_in + _GRACE
        uncounted = bisect.bisect_left(self._unanswered, sequence)
        allowed_until = sequence + window.remaining - uncounted
        if now < self._reset_at and abs(reset_at - self._reset_at) <= _SAME_WINDOW:
            # The same window: the latest reset is the safe time (whole seconds,
            # other clocks), the latest send's answer the best count.
            self._reset_at = max(self._reset_at, reset_at)
            if sequence > self._counted_by:
                self._allowed_until, self._counted_by = allowed_until, sequence
        elif sequence >= self._counted_by:
            self._reset_at, self._allowed_until = reset_at, allowed_until
            self._counted_by = sequence
            self._sent_past_reset = 0
        # Else an earlier send's answer, slow to come back, of a window already
        # over: it would read the new window as the old one's last few requests.
        known = self._limit if math.isfinite(self._limit) else 0
        self._limit = window.limit or max(known, window.remaining + 1)
        self._changed()

    async def acquire(self) -> tuple[bool, int]:
        """Wait for this send's turn in the window: whether that meant waiting, and
        the send's number (for :meth:`observe`)."""
        now = anyio.current_time()
        if not self._lock.locked() and self._delay(now) == 0:
            return False, self._sent(now)  # no window known: the common case costs nothing
        waited = self._lock.locked()
        give_up_at = now + _LONGEST_WAIT
        # The minute bounds the queue for the lock too, not only the turn after it.
        with anyio.move_on_after(_LONGEST_WAIT):
            async with self._lock:
                while True:
                    now = anyio.current_time()
                    delay = min(self._delay(now), give_up_at - now)
                    if delay <= 0:
                        break
                    waited = True
                    self._change = anyio.Event()
                    with anyio.move_on_after(delay):
                        await self._change.wait()
                return waited, self._sent(anyio.current_time())
        return True, self._sent(anyio.current_time())

    def release(self, sequence: int) -> None:
        """Send ``sequence``'s exchange ended (or never began: its number stays
        spent until an answer counts afresh, on the safe side)."""
        index = bisect.bisect_left(self._unanswered, sequence)
        if index < len(self._unanswered) and self._unanswered[index] == sequence:
            del self._unanswered[index]
            self._changed()  # past the reset, one fewer that may land in the new window

    def _sent(self, now: float) -> int:
        self._sends += 1
        if math.isfinite(self._reset_at):  # once the headers came; before, nothing reads it
            self._unanswered.append(self._sends)  # numbers only grow: it stays in order
        self._last_send = now
        if now >= self._reset_at:
            self._sent_past_reset += 1
        return self._sends

    def _delay(self, now: float) -> float:
        """Seconds until the next send may go. Past the reset: none until the limit
        went out (counting the sends from before it still unanswered), then until an
        answer tells of the new window. Before it: the
        ``allowed`` sends still to come spaced evenly between the last send and the
        reset, the last of them short of it. A turn over ``_LONGEST_WAIT`` away is
        no turn to wait for: the send goes, and the server's 429 decides."""
        left = self._reset_at - now
        if left <= 0:
            # Sends from before the reset still unanswered may land in the new window.
            before = self._sends - self._sent_past_reset
            landing = bisect.bisect_right(self._unanswered, before) + self._sent_past_reset
            return _LONGEST_WAIT if landing >= self._limit else 0.0
        allowed = self._allowed_until - self._sends
        if allowed <= 0:
            delay = left
        else:
            spacing = (self._reset_at - self._last_send) / (allowed + 1)
            delay = max(0.0, self._last_send + spacing - now)
        return delay if delay <= _LONGEST_WAIT else 0.0

    def _changed(self) -> None:
        if self._change is not None:
            self._change.set()
