"""The no-loss soak: many SIDs over a socket through a mix of failures, none lost.

``CCM_SOAK_SIDS`` scales it (2,000 in the test suite; ``uv run nox -s soak`` runs
20,000, and CI runs that too); ``pytest -s`` prints what it measured.
"""

from __future__ import annotations

import collections
import os
import time

import anyio
import pytest

from ccm_async import AsyncCcmClient, CallNotFoundError, RetryPolicy
from ccm_async.testing import FakeCcm, Fault

from .conftest import CountingBackend

pytestmark = pytest.mark.anyio

SOAK_SIDS = int(os.environ.get("CCM_SOAK_SIDS", "2000"))
CONCURRENCY = 256


def soaking_fake(policy: RetryPolicy) -> FakeCcm:
    """5% 500s, 1% 429s, 1% dropped connections, 1% of SIDs not found, random latency.

    No SID fails more than ``attempts - 1`` times, so every outcome is determined.
    """
    fake = FakeCcm(generate=True, missing_rate=0.01, latency=(0.0, 0.02), seed=7, log_size=0)
    cap = policy.attempts - 1
    fake.fail_randomly(Fault.server_error(), rate=0.05, max_per_sid=cap)
    fake.fail_randomly(Fault.rate_limited(), rate=0.01, max_per_sid=cap)
    fake.fail_randomly(Fault.disconnect(), rate=0.01, max_per_sid=cap)
    return fake


async def test_no_sid_is_lost_or_repeated(own_pool_connections: CountingBackend) -> None:
    connections = own_pool_connections
    policy = RetryPolicy()
    fake = soaking_fake(policy)
    sids = [f"soak{i:07d}" for i in range(SOAK_SIDS)]
    tasks_before = len(anyio.get_running_tasks())
    seen: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    started = time.perf_counter()
    async with fake.serve() as base_url:
        client = AsyncCcmClient(
            **fake.credentials, base_url=base_url, retry=policy, max_concurrency=CONCURRENCY
        )
        async with client, client.stream_calls(iter(sids), concurrency=CONCURRENCY) as results:
            async for result in results:
                sid = result.call_sid
                seen[sid] += 1
                expected_found = fake.has_call(sid)
                ok = result.ok and result.call is not None and result.call.call_sid == sid
                not_found = isinstance(result.error, CallNotFoundError)
                if not (ok if expected_found else not_found):
                    wrong.append(f"{sid}: {result.error!r}")
    elapsed = time.perf_counter() - started
    stats = client.stats
    print(
        f"\nsoak: {SOAK_SIDS} SIDs in {elapsed:.1f}s ({SOAK_SIDS / elapsed:.0f}/s), "
        f"{stats.requests} requests, {stats.retries} retries, "
        f"responses {dict(sorted(stats.responses.items()))}, "
        f"{stats.transport_errors} transport errors, {stats.budget_denials} budget denials, "
        f"{stats.rate_limit_waits} rate-limit waits, {connections.max_open} connections "
        f"and {fake.max_in_flight} requests in flight at most"
    )
    assert wrong == []
    assert len(seen) == SOAK_SIDS
    assert set(seen.values()) == {1}
    assert sum(not fake.has_call(sid) for sid in sids) > 0
    assert stats.retries > 0
    assert stats.budget_denials == 0
    assert connections.max_open <= CONCURRENCY
    assert connections.open == 0
    assert len(anyio.get_running_tasks()) == tasks_before
