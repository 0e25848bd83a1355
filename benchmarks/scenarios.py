"""Benchmark scenarios that run inside one process: memory, request economy, pacing by the
rate-limit headers, import time, client construction, the telemetry's cost.

    python benchmarks/scenarios.py memory --count 1000000 --base URL
    python benchmarks/scenarios.py economy [--quick]
    python benchmarks/scenarios.py pacing [--quick]
    python benchmarks/scenarios.py import-time    # and ccm-async --version
    python benchmarks/scenarios.py telemetry --base URL [--quick]

Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

from ccm_async import AsyncCcmClient, CcmError, RateLimit
from ccm_async.testing import FakeCcm, Fault, instant_backoff


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def memory(base: str, count: int) -> dict[str, object]:
    """Stream ``count`` SIDs from a generator through stream_calls; RSS along the way."""
    checkpoints: dict[int, float] = {}
    marks = {count // 10, count}
    done = ok = 0
    async with AsyncCcmClient(
        api_key="k", api_token="t", account_sid="bench-account", base_url=base
    ) as client:
        sids = (f"{i:032x}" for i in range(count))
        async with client.stream_calls(sids) as results:
            async for result in results:
                done += 1
                ok += result.ok
                if done in marks:
                    checkpoints[done] = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first, last = checkpoints[count // 10], checkpoints[count]
    return {
        "scenario": "memory",
        "count": count,
        "ok": ok,
        "rss_mb_at_10pct": round(first, 1),
        "rss_mb_at_end": round(last, 1),
        "rss_growth_mb": round(last - first, 1),
        "peak_rss_mb": round(peak, 1),
    }


async def fetch_all(client: AsyncCcmClient, sids: list[str]) -> int:
    """get_call for every SID in a task group; returns the failures."""
    failures = 0

    async def one(sid: str) -> None:
        nonlocal failures
        try:
            await client.get_call(sid)
        except CcmError:
            failures += 1

    async with asyncio.TaskGroup() as group:
        for sid in sids:
            group.create_task(one(sid))
    return failures


async def economy(quick: bool) -> dict[str, object]:
    """Requests sent under a total outage, with 5% failures, and against a rate limit."""
    outage_sids, flaky_sids, limited_sids = (100, 500, 30) if quick else (1000, 10_000, 600)
    report: dict[str, object] = {"scenario": "economy"}

    outage = FakeCcm(generate=True)
    outage.fail_randomly(Fault.server_error(), rate=1.0)
    async with (
        outage.serve() as base_url,
        AsyncCcmClient(**outage.credentials, base_url=base_url) as client,
    ):
        with instant_backoff():
            failed = await fetch_all(client, [f"o{i}" for i in range(outage_sids)])
    report["outage"] = {"sids": outage_sids, "failed": failed, "requests": outage.request_count}

    flaky = FakeCcm(generate=True, seed=9)
    flaky.fail_randomly(Fault.server_error(), rate=0.05, max_per_sid=3)
    async with (
        flaky.serve() as base_url,
        AsyncCcmClient(**flaky.credentials, base_url=base_url) as client,
    ):
        with instant_backoff():
            failed = await fetch_all(client, [f"f{i}" for i in range(flaky_sids)])
        denied = client.stats.budget_denials
    report["five_percent"] = {
        "sids": flaky_sids,
        "failed": failed,
        "requests_per_sid": round(flaky.request_count / flaky_sids, 4),
        "budget_denials": denied,
    }

    limited = FakeCcm(generate=True, rate_limit=RateLimit(requests=20, per=1.0))
    async with (
        limited.serve() as base_url,
        AsyncCcmClient(**limited.credentials, base_url=base_url) as client,
    ):
        started = time.monotonic()
        failed = await fetch_all(client, [f"r{i}" for i in range(limited_sids)])
        elapsed = time.monotonic() - started
    statuses = [request.status for request in limited.requests]
    report["rate_limited"] = {
        "sids": limited_sids,
        "failed": failed,
        "requests": limited.request_count,
        "share_429": round(statuses.count(429) / len(statuses), 4),
        "lookups_per_s": round(limited_sids / elapsed, 1),
    }
    return report


async def paced_fetch(
    limit: RateLimit, sids: int, concurrency: int, latency: float
) -> dict[str, object]:
    """A bulk fetch against a fixed window that the fake announces in X-RateLimit-* headers."""
    fake = FakeCcm(generate=True, rate_limit=limit, rate_limit_headers=True, latency=latency)
    async with (
        fake.serve() as base_url,
        AsyncCcmClient(
            **fake.credentials, base_url=base_url, max_concurrency=concurrency
        ) as client,
    ):
        # The first lookup loads the CA bundle and opens a connection: no part of the pacing.
        await client.get_call("warm-up")
        failed = await fetch_all(client, [f"p{i}" for i in range(sids)])
    windows = fake.statuses_by_window()
    admitted = [sum(status != 429 for status in window) for window in windows]
    # The first window holds the warm-up's own latency; the last is cut short.
    later = admitted[1:-1]
    return {
        "concurrency": concurrency,
        "latency_s": latency,
        "failed": failed,
        "windows": len(windows),
        "admitted_per_window": admitted,
        "first_window_429s": windows[0].count(429),
        "later_429s": sum(window.count(429) for window in windows[1:]),
        "first_window_share": round(admitted[0] / limit.requests, 3),
        "lowest_later_share": round(min(later) / limit.requests, 3) if later else None,
    }


async def pacing(quick: bool) -> dict[str, object]:
    """Exotel's 200 a minute, 30 times faster, in real time: the share of each window used
    and the 429s after the first (the goal: none, and at least 90% of every full window
    after the first, in which the client knows nothing until the first answer)."""
    limit = RateLimit(requests=50, per=0.5) if quick else RateLimit(requests=200, per=2.0)
    sids = 150 if quick else 1000
    return {
        "scenario": "pacing",
        "limit": f"{limit.requests} per {limit.per} s",
        "sids": sids,
        "runs": [
            await paced_fetch(limit, sids, concurrency=32, latency=0.0),
            # More lookups at once than the limit, each answer slow.
            await paced_fetch(limit, sids, concurrency=400, latency=limit.per * 0.4),
        ],
    }


def import_time(runs: int) -> dict[str, object]:
    """Median wall time of a fresh interpreter importing each module, less a bare one; and
    of ``ccm-async --version`` whole, as its user waits for it (None without the cli extra).

    ``import ccm_async`` alone imports the public names on first use: the client's
    import is timed.
    """

    def median_seconds(*args: str) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    bare = median_seconds("-c", "pass")
    httpx_ms = (median_seconds("-c", "import httpx") - bare) * 1000
    ccm_ms = (median_seconds("-c", "from ccm_async import AsyncCcmClient") - bare) * 1000
    has_cli = all(importlib.util.find_spec(name) for name in ("click", "rich"))
    cli_ms = median_seconds("-m", "ccm_async", "--version") * 1000 if has_cli else None
    return {
        "scenario": "import_time",
        "httpx_ms": round(httpx_ms, 1),
        "ccm_async_ms": round(ccm_ms, 1),
        "ratio": round(ccm_ms / httpx_ms, 2),
        "cli_version_ms": None if cli_ms is None else round(cli_ms, 1),
    }


async def construction(base: str, count: int) -> dict[str, object]:
    """A multi-tenant backend's clients: ``count`` built, each used once, and closed;
    then the memory of ``count`` idle ones (built, never used)."""
    started = time.perf_counter()
    for i in range(count):
        client = AsyncCcmClient(api_key="k", api_token="t", account_sid=f"a{i}")
        await client.aclose()
    built_s = time.perf_counter() - started
    # Each one used once: its pool, and the TLS context, are made on first use.
    fake = FakeCcm(generate=True)
    async with fake.serve() as fake_base:
        started = time.perf_counter()
        for i in range(count):
            async with fake.client(base_url=fake_base, http_client=None) as client:
                await client.get_call(f"s{i}")
        used_s = time.perf_counter() - started
    tracemalloc.start()
    idle = [AsyncCcmClient(api_key="k", api_token="t", account_sid=f"a{i}") for i in range(count)]
    idle_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for client in idle:
        await client.aclose()
    return {
        "scenario": "construction",
        "clients": count,
        "built_and_closed_s": round(built_s, 3),
        "built_used_once_and_closed_s": round(used_s, 3),
        "idle_kb_per_client": round(idle_bytes / count / 1024, 2),
    }


async def telemetry(base: str, quick: bool) -> dict[str, object]:
    """CPU per lookup with telemetry off and on, in one process: rounds alternate the
    two clients, so the machine's drift (runs of one client differ by 30% here)
    falls on both. First with OpenTelemetry's API alone (no SDK configured), then
    with the SDK: spans batched to an exporter that drops them, metrics to a reader."""
    rounds, count = (2, 100) if quick else (15, 2000)
    sids = iter(f"{i:032x}" for i in range(10**9))

    async def cpu_us_per_lookup(client: AsyncCcmClient) -> float:
        batch = [next(sids) for _ in range(count)]
        started = time.process_time()
        results = await client.get_calls(batch)
        spent = time.process_time() - started
        assert all(result.ok for result in results)
        return spent / count * 1e6

    def client(*, telemetry: bool) -> AsyncCcmClient:
        return AsyncCcmClient(
            api_key="k",
            api_token="t",
            account_sid="bench-account",
            base_url=base,
            max_concurrency=100,
            telemetry=telemetry,
        )

    async def paired(off: AsyncCcmClient, on: AsyncCcmClient) -> dict[str, float]:
        pairs = [(await cpu_us_per_lookup(off), await cpu_us_per_lookup(on)) for _ in range(rounds)]
        return {
            "off_us": round(statistics.median(a for a, _ in pairs), 1),
            "on_us": round(statistics.median(b for _, b in pairs), 1),
            "ratio": round(statistics.median(b / a for a, b in pairs), 3),
        }

    async with client(telemetry=False) as off, client(telemetry=True) as on:
        for each in (off, on):
            await cpu_us_per_lookup(each)  # warm: connections, imports
        api_only = await paired(off, on)
        _configure_the_sdk()
        with_the_sdk = await paired(off, on)
    return {
        "scenario": "telemetry",
        "rounds": rounds,
        "lookups_per_round": count,
        "api_without_sdk": api_only,
        "sdk_in_memory": with_the_sdk,
    }


def _configure_the_sdk() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discarding(SpanExporter):
        """An exporter that keeps nothing: the SDK's cost, without a network's, and
        without a heap of kept spans slowing the collector."""

        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Discarding()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario",
        choices=["memory", "economy", "pacing", "import-time", "construction", "telemetry"],
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--base", default="")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.scenario == "memory":
        result = asyncio.run(memory(args.base, args.count))
    elif args.scenario == "economy":
        result = asyncio.run(economy(args.quick))
    elif args.scenario == "pacing":
        result = asyncio.run(pacing(args.quick))
    elif args.scenario == "telemetry":
        result = asyncio.run(telemetry(args.base, args.quick))
    elif args.scenario == "construction":
        result = asyncio.run(construction(args.base, 100 if args.quick else 1000))
    else:
        result = import_time(1 if args.quick else 9)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
