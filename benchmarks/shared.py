"""The shared rate limit's cost: lookups with the window in Redis (a redis-server
of its own on loopback) against the same lookups with the in-process window.

The API is FakeCcm in-process, so that the time is the client's; the limit is
never reached, so that nothing waits: what is left is the permit's cost. Each
figure is the median of five runs.

    uv run python -m benchmarks.shared [--lookups 5000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from ccm_async import CallDetails, CallState, RateLimit
from ccm_async.testing import FakeCcm
from tests.redis_support import RedisServer

RUNS = 5


async def lookups_per_second(limit: RateLimit, lookups: int, concurrency: int) -> float:
    fake = FakeCcm()
    sids = [f"c{index:031d}" for index in range(lookups)]
    for sid in sids:
        fake.add_call(CallDetails(call_sid=sid, call_state=CallState.TERMINAL))
    async with fake.client(rate_limit=limit, max_concurrency=concurrency) as ccm:
        await ccm.get_calls(sids[:100])  # warm: connections, scripts
        started = time.perf_counter()
        results = await ccm.get_calls(sids, concurrency=concurrency)
        elapsed = time.perf_counter() - started
    assert all(result.ok for result in results)
    return lookups / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--lookups", type=int, default=5000)
    args = parser.parse_args()
    executable = shutil.which("redis-server")
    assert executable, "redis-server is not installed (Debian's package redis-server)"
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(executable, Path(directory))
        server.start()
        try:
            windows = {
                "in-process": RateLimit(requests=1_000_000, per=60.0),
                "Redis": RateLimit(requests=1_000_000, per=60.0, storage=server.url),
            }
            print(f"{args.lookups:,} lookups, median of {RUNS} runs")
            for concurrency in (1, 50):
                rates = {}
                for name, limit in windows.items():
                    runs = [
                        anyio.run(lookups_per_second, limit, args.lookups, concurrency)
                        for _ in range(RUNS)
                    ]
                    rates[name] = statistics.median(runs)
                cost = (1 / rates["Redis"] - 1 / rates["in-process"]) * 1e6
                print(
                    f"{concurrency:>3} at once: in-process {rates['in-process']:,.0f}/s, "
                    f"Redis {rates['Redis']:,.0f}/s: {cost:,.0f} µs more per lookup"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
