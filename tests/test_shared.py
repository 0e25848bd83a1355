"""The rate limit shared through Redis, against a real redis-server.

Four processes, each with a client of its own on one account, against a FakeCcm
that answers 429 past exactly the limit and records when each request arrived:
the window holds at the server, and holds when Redis stops halfway. In-process:
the shared pause, Redis's failures (down, silent, answering nonsense, a wrong
password) falling back to the client's share, and the settings.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ccm_async import CallDetails, CallState, ConfigurationError, RateLimit
from ccm_async._shared import _share
from ccm_async._throttle import redacted_url
from ccm_async.testing import FakeCcm, Fault

from .redis_support import RedisServer

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent


def worker_sids(first: int, count: int) -> list[str]:
    return [f"c{index:031d}" for index in range(first, first + count)]


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The tests' Redis, empty, running (a test may stop it)."""
    redis_server.flush()
    yield redis_server.url
    redis_server.start_if_stopped()


def served_fake(count: int, limit: RateLimit, **options: Any) -> FakeCcm:
    fake = FakeCcm(
        rate_limit=limit, api_key="k", api_token="t", account_sid="fake-account", **options
    )
    for sid in worker_sids(0, count):
        fake.add_call(CallDetails(call_sid=sid, call_state=CallState.TERMINAL))
    return fake


async def run_workers(
    base_url: str, storage: str, backend: str, *, processes: int, each: int, limit: RateLimit
) -> list[dict[str, Any]]:
    """``processes`` clients in processes of their own, ``each`` SIDs apiece."""
    outcomes: list[dict[str, Any]] = []

    async def worker(first: int) -> None:
        arguments = [base_url, storage, backend, first, each, limit.requests, limit.per]
        done = await anyio.run_process(
            [sys.executable, "-m", "tests.shared_worker", *map(str, arguments)],
            cwd=ROOT,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        outcomes.append(json.loads(done.stdout))

    async with anyio.create_task_group() as group:
        for index in range(processes):
            group.start_soon(worker, index * each)
    return outcomes


def most_in_a_window(times: list[float], per: float) -> int:
    """The most of ``times`` in any window of ``per`` seconds."""
    times = sorted(times)
    most, start = 0, 0
    for end, time in enumerate(times):
        while times[start] + per <= time:
            start += 1
        most = max(most, end - start + 1)
    return most


LIMIT = RateLimit(requests=20, per=1.0)


async def test_four_processes_keep_to_one_window(
    redis_url: str, anyio_backend: str
) -> None:
    fake = served_fake(2000, LIMIT)
    async with fake.serve() as base_url:
        outcomes = await run_workers(
            base_url, redis_url, anyio_backend, processes=4, each=500, limit=LIMIT
        )
    assert [outcome["ok"] for outcome in outcomes] == [500] * 4
    assert all(outcome["redis_logs"] == [] for outcome in outcomes)
    statuses = [request.status for request in fake.requests]
    assert statuses == [200] * 2000  # not one 429
    arrivals = [request.time for request in fake.requests]
    assert most_in_a_window(arrivals, 1.0) <= 20
    # At least 90% of the limit used, from the first arrival to the last.
    rate = (len(arrivals) - 20) / (max(arrivals) - min(arrivals))
    assert rate >= 0.9 * 20


async def test_redis_stopped_halfway_costs_no_lookup(
    redis_server: RedisServer, redis_url: str, anyio_backend: str
) -> None:
    fake = served_fake(2000, LIMIT, rate_limit_retry_after=True)

    async def outage() -> None:
        with anyio.fail_after(120):  # a guard
            while fake.request_count < 1000:  # noqa: ASYNC110 - the server's thread counts
                await anyio.sleep(0.05)
        redis_server.stop()
        await anyio.sleep(3)
        redis_server.start()

    async with fake.serve() as base_url, anyio.create_task_group() as group:
        group.start_soon(outage)
        outcomes = await run_workers(
            base_url, redis_url, anyio_backend, processes=4, each=500, limit=LIMIT
        )
    assert [outcome["ok"] for outcome in outcomes] == [500] * 4
    for outcome in outcomes:
        logs = outcome["redis_logs"]
        assert len(logs) == 2, logs
        assert "failed (ConnectionError)" in logs[0]
        assert "keeps to 5 requests per 1s (its share of 4 clients)" in logs[0]
        assert "answers again" in logs[1]
