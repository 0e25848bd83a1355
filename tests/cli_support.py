"""Running the ccm-async command in a subprocess, against FakeCcm on a socket."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio

from ccm_async.testing import FakeCcm

TOKEN = "cli-secret-token-7f3a"
COMMAND = [sys.executable, "-m", "ccm_async"]


def environment_for(fake: FakeCcm, base_url: str) -> dict[str, str]:
    """The command's environment: the fake's credentials and address."""
    return {
        **os.environ,
        "EXOTEL_API_KEY": fake.api_key,
        "EXOTEL_API_TOKEN": TOKEN,
        "EXOTEL_ACCOUNT_SID": fake.account_sid,
        "EXOTEL_CCM_BASE_URL": base_url,
    }


async def ccm(
    env: Mapping[str, str], *args: str, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the command to its end; its output never holds the token."""
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [*COMMAND, *args], input=stdin, env=env, check=False, cwd=cwd
        )
    assert_no_secret(done.stdout + done.stderr)
    return done


def catches(pid: int, number: int) -> bool:
    """Whether process ``pid`` has a handler for signal ``number`` (Linux's SigCgt mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(status.split("SigCgt:")[1].split()[0], 16) & (1 << (number - 1)))


def unmeasured(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a process the test kills: a killed process's half-written coverage data
    would spoil the report, so it measures nothing."""
    return {k: v for k, v in env.items() if not k.startswith("COVERAGE_PROCESS_")}


def assert_no_secret(output: bytes) -> None:
    """Neither the token nor the Basic credentials made of it."""
    assert TOKEN.encode() not in output
    assert base64.b64encode(f"fake-api-key:{TOKEN}".encode()) not in output


def sids_of(fake: FakeCcm, count: int, *, found: bool, prefix: str = "cli") -> list[str]:
    """``count`` SIDs the fake has (or has not)."""
    sids = (f"{prefix}{i:05d}" for i in range(100_000))
    return [sid for sid in sids if fake.has_call(sid) == found][:count]


def job_rows(path: Path) -> dict[str, tuple[str, int]]:
    """The job file's SIDs, each with its state and attempts (the documented layout)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT call_sid, state, attempts FROM calls").fetchall()
    db.close()
    return {sid: (state, attempts) for sid, state, attempts in rows}


def fetched_sids(fake: FakeCcm, since: int) -> list[str]:
    """The SIDs the fake was asked for, from its ``since``-th request on."""
    return [str(request.call_sid) for request in fake.requests[since:]]
