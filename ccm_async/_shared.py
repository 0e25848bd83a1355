"""A rate limit shared through Redis by every client of one account and API host.

``RateLimit(storage="redis://...")`` makes each client draw its permits from one
sliding window kept in Redis by pyrate-limiter's Redis bucket, which checks and
records a request in one script, and says how long to wait when the window is
full. Chosen over ``limits`` because its windows are in milliseconds: the
window is widened by :data:`_MARGIN` of ``per`` (at most a second), since Redis
counts a request when its permit is given and the server when it arrives, and
``limits`` counts only in whole seconds.

A 429's ``Retry-After`` is kept in Redis too: each permit looks at it first,
so one process's pause holds back the others.

Redis is reached from a worker thread (redis-py's blocking client), the same on
asyncio and Trio, with :attr:`RateLimit.storage_timeout` on every socket
operation. When it fails or is slow, the client falls back to its in-process
window at its share of the rate (the limit divided by the clients seen in
Redis in the last :data:`_LIVE` seconds), logs one warning, and looks at Redis
again every :data:`_PROBE` seconds; its return is logged once too. A lookup
never fails because of Redis.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Final

import anyio
import anyio.to_thread
import attrs
import redis
from pyrate_limiter import Rate, RateItem
from pyrate_limiter.buckets.redis_bucket import RedisBucket
from redis.backoff import NoBackoff
from redis.retry import Retry

from ccm_async._throttle import RateLimit, SlidingWindow

__all__ = ["SharedStore", "SharedWindow"]

logger: Final = logging.getLogger("ccm_async")

_MARGIN: Final = 0.05
"""The window's widening, as a share of ``per`` (at most a second)."""
_LIVE: Final = 10.0
"""Seconds a client counts among the clients sharing a limit after its last permit."""
_PROBE: Final = 1.0
"""Seconds between looks at Redis while it is failing."""
_LEAK: Final = 1.0
"""Seconds between removals of the window's entries that have left it."""


@attrs.frozen
class Verdict:
    """What Redis said to a permit: ``wait`` seconds (0.0: granted), or a pause of
    ``paused`` seconds; ``clients``, the clients sharing the limit now."""

    wait: float
    paused: float
    clients: int


class SharedStore:
    """One client's link to Redis: its window, its pause and its presence.

    Its methods block (a worker thread runs them); a lock keeps the bucket's
    state to one caller at a time, should the client run on two event loops.
    """

    def __init__(self, limit: RateLimit, *, key: str) -> None:
        url = limit.storage
        assert url is not None
        timeout = limit.storage_timeout
        self.shown_url = redacted_url(url)
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        per_ms = round(limit.per * 1000)
        self._rate = Rate(limit.requests, per_ms + round(min(1000, per_ms * _MARGIN)))
        self._window_key = f"{key}:window"
        self._pause_key = f"{key}:pause"
        self._clients_key = f"{key}:clients"
        self._member = uuid.uuid4().hex
        self._bucket: RedisBucket | None = None
        self._leak_at = 0.0
        self._lock = threading.Lock()

    def take(self) -> Verdict:
        """A permit from the shared window, unless the account is paused."""
        with self._lock:
            now = _now_ms()
            paused, clients = self._look(now)
            if paused > 0:
                return Verdict(wait=0.0, paused=paused, clients=clients)
            bucket = self._bucket or self._load()
            decision = bucket.put_decision(RateItem("request", now))  # type: ignore[no-untyped-call]
            if now >= self._leak_at:
                self._leak_at = now + _LEAK * 1000
                bucket.leak(now)
            if decision.allowed:
                return Verdict(wait=0.0, paused=0.0, clients=clients)
            wait_ms = decision.retry_after_ms
            return Verdict(wait=max(1, wait_ms or 1) / 1000, paused=0.0, clients=clients)

    def pause(self, seconds: float) -> None:
        """Pause every client of the account for ``seconds`` (never shortening a pause)."""
        until = _now_ms() + round(seconds * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._pause_key, {"until": until}, gt=True)
        pipe.pexpireat(self._pause_key, until, gt=True)
        pipe.execute()

    def close(self) -> None:
        """Leave the clients sharing the limit, and close the connections."""
        try:
            self._redis.zrem(self._clients_key, self._member)
        finally:
            self._redis.close()

    def _look(self, now: int) -> tuple[float, int]:
        # Present this client, count the live ones, and read the pause: one round trip.
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._clients_key, {self._member: now})
        pipe.zremrangebyscore(self._clients_key, 0, now - _LIVE * 1000)
        pipe.zcard(self._clients_key)
        pipe.pexpire(self._clients_key, round(_LIVE * 2000))
        pipe.pexpire(self._window_key, self._rate.interval * 2)
        pipe.zscore(self._pause_key, "until")
        _, _, clients, _, _, until = pipe.execute()
        paused = (float(until) - now) / 1000 if until is not None else 0.0
        return paused, max(1, int(clients))

    def _load(self) -> RedisBucket:
        bucket = RedisBucket.init([self._rate], self._redis, self._window_key)
        assert isinstance(bucket, RedisBucket)
        self._bucket = bucket
        return bucket


