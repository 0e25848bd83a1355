"""A rate limit shared through Redis by every client of one account and API host.

``RateLimit(storage="redis://...")`` makes each client take its permits from one
window kept in Redis, counted as the in-process :class:`SlidingWindow` counts:
a request is in the window from its permit until ``per`` seconds after its
exchange ends, since the server counts it when it arrives, which is some time
in between. (``limits`` and pyrate-limiter count a request when its permit is
given: four processes on two busy cores then let 24 arrivals into a window of
20, the process that took a permit being held up before it sent.) A sorted
set holds one entry per permit, scored by when it ends (in flight: the latest
it may end, :data:`_HOLD` on, so that a process that dies mid-request frees
its places); a script counts and adds in one step, on Redis's own clock, so
that hosts need not agree on the time.

A 429's ``Retry-After`` is kept in Redis too, and each permit looks at it
first: one process's pause holds back the others. Each permit also marks its
client as live; the clients live in the last :data:`_LIVE` seconds share the
limit when Redis fails.

Redis is reached from worker threads (redis-py's blocking client), the same on
asyncio and Trio, with :attr:`RateLimit.storage_timeout` on every socket
operation. An exchange's end is sent by the store's own thread, so that a
permit ends without waiting for Redis. When Redis fails or is slow, the client
falls back to its in-process window at its share of the rate (the limit
divided by the live clients it last heard of), logs one warning, and looks at
Redis again every :data:`_PROBE` seconds; its return is logged once too. A
lookup never fails because of Redis.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import attrs
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ccm_async._throttle import RateLimit, Release, SlidingWindow, redacted_url

__all__ = ["SharedStore", "SharedWindow"]

_T = TypeVar("_T")

logger: Final = logging.getLogger("ccm_async")

_HOLD: Final = 120_000
"""Milliseconds a permit counts as in flight at most (no exchange lasts that long)."""
_LIVE: Final = 10_000
"""Milliseconds a client counts among those sharing the limit after its last permit."""
_LONGEST_PAUSE: Final = 86_400_000
"""Milliseconds of a pause read from Redis at most (a day, as a Retry-After)."""
_MOST_UNSENT: Final = 100_000
"""Ends kept to send again while Redis fails (a place each, for _HOLD at most)."""
_PROBE: Final = 1.0
"""Seconds between looks at Redis while it is failing."""

# KEYS: the window, the pause, the live clients. ARGV: the permit, the limit, per
# and _HOLD (ms), the client, _LIVE (ms). Returns {verdict, ms, clients, now}:
# verdict 0 granted, 1 paused for ms, 2 full for ms at least.
_TAKE: Final = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local per, hold, live = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
redis.call('ZADD', KEYS[3], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - live)
redis.call('PEXPIRE', KEYS[3], 2 * live)
local clients = redis.call('ZCARD', KEYS[3])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0') - now
if paused > 0 then
    return {1, paused, clients, now}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], now + hold, ARGV[1])
    redis.call('PEXPIRE', KEYS[1], hold + per)
    return {0, 0, clients, now}
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
if oldest > now then
    -- All in flight: room comes no sooner than per after the first of them ends.
    return {2, math.min(per, 1000), clients, now}
end
return {2, oldest + per - now, clients, now}
"""

# KEYS: the pause. ARGV: its length (ms). A pause is never shortened.
_PAUSE: Final = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ends = now + tonumber(ARGV[1])
if ends > tonumber(redis.call('GET', KEYS[1]) or '0') then
    redis.call('SET', KEYS[1], ends, 'PX', tonumber(ARGV[1]))
end
return 0
"""


@attrs.frozen
class Verdict:
    """What Redis said to a permit: granted as ``permit`` (None: not granted), else
    to wait ``wait`` seconds, or paused for ``paused``; and the clients live now."""

    permit: Permit | None
    wait: float
    paused: float
    clients: int


@attrs.frozen
class Permit:
    """A permit in Redis's window: its entry, and Redis's time when it was given
    (in ms) as of ``asked``, the loop's time just before it was asked for."""

    entry: str
    redis_time: int
    asked: float


