"""The benchmark suite: ccm_async against tuned httpx and aiohttp, in one run, as ratios.

    uv run nox -s bench                 # the full suite (tens of minutes)
    python benchmarks/run.py --quick    # every scenario, tiny, asserting nothing (the test suite)

The fast server runs in its own process, pinned to the last core where the
machine allows, and each client measurement in a process of its own pinned to
the first. Results are medians of alternating runs. Tables go to stdout, and the JSON,
the report and a chart of the throughput (``throughput.png``) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from chart import draw

HERE = Path(__file__).parent
CLIENTS = ["httpx", "aiohttp", "ccm_async", "ccm_async+aiohttp"]


def cores() -> tuple[int | None, int | None]:
    """(client core, server core), or Nones where pinning is not possible."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        return None, None
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[-1]


@contextlib.contextmanager
def server(latency_ms: float = 0.0) -> Iterator[str]:
    """The fast server in its own process; yields its base URL."""
    _, server_core = cores()
    args = [sys.executable, str(HERE / "server.py"), "--latency-ms", str(latency_ms)]
    if server_core is not None:
        args += ["--cpu", str(server_core)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = process.stdout.readline().split()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def server_stats(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/stats", timeout=10) as response:
        return json.load(response)  # type: ignore[no-any-return]


def measure(client: str, base: str, concurrency: int, count: int) -> dict[str, float]:
    client_core, _ = cores()
    args = [
        sys.executable,
        str(HERE / "clients.py"),
        "--client",
        client,
        "--concurrency",
        str(concurrency),
        "--count",
        str(count),
        "--base",
        base,
    ]
    if client_core is not None:
        args += ["--cpu", str(client_core)]
    before = server_stats(base)
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=3600)
    after = server_stats(base)
    result: dict[str, float] = json.loads(done.stdout)
    # The server's CPU over the timed window (its warm-up requests included).
    window = result["count"] / result["lookups_per_s"]
    result["server_busy"] = (after["cpu_seconds"] - before["cpu_seconds"]) / window
    return result


def throughput(quick: bool) -> dict[str, object]:
    count, levels, runs = (300, [10], 1) if quick else (20_000, [10, 100, 500], 3)
    cells: dict[str, dict[str, list[dict[str, float]]]] = {}
    with server() as base:
        for _ in range(runs):  # alternating: every client once per round
            for concurrency in levels:
                for client in CLIENTS:
                    result = measure(client, base, concurrency, count)
                    cells.setdefault(client, {}).setdefault(str(concurrency), []).append(result)
    table = {
        client: {
            level: {
                "lookups_per_s": statistics.median(r["lookups_per_s"] for r in results),
                "cpu_ms_per_lookup": statistics.median(r["cpu_ms_per_lookup"] for r in results),
                "server_busy": max(r["server_busy"] for r in results),
                "errors": sum(r["errors"] for r in results),
            }
            for level, results in by_level.items()
        }
        for client, by_level in cells.items()
    }
    ratios = {
        level: {
            "ccm_async / httpx": _ratio(table, "ccm_async", "httpx", level),
            "ccm_async+aiohttp / aiohttp": _ratio(table, "ccm_async+aiohttp", "aiohttp", level),
        }
        for level in map(str, levels)
    }
    return {"count": count, "runs": runs, "table": table, "ratios": ratios}


def _ratio(table: dict[str, dict[str, dict[str, float]]], a: str, b: str, level: str) -> float:
    return round(table[a][level]["lookups_per_s"] / table[b][level]["lookups_per_s"], 2)


def latency_bound(quick: bool) -> dict[str, object]:
    count = 100 if quick else 3000
    with server(latency_ms=100) as base:
        result = measure("ccm_async", base, 32, count)
    ideal = 32 / 0.1
    return {
        "count": count,
        "lookups_per_s": round(result["lookups_per_s"], 1),
        "ideal": ideal,
        "share_of_ideal": round(result["lookups_per_s"] / ideal, 3),
    }


def slow_server(quick: bool) -> dict[str, object]:
    """Many requests in flight against a slow server, where a pool's own cost shows."""
    count, concurrency = (100, 32) if quick else (3000, 256)
    with server(latency_ms=100) as base:
        cells = {
            client: measure(client, base, concurrency, count) for client in ("httpx", "ccm_async")
        }
    return {
        "count": count,
        "concurrency": concurrency,
        "ideal": concurrency / 0.1,
        **{
            client: {
                "lookups_per_s": round(cell["lookups_per_s"], 1),
                "cpu_ms_per_lookup": round(cell["cpu_ms_per_lookup"], 3),
                "errors": cell["errors"],
            }
            for client, cell in cells.items()
        },
    }


def scenario(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(HERE / "scenarios.py"), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=7200,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def command(quick: bool) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(HERE / "command.py"), *(["--quick"] if quick else [])],
        capture_output=True,
        text=True,
        check=True,
        timeout=7200,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def telemetry(quick: bool) -> dict[str, object]:
    with server() as base:
        return scenario("telemetry", "--base", base, *(["--quick"] if quick else []))


def memory(quick: bool) -> dict[str, object]:
    with server() as base:
        return scenario("memory", "--count", "2000" if quick else "1000000", "--base", base)


def report(results: dict[str, object]) -> str:
    lines = [f"machine: {results['machine']}", ""]
    tp = results["throughput"]
    assert isinstance(tp, dict)
    lines += [
        f"throughput ({tp['count']} lookups, medians of {tp['runs']} alternating runs)",
        "| client | C | lookups/s | client CPU ms/lookup | server busy |",
        "|---|---|---|---|---|",
    ]
    for client, by_level in tp["table"].items():
        for level, cell in by_level.items():
            lines.append(
                f"| {client} | {level} | {cell['lookups_per_s']:,.0f} | "
                f"{cell['cpu_ms_per_lookup']:.3f} | {cell['server_busy']:.0%} |"
            )
    lines += ["", "| C | ccm_async / tuned httpx | ccm_async+aiohttp / aiohttp |", "|---|---|---|"]
    for level, ratio in tp["ratios"].items():
        lines.append(
            f"| {level} | {ratio['ccm_async / httpx']}x | {ratio['ccm_async+aiohttp / aiohttp']}x |"
        )
    for name in (
        "latency_bound",
        "slow_server",
        "memory",
        "economy",
        "pacing",
        "import_time",
        "construction",
        "command",
        "telemetry",
    ):
        lines += ["", f"{name}: {json.dumps(results[name])}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes; checks the scripts run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    quick = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    steps = {
        "throughput": lambda: throughput(quick),
        "latency_bound": lambda: latency_bound(quick),
        "slow_server": lambda: slow_server(quick),
        "memory": lambda: memory(quick),
        "economy": lambda: scenario("economy", *(["--quick"] if quick else [])),
        "pacing": lambda: scenario("pacing", *(["--quick"] if quick else [])),
        "import_time": lambda: scenario("import-time", *(["--quick"] if quick else [])),
        "construction": lambda: scenario("construction", *(["--quick"] if quick else [])),
        "command": lambda: command(quick),
        "telemetry": lambda: telemetry(quick),
    }
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.system()}",
        "quick": quick,
    }
    for name, step in steps.items():
        results[name] = step()
        # Saved after every scenario: a long run that fails late keeps the rest.
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (args.out / "report.md").write_text(text + "\n")
    draw(results, args.out / "throughput.png")
    print(text)


if __name__ == "__main__":
    main()