class SharedWindow:
    """The limiter of a client whose limit is shared: Redis's window while Redis
    answers, its own at its share of the rate while it does not.

    Every permit counts in :attr:`_in_flight`; a fallback window starts with
    the permits then in flight, and every permit is given back to it while it
    lasts, so that its count stays right whichever window gave the permit.
    """

    def __init__(
        self, limit: RateLimit, store: SharedStore, *, on_pause: Callable[[float], None]
    ) -> None:
        self._limit = limit
        self._store = store
        self._on_pause = on_pause
        self._timeout = 4 * limit.storage_timeout  # a few socket operations
        self._clients = 1  # until Redis has said: a failing Redis at start, the whole rate
        self._in_flight = 0
        self._fallback: SlidingWindow | None = None
        self._probe_at = 0.0
        self._lock = anyio.Lock()

    async def acquire(self) -> bool:
        """Wait for a permit; True when that meant waiting."""
        waited = self._lock.locked()
        async with self._lock:
            while True:
                if self._fallback is not None and anyio.current_time() < self._probe_at:
                    waited = await self._fallback.acquire() or waited
                    break
                verdict = await self._ask()
                if verdict is None:
                    continue  # Redis failed: the fallback gives the permit
                if verdict.paused > 0:
                    self._on_pause(verdict.paused)  # the lookup sees it and waits it out
                    break
                if not verdict.wait:
                    break
                waited = True
                await anyio.sleep(verdict.wait)
            self._in_flight += 1
            return waited

    def release(self, *, sent: bool) -> None:
        """The permit's exchange ended (or never began)."""
        self._in_flight -= 1
        if self._fallback is not None:
            self._fallback.release(sent=sent)

    def record(self, *, limited: bool) -> None:
        """A configured limit does not adapt."""

    async def pause(self, seconds: float) -> None:
        """Tell every client of the account to pause for ``seconds``."""
        if self._fallback is None:
            await self._call(lambda: self._store.pause(seconds))

    async def _ask(self) -> Verdict | None:
        verdict = await self._call(self._store.take)
        if verdict is not None:
            self._clients = verdict.clients
            if self._fallback is not None:
                self._fallback = None
                logger.info("rate limit: Redis at %s answers again", self._store.shown_url)
        return verdict

    async def _call[T](self, call: Callable[[], T]) -> T | None:
        # Redis's failure or slowness is never the lookup's: it becomes the fallback.
        problem: str
        with anyio.move_on_after(self._timeout) as scope:
            try:
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
            except (redis.RedisError, OSError) as exc:
                problem = type(exc).__name__
        if scope.cancelled_caught:
            problem = f"no answer in {self._timeout:g}s"
        self._fall_back(problem)
        return None

    def _fall_back(self, problem: str) -> None:
        self._probe_at = anyio.current_time() + _PROBE
        if self._fallback is not None:
            return
        share = _share(self._limit, self._clients)
        self._fallback = SlidingWindow(share, in_flight=self._in_flight)
        logger.warning(
            "rate limit: Redis at %s failed (%s); this client keeps to %d requests per "
            "%gs (its share of %d clients) until it answers",
            self._store.shown_url,
            problem,
            share.requests,
            share.per,
            self._clients,
        )


def _share(limit: RateLimit, clients: int) -> RateLimit:
    """One client's share of ``limit`` among ``clients``: together, never more."""
    requests = limit.requests // clients
    if requests:
        return RateLimit(requests=requests, per=limit.per)
    return RateLimit(requests=1, per=min(86_400.0, limit.per * clients / limit.requests))


def redacted_url(url: str) -> str:
    """``url`` without its password (for messages and reprs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _now_ms() -> int:
    # Wall time, the same on every host (with synchronised clocks): Redis's entries
    # are compared across processes.
    return time.time_ns() // 1_000_000