class SharedStore:
    """One client's link to Redis: the window, the pause and the live clients.

    :meth:`take` and :meth:`pause` block (a worker thread runs them); ends are
    sent by a thread of the store's own, started with the first.
    """

    def __init__(self, limit: RateLimit, *, key: str) -> None:
        url = limit.storage
        assert url is not None
        timeout = self.timeout = limit.storage_timeout
        self.shown_url = redacted_url(url)
        self._redis: redis.Redis = redis.Redis.from_url(  # pyright: ignore[reportUnknownMemberType]
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._take = self._redis.register_script(_TAKE)
        self._pause = self._redis.register_script(_PAUSE)
        self._limit = limit
        self._keys = [f"{key}:window", f"{key}:pause", f"{key}:clients"]
        self._client = uuid.uuid4().hex
        self._numbers = itertools.count()  # its next() is atomic: loops may share a store
        self._ends: queue.SimpleQueue[tuple[str, int | None] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._lock = threading.Lock()

    def take(self, asked: float) -> Verdict:
        """A permit from the shared window, unless the account is paused."""
        entry = f"{self._client}:{next(self._numbers)}"
        per = round(self._limit.per * 1000)
        reply: list[Any] = self._take(
            keys=self._keys,
            args=[entry, self._limit.requests, per, _HOLD, self._client, _LIVE],
        )
        verdict, milliseconds, clients, now = _checked(reply, per)
        if verdict == 0:
            return Verdict(Permit(entry, now, asked), wait=0.0, paused=0.0, clients=clients)
        seconds = max(1, milliseconds) / 1000
        if verdict == 1:
            return Verdict(None, wait=0.0, paused=seconds, clients=clients)
        return Verdict(None, wait=seconds, paused=0.0, clients=clients)

    def pause(self, seconds: float) -> None:
        """Pause every client of the account for ``seconds``."""
        self._pause(keys=self._keys[1:2], args=[max(1, round(seconds * 1000))])

    def end(self, permit: Permit, *, sent: bool) -> None:
        """The permit's exchange ended now (by the loop's clock), or never began."""
        ends = _redis_now(permit) if sent else None
        with self._lock:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_ends, daemon=True)
                self._sender.start()
        self._ends.put((permit.entry, ends))

    async def aclose(self) -> None:
        """Send the ends still to send, leave the live clients and close the
        connections, in a few socket timeouts at most, whatever Redis does."""
        with anyio.move_on_after(4 * self.timeout):
            # On failure the client ages out of the live ones, its permits out of the window.
            with contextlib.suppress(Exception):  # as in SharedWindow._call
                await anyio.to_thread.run_sync(self._close, abandon_on_cancel=True)

    def _close(self) -> None:
        if self._sender is not None:
            self._ends.put(None)
            self._sender.join()
        try:
            self._redis.zrem(self._keys[2], self._client)
        finally:
            self._redis.close()

    def _send_ends(self) -> None:
        # All that is queued, in one round trip; those Redis did not take are sent
        # again a second later (a permit left in flight holds a place for _HOLD). The
        # None that _close queues ends it.
        unsent: list[tuple[str, int | None]] = []
        while True:
            try:
                queued = [self._ends.get(timeout=_PROBE if unsent else None)]
            except queue.Empty:
                queued = []
            while not self._ends.empty():
                queued.append(self._ends.get())
            unsent += [end for end in queued if end is not None]
            if unsent:
                with contextlib.suppress(Exception):  # as in SharedWindow._call
                    self._send(unsent)
                    unsent = []
                del unsent[:-_MOST_UNSENT]
            if None in queued:
                return

    def _send(self, ends: list[tuple[str, int | None]]) -> None:
        pipe = self._redis.pipeline(transaction=False)  # pyright: ignore[reportUnknownMemberType]
        for entry, ended in ends:
            if ended is None:
                pipe.zrem(self._keys[0], entry)
            else:  # only if it is still there: one held past _HOLD has left
                pipe.zadd(self._keys[0], {entry: ended}, xx=True)
        pipe.execute()


class SharedWindow:
    """The limiter of a client whose limit is shared: Redis's window while Redis
    answers, its own at its share of the rate while it does not.

    Its own window counts every permit of the client, Redis's too, so that a
    fallback starts from what the client has just sent, not from nothing.
    """

    def __init__(
        self, limit: RateLimit, store: SharedStore, *, on_pause: Callable[[float], None]
    ) -> None:
        self._limit = limit
        self._store = store
        self._on_pause = on_pause
        self._timeout = 4 * store.timeout  # a script, a reconnection or two
        self._clients = 1  # until Redis has said: failing at the start, the whole rate
        self._own = SlidingWindow(limit)
        self._falling_back = False
        self._probe_at = 0.0
        self._lock = anyio.Lock()

    async def take(self) -> tuple[bool, Release]:
        """Wait for a permit: True when that meant waiting, and how to give it back."""
        waited = self._lock.locked()
        async with self._lock:
            while True:
                if self._falling_back and anyio.current_time() < self._probe_at:
                    waited = await self._own.acquire() or waited
                    return waited, self._own.release
                verdict = await self._ask()
                if verdict is None:
                    continue  # Redis failed: its own window gives the permit
                if verdict.paused:
                    self._on_pause(verdict.paused)  # the lookup sees it and waits it out
                    return waited, _nothing_to_end
                if (permit := verdict.permit) is not None:
                    return waited, self._granted(permit)
                waited = True
                await anyio.sleep(verdict.wait)

    def record(self, *, limited: bool) -> None:
        """A configured limit does not adapt."""

    async def pause(self, seconds: float) -> None:
        """Tell every client of the account to pause for ``seconds``."""
        if not self._falling_back:
            await self._call(lambda: self._store.pause(seconds))

    def _granted(self, permit: Permit) -> Release:
        self._own.count()

        def release(*, sent: bool) -> None:
            self._own.release(sent=sent)
            self._store.end(permit, sent=sent)

        return release

    async def _ask(self) -> Verdict | None:
        asked = anyio.current_time()
        verdict = await self._call(lambda: self._store.take(asked))
        if verdict is not None:
            self._clients = verdict.clients
            if self._falling_back:
                self._falling_back = False
                self._own.limit_to(self._limit)
                logger.info("rate limit: Redis at %s answers again", self._store.shown_url)
        return verdict

    async def _call(self, call: Callable[[], _T]) -> _T | None:
        # Redis's failure or slowness is never the lookup's: it becomes the fallback.
        # A call left behind (timed out, or its lookup cancelled) runs on in its
        # thread: a permit it gets then is given back, never left in the window.
        outcome = _Outcome(self._store)
        problem = f"no answer in {self._timeout:g}s"
        try:
            with anyio.move_on_after(self._timeout):
                try:
                    result = await anyio.to_thread.run_sync(
                        outcome.run, call, abandon_on_cancel=True
                    )
                    outcome.keep()
                    return result
                # Any: redis-py fails in ways of its own on a malformed reply (an
                # AttributeError on '*-5', seen), and each is Redis's failure.
                except Exception as exc:
                    problem = type(exc).__name__
        finally:
            outcome.leave()
        self._fall_back(problem)
        return None

    def _fall_back(self, problem: str) -> None:
        self._probe_at = anyio.current_time() + _PROBE
        if self._falling_back:
            return
        self._falling_back = True
        share = _share(self._limit, self._clients)
        self._own.limit_to(share)
        logger.warning(
            "rate limit: Redis at %s failed (%s); this client keeps to %d requests per "
            "%gs (its share of %d clients) until it answers",
            self._store.shown_url,
            problem,
            share.requests,
            share.per,
            self._clients,
        )


class _Outcome:
    """A Redis call's result, given back if its caller has left when it comes."""

    def __init__(self, store: SharedStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._left = False
        self._result: object = None

    def run(self, call: Callable[[], _T]) -> _T:
        result = call()
        with self._lock:
            self._result = result
            if self._left:
                self._give_back()
        return result

    def keep(self) -> None:
        """The caller has the result: it is the caller's to give back."""
        with self._lock:
            self._result = None

    def leave(self) -> None:
        """The caller goes: returned the result or not, it takes nothing more."""
        with self._lock:
            self._left = True
            self._give_back()

    def _give_back(self) -> None:
        result, self._result = self._result, None
        if isinstance(result, Verdict) and result.permit is not None:
            self._store.end(result.permit, sent=False)


def _checked(reply: object, per: int) -> tuple[int, int, int, int]:
    """The take script's reply, or ValueError: a Redis (or a proxy) that answers
    something else is failing, and bounds are kept on what it says."""
    if not isinstance(reply, list) or len(reply) != 4:  # pyright: ignore[reportUnknownArgumentType]
        raise ValueError("not the take script's reply")
    verdict, milliseconds, clients, now = (int(value) for value in reply)  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
    if verdict not in (0, 1, 2) or milliseconds < 0 or clients < 1:
        raise ValueError("not the take script's reply")
    longest = per if verdict == 2 else _LONGEST_PAUSE
    return verdict, min(milliseconds, longest), clients, now


def _redis_now(permit: Permit) -> int:
    """Now on Redis's clock, in ms: its time at ``permit``, plus the loop's time since
    the permit was asked for (a little later than now, never earlier)."""
    return permit.redis_time + round((anyio.current_time() - permit.asked) * 1000) + 1


def _nothing_to_end(*, sent: bool) -> None:
    """A permit the account's pause stopped: it was never Redis's."""


def _share(limit: RateLimit, clients: int) -> RateLimit:
    """One client's share of ``limit`` among ``clients``: together, never more."""
    requests = limit.requests // clients
    if requests:
        return RateLimit(requests=requests, per=limit.per)
    return RateLimit(requests=1, per=min(86_400.0, limit.per * clients / limit.requests))
