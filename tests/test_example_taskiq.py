"""examples/taskiq_worker.py, the bulk recipe across processes: a real Redis as the
broker and the rate limits' storage, ``taskiq worker`` with 2 worker processes,
3 accounts with limits of their own (each a FakeCcm on a socket that answers
429 past exactly its limit), 3,000 SIDs. taskiq runs on asyncio: so does this.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.abc
import pytest

from ccm_async import CallDetails, CallState, RateLimit
from ccm_async.testing import FakeCcm

from .test_shared import ROOT, most_in_a_window, worker_sids

pytest.importorskip("taskiq_redis")

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

LIMITS = {"acct-slow": 40, "acct-mid": 80, "acct-fast": 120}  # requests per second
EACH = 1000


def account_fake(account: str, requests: int) -> FakeCcm:
    fake = FakeCcm(
        rate_limit=RateLimit(requests=requests, per=1.0),
        api_key="k",
        api_token="t",
        account_sid=account,
    )
    for sid in worker_sids(0, EACH):
        fake.add_call(CallDetails(call_sid=sid, call_state=CallState.TERMINAL))
    return fake


def results(out: Path, account: str) -> list[dict[str, object]]:
    """The lines written so far (whole ones: a worker may be writing one)."""
    return [
        json.loads(line)
        for path in out.glob(f"{account}.*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
        if line.endswith("\n")
    ]


async def enqueue(account: str, sids: Path, env: dict[str, str]) -> str:
    """What ``python -m examples.taskiq_worker`` says it enqueued."""
    done = await anyio.run_process(
        [sys.executable, "-m", "examples.taskiq_worker", account, str(sids)], cwd=ROOT, env=env
    )
    return done.stdout.decode().strip()


async def fetch_all(
    worker: anyio.abc.Process, tmp_path: Path, out: Path, env: dict[str, str], log: Path
) -> None:
    """Every account's SIDs enqueued, and their results waited for; then the
    workers stopped as an operator would (SIGINT: they finish and close)."""
    try:
        # Idle past the broker's socket timeout (5 s), which failed an idle worker.
        await anyio.sleep(6)
        for account in LIMITS:
            sids = tmp_path / f"{account}.txt"
            # With a BOM, blank lines and a SID twice: each SID is enqueued once.
            listed = [*worker_sids(0, EACH), "", "  ", worker_sids(0, 1)[0]]
            sids.write_text("\n".join(listed) + "\n", encoding="utf-8-sig")
            said = await enqueue(account, sids, env)
            assert said == f"{EACH:,} SIDs of {account} enqueued (0 had a result)"
        with anyio.fail_after(180):  # a guard: the slowest account takes 25 s
            while sum(len(results(out, account)) for account in LIMITS) < 3 * EACH:
                assert worker.returncode is None, log.read_text()
                await anyio.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGINT)
        with anyio.fail_after(60):
            await worker.wait()


async def test_three_accounts_over_two_workers_each_sid_once_each_limit_held(
    redis_url: str, tmp_path: Path
) -> None:
    fakes = {account: account_fake(account, requests) for account, requests in LIMITS.items()}
    out = tmp_path / "calls"
    async with AsyncExitStack() as stack:
        config = {}
        for account, fake in fakes.items():
            base_url = await stack.enter_async_context(fake.serve())
            config[account] = {
                "api_key": "k",
                "api_token": "t",
                "base_url": base_url,
                "requests": LIMITS[account],
                "per": 1.0,
            }
        accounts = tmp_path / "accounts.json"
        accounts.write_text(json.dumps(config), encoding="utf-8")
        env = {
            **os.environ,
            "CCM_TASKIQ_REDIS": redis_url,
            "CCM_ACCOUNTS": str(accounts),
            "CCM_OUT": str(out),
        }
        log = tmp_path / "worker.log"
        with log.open("wb") as errors:
            worker = await anyio.open_process(
                [sys.executable, "-m", "taskiq", "worker", "examples.taskiq_worker:broker",
                 "--workers", "2", "--no-configure-logging"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=errors,
            )  # fmt: skip
            async with worker:
                await fetch_all(worker, tmp_path, out, env, log)
    assert worker.returncode == 0, log.read_text()[-3000:]
    # Enqueued again, a finished run enqueues nothing.
    for account in LIMITS:
        said = await enqueue(account, tmp_path / f"{account}.txt", env)
        assert said == f"0 SIDs of {account} enqueued ({EACH:,} had a result)"
    for account, fake in fakes.items():
        written = results(out, account)
        assert Counter(str(line["call_sid"]) for line in written) == Counter(worker_sids(0, EACH))
        assert all("call" in line for line in written)
        assert len({path.name for path in out.glob(f"{account}.*.jsonl")}) == 2  # both worked
        statuses = [request.status for request in fake.requests]
        assert statuses == [200] * EACH, log.read_text()[-3000:]
        arrivals = [request.time for request in fake.requests]
        assert most_in_a_window(arrivals, 1.0) <= LIMITS[account]
