"""The concurrency slots and the rate limiters: in isolation, and as a server counts
a client's requests (``pytest -s`` prints what the client-level tests measured)."""

from __future__ import annotations

import itertools
import random

import anyio
import httpx
import pytest

from ccm_async import AsyncCcmClient, ConfigurationError, RateLimit, RetryPolicy
from ccm_async._throttle import AdaptiveRate, Slots
from ccm_async.testing import FakeCcm

from .conftest import SlowConnectBackend, most_in_any_window

pytestmark = pytest.mark.anyio


async def test_retries_queue_ahead_of_first_attempts() -> None:
    slots = Slots(1)
    order: list[str] = []
    release = anyio.Event()

    async def holder() -> None:
        async with slots.hold(retry=False):
            await release.wait()

    async def waiter(name: str, retry: bool) -> None:
        async with slots.hold(retry=retry):
            order.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(waiter, "first-1", False)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(waiter, "first-2", False)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(waiter, "retry", True)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert order == ["retry", "first-1", "first-2"]


async def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    slots = Slots(1)
    release = anyio.Event()
    served: list[str] = []

    async def holder() -> None:
        async with slots.hold(retry=False):
            await release.wait()

    async def waiter(name: str) -> None:
        async with slots.hold(retry=False):
            served.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as doomed:
            async with anyio.create_task_group() as inner:
                inner.start_soon(waiter, "cancelled")
                await anyio.wait_all_tasks_blocked()
                group.start_soon(waiter, "next")
                await anyio.wait_all_tasks_blocked()
                doomed.cancel()
        release.set()
    assert served == ["next"]
    # The slot is free again: a new holder gets it at once.
    with anyio.fail_after(1):
        async with slots.hold(retry=False):
            pass


def feed(rate: AdaptiveRate, count: int, *, limited: bool) -> float | None:
    for _ in range(count):
        rate.record(limited=limited)
    return rate.rate


@pytest.mark.virtual_clock
async def test_adaptive_rate_ignores_a_sprinkle_and_reacts_to_a_flood() -> None:
    rate = AdaptiveRate()
    for i in range(1000):
        rate.record(limited=i % 100 == 0)
    assert rate.rate is None
    feed(rate, 30, limited=False)
    first = feed(rate, 10, limited=True)
    assert first is not None
    assert feed(rate, 10, limited=True) == first  # held: no second decrease at once
    recovered = feed(rate, 50, limited=False)
    assert recovered is not None
    assert recovered > first
    # Sends are paced: one interval at the lowered rate, then one at the recovered rate.
    start = anyio.current_time()
    assert await rate.acquire()
    assert await rate.acquire()
    assert anyio.current_time() - start == pytest.approx(1 / first + 1 / recovered)


@pytest.mark.virtual_clock
async def test_adaptive_rate_decreases_from_what_the_server_accepted() -> None:
    # 400 responses a second: a second of successes, then a 429 in every three,
    # until the 10th of them lowers the rate.
    rate = AdaptiveRate()
    responses = 0
    while rate.rate is None:
        await anyio.sleep(1 / 400)
        rate.record(limited=responses >= 400 and responses % 3 == 0)
        responses += 1
    assert responses == 430
    accepted_last_second = 400 - 9  # the responses of the last second, less nine 429s
    assert rate.rate == pytest.approx(0.7 * accepted_last_second, rel=0.01)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"requests": 0}, "requests"),
        ({"requests": 1.5}, "requests"),
        ({"requests": 10, "per": 0}, "per"),
        ({"requests": True}, "requests"),
        ({"requests": 10, "per": True}, "per"),
        ({"requests": 10, "per": float("nan")}, "per"),
        ({"requests": 10, "per": float("inf")}, "per"),
    ],
)
def test_rate_limit_bounds(options: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^RateLimit\.{named} must be"):
        RateLimit(**options)  # type: ignore[arg-type]


async def test_rate_limit_holds_at_the_server_over_slow_new_connections(
    slow_connections: SlowConnectBackend,
) -> None:
    # A cold pool: the first window's requests wait 30 ms for their connections,
    # the next window's go out at once on those connections, kept alive.
    limit = RateLimit(requests=20, per=0.5)
    fake = FakeCcm(generate=True)
    async with (
        fake.serve() as base_url,
        AsyncCcmClient(
            **fake.credentials, base_url=base_url, max_concurrency=64, rate_limit=limit
        ) as client,
    ):
        results = await client.get_calls([f"s{i}" for i in range(100)])
    assert all(result.ok for result in results)
    arrivals = [request.time for request in fake.requests]
    assert len(arrivals) == 100
    fullest = most_in_any_window(arrivals, per=limit.per)
    print(f"\nover a socket: at most {fullest} arrivals in a window of {limit.requests}")
    assert fullest <= limit.requests


class LateArrivals(httpx.AsyncBaseTransport):
    """Each request reaches the app 0-30 ms after it was sent (a new connection, a
    slow network); the app answers 5 ms after that."""

    def __init__(self, app: FakeCcm) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._random = random.Random(4)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep(self._random.uniform(0.0, 0.03))
        return await self._inner.handle_async_request(request)


@pytest.mark.virtual_clock
async def test_rate_limit_is_used_in_full_and_never_exceeded_at_the_server() -> None:
    limit = RateLimit(requests=100, per=1.0)
    fake = FakeCcm(generate=True, latency=0.005)
    async with (
        httpx.AsyncClient(transport=LateArrivals(fake)) as http_client,
        fake.client(http_client=http_client, max_concurrency=128, rate_limit=limit) as client,
    ):
        results = await client.get_calls([f"s{i}" for i in range(2000)])
    assert all(result.ok for result in results)
    arrivals = [request.time for request in fake.requests]
    fullest = most_in_any_window(arrivals, per=limit.per)
    # Past the first window's burst, the arrivals keep up with the configured rate.
    rate = (len(arrivals) - limit.requests) / (max(arrivals) - min(arrivals))
    print(f"\nat most {fullest} arrivals in a window of {limit.requests}; {rate:.1f}/s of 100/s")
    assert fullest <= limit.requests
    assert rate >= 0.95 * limit.requests / limit.per


@pytest.mark.virtual_clock
@pytest.mark.parametrize("limit", [150, 400])
async def test_adaptive_rate_converges_on_the_server_limit(limit: int) -> None:
    # No RateLimit given: the client learns the server's from 429s (no Retry-After).
    fake = FakeCcm(
        generate=True,
        latency=(0.02, 0.06),
        rate_limit=RateLimit(requests=limit, per=1.0),
        log_size=100_000,
    )
    policy = RetryPolicy(attempts=10, timeout=120, budget_tokens=100_000)
    start = anyio.current_time()
    async with fake.client(max_concurrency=128, retry=policy) as client:
        with anyio.move_on_after(15):
            sids = (f"s{i}" for i in itertools.count())
            async with client.stream_calls(sids) as results:
                async for _ in results:
                    pass
    statuses = [request.status for request in fake.requests if request.time < start + 15]
    ok_per_second = statuses.count(200) / 15
    limited_share = statuses.count(429) / len(statuses)
    print(f"\nagainst {limit}/s: {ok_per_second:.0f} ok/s, {limited_share:.1%} answered 429")
    assert ok_per_second >= 0.8 * limit
    assert limited_share <= 0.10
