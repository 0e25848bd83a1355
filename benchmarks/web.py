"""The web benchmark: the example FastAPI app against the same app on plain httpx.

Each app runs under uvicorn in a process of its own, in front of the fake CCM
API (``ccm-async fake-server``, another process) answering after
``--latency-ms`` with ``--fail-rate`` of injected 500s and a rate limit that
answers 429 beyond it. The load mixes a hot SID (many web requests asking for
one call), distinct SIDs and invalid ones, at 1 and 200 requests in flight;
the report gives requests/s, p50 and p99, and the answers by status.

    python benchmarks/web.py [--quick] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).parent.parent
APPS = {
    "ccm_async": ["examples.fastapi_app:app"],
    "plain httpx": ["--app-dir", str(ROOT / "benchmarks"), "web_plain:app"],
}


@contextlib.contextmanager
def fake_api(latency_ms: float, fail_rate: float, rate_limit: str) -> Iterator[dict[str, str]]:
    """The fake CCM API in its own process; yields the environment that points at it."""
    command = [sys.executable, "-m", "ccm_async", "fake-server", "--port", "0"]
    options = ["--latency-ms", str(latency_ms), "--fail-rate", str(fail_rate)]
    with subprocess.Popen(
        [*command, *options, "--rate-limit", rate_limit], stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            assert server.stdout is not None
            environ: dict[str, str] = {}
            while len(environ) < 4:
                line = server.stdout.readline()
                if not line:
                    raise RuntimeError("the fake API did not start")
                if match := re.match(r"export (\w+)=(\S+)", line):
                    environ[match[1]] = match[2]
            yield environ
        finally:
            server.terminate()


@contextlib.contextmanager
def served(app: list[str], environ: dict[str, str]) -> Iterator[str]:
    """``app`` under uvicorn in its own process, on a socket bound here (no port race)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    command = [sys.executable, "-m", "uvicorn", *app, "--fd", str(listener.fileno())]
    with subprocess.Popen(
        [*command, "--log-level", "warning", "--no-access-log"],
        env={**os.environ, **environ},
        cwd=ROOT,
        pass_fds=[listener.fileno()],
    ) as process:
        listener.close()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()


def paths(count: int) -> list[str]:
    """A third for one hot SID, a tenth invalid, the rest distinct SIDs."""
    chosen = []
    for i in range(count):
        if i % 3 == 0:
            chosen.append("/calls/hot-call")
        elif i % 10 == 1:
            chosen.append("/calls/not.a.sid")
        else:
            chosen.append(f"/calls/call-{i}")
    return chosen


async def load(base: str, count: int, in_flight: int) -> dict[str, object]:
    """``count`` requests, ``in_flight`` at a time: rate, latencies, statuses."""
    # httpx's pool costs O(connections²) per request (encode/httpcore#1035): at 200
    # connections in one client the load generator, not the app, was measured.
    per_client = min(in_flight, 10)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, limits=limits, timeout=120)
            )
            for _ in range(-(-in_flight // per_client))
        ]
        await ready(clients[0])
        todo = iter(paths(count))
        latencies: list[float] = []
        statuses: collections.Counter[int] = collections.Counter()

        async def worker(client: httpx.AsyncClient) -> None:
            for path in todo:
                sent = time.perf_counter()
                response = await client.get(path)
                latencies.append(time.perf_counter() - sent)
                statuses[response.status_code] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(in_flight)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": count,
        "in_flight": in_flight,
        "requests_per_s": round(count / elapsed, 1),
        "p50_ms": round(cuts[49] * 1000, 1),
        "p99_ms": round(cuts[98] * 1000, 1),
        "statuses": dict(sorted(statuses.items())),
    }


async def ready(client: httpx.AsyncClient) -> None:
    for _ in range(300):
        with contextlib.suppress(httpx.TransportError):
            await client.get("/calls/warm-up")
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the app did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes; checks the script runs")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--fail-rate", type=float, default=0.05)
    parser.add_argument("--rate-limit", default="6000/min")
    args = parser.parse_args()
    count = 40 if args.quick else args.requests
    results: dict[str, dict[str, object]] = {}
    with fake_api(args.latency_ms, args.fail_rate, args.rate_limit) as environ:
        for name, app in APPS.items():
            with served(app, environ) as base:
                results[name] = {
                    str(in_flight): asyncio.run(load(base, requests, in_flight))
                    for in_flight, requests in ((1, max(count // 10, 10)), (200, count))
                }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
