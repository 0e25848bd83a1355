"""The concurrency slots and the rate limiters in isolation."""

from __future__ import annotations

import anyio
import pytest

from ccm_async import ConfigurationError, RateLimit
from ccm_async._throttle import AdaptiveRate, Slots

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


@pytest.mark.parametrize(
    "options", [{"requests": 0}, {"requests": 1.5}, {"requests": 10, "per": 0}]
)
def test_rate_limit_bounds(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RateLimit(**options)  # type: ignore[arg-type]
