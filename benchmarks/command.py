"""The ccm-async command as its user runs it: a job file against JSON lines, and status.

    python benchmarks/command.py [--quick]

``fetch``: 10,000 SIDs from ``ccm-async fake-server`` into a job file and into
JSON lines, alternating, the median wall time of each (the command whole, as
its user waits for it); the job file's goal is at least 0.9 of the JSON lines
rate. ``status``: ``ccm-async status`` on a job file of 1,000,000 rows (the
command whole, and the query alone), the goal under 1 s. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ccm_async import ApiError, CallDetails, CallNotFoundError, CallResult, ServerError
from ccm_async._cli_jobfile import job_status, open_job, read_job
from ccm_async._errors import ErrorAnswer

COMMAND = [sys.executable, "-m", "ccm_async"]


def fake_server() -> tuple[subprocess.Popen[str], dict[str, str]]:
    """``ccm-async fake-server`` on a free port, and the environment pointing at it."""
    process = subprocess.Popen(
        [*COMMAND, "fake-server", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    env = dict(os.environ)
    for _ in range(5):
        line = process.stdout.readline()
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            env[name] = value
    return process, env


def timed(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([*COMMAND, *args], env=env, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ccm-async {' '.join(args)}: status {done.returncode}: {done.stderr}")
    return time.perf_counter() - started


def fetch(count: int, runs: int, work: Path) -> dict[str, object]:
    sids = work / "sids.txt"
    sids.write_text("".join(f"{hashlib.md5(str(i).encode()).hexdigest()}\n" for i in range(count)))
    server, env = fake_server()
    times: dict[str, list[float]] = {"jsonl": [], "job": []}
    try:
        for run in range(runs):
            for kind, name in (("jsonl", "calls.jsonl"), ("job", "calls.db")):
                out = work / f"{run}-{name}"
                times[kind].append(timed(env, "fetch", "-i", str(sids), "-o", str(out)))
    finally:
        server.terminate()
        server.wait(10)
    rates = {kind: count / statistics.median(seconds) for kind, seconds in times.items()}
    return {
        "sids": count,
        "runs": runs,
        "jsonl_lookups_per_s": round(rates["jsonl"]),
        "job_file_lookups_per_s": round(rates["job"]),
        "job_file / jsonl": round(rates["job"] / rates["jsonl"], 3),
    }


def a_job_file(path: Path, rows: int) -> None:
    """A job file of ``rows`` SIDs through the fetch's own writes: 90% ok, the rest failed."""
    call_json = CallDetails(call_sid="x", call_state="terminal", custom_field="c" * 200)
    not_found = CallNotFoundError("not found", ErrorAnswer(http_status=404, code=3043))
    failed = ServerError("failed", ErrorAnswer(http_status=500, code=3046))
    chance = random.Random(1)
    job = open_job(str(path), account_sid="bench", api_host="http://127.0.0.1")
    try:
        sids = [f"s{i:07d}" for i in range(rows)]
        job.add(sids)
        for sid in sids[: rows * 9 // 10]:
            error: ApiError | None = None
            roll = chance.random()
            if roll < 0.03:
                error = not_found
            elif roll < 0.05:
                error = failed
            result = (
                CallResult(call_sid=sid, error=error)
                if error
                else CallResult(call_sid=sid, call=call_json)
            )
            job.record(result)
        job.commit()
    finally:
        job.close()


def status(rows: int, runs: int, work: Path) -> dict[str, object]:
    path = work / "big.db"
    started = time.perf_counter()
    a_job_file(path, rows)
    built_s = time.perf_counter() - started
    command_s = statistics.median(timed(dict(os.environ), "status", str(path)) for _ in range(runs))
    query = []
    for _ in range(runs):
        db = read_job(str(path))
        started = time.perf_counter()
        job_status(db, str(path))
        query.append(time.perf_counter() - started)
        db.close()
    return {
        "rows": rows,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "built_s": round(built_s, 1),
        "status_command_s": round(command_s, 3),
        "status_query_s": round(statistics.median(query), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccm-bench-") as work:
        result = {
            "fetch": fetch(500 if args.quick else 10_000, 1 if args.quick else 5, Path(work)),
            "status": status(
                10_000 if args.quick else 1_000_000, 1 if args.quick else 5, Path(work)
            ),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
