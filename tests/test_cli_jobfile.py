"""The job file: ``ccm-async fetch -o calls.db``, re-runs, ``status`` and ``export``.

Through the real command in subprocesses, against FakeCcm on a socket, and
read back through the documented table layout with the standard library's
sqlite3, as a user's own query would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
import signal
import sqlite3
from pathlib import Path

import anyio
import pytest

from ccm_async.testing import FakeCcm, Fault
from tests.cli_support import (
    COMMAND,
    TOKEN,
    ccm,
    environment_for,
    fetched_sids,
    job_rows,
    sids_of,
    unmeasured,
)

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

_STATES = re.compile(r"ok ([\d,]+), not found ([\d,]+), failed ([\d,]+), pending ([\d,]+)")


def states_in(status: str) -> tuple[int, int, int, int]:
    """ok, not found, failed, pending, as ``ccm-async status`` prints them."""
    match = _STATES.search(status)
    assert match, status
    ok, missing, failed, pending = (int(group.replace(",", "")) for group in match.groups())
    return ok, missing, failed, pending


async def test_a_job_file_records_each_sid_once_and_a_rerun_continues(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 40, found=True)
    missing = sids_of(fake, 3, found=False)
    broken = ok[:4]
    for sid in broken:
        fake.fail(sid, Fault.server_error(3046))
    sids_file = tmp_path / "sids.txt"
    sids_file.write_text("\n".join(ok + missing + ok[:10]) + "\n")  # duplicates too
    job = tmp_path / "calls.db"
    done = await ccm(env, "fetch", "-i", str(sids_file), "-o", str(job))
    assert done.returncode == 1, done.stderr
    assert f"job file: {job} (ccm-async status {job})" in done.stderr.decode()
    assert "ok 36, not found 3, failed 4" in done.stderr.decode()
    rows = job_rows(job)
    assert sorted(rows) == sorted(ok + missing)  # each distinct SID once
    assert {sid: state for sid, (state, _) in rows.items() if state != "ok"} == {
        **dict.fromkeys(broken, "failed"),
        **dict.fromkeys(missing, "not_found"),
    }
    assert fake.request_count == len(ok) + len(missing) + 3 * len(broken)  # duplicates once
    with sqlite3.connect(job) as db:
        failure = db.execute(
            "SELECT error_class, http_status, error_code FROM calls WHERE call_sid = ?",
            (broken[0],),
        ).fetchone()
        states = db.execute(
            "SELECT json_extract(call, '$.call_state') FROM calls WHERE state = 'ok'"
        ).fetchall()
        account, host = db.execute("SELECT account_sid, api_host FROM job").fetchone()
    db.close()
    assert failure == ("ServerError", 500, 3046)
    assert {state for (state,) in states} <= {"terminal", "active"}
    assert (account, host) == (fake.account_sid, env["EXOTEL_CCM_BASE_URL"])

    status = await ccm(env, "status", str(job))
    assert status.returncode == 0, status.stderr
    assert states_in(status.stdout.decode()) == (36, 3, 4, 0)
    assert "  failed with HTTP 500 code 3046: 4" in status.stdout.decode()
    assert "left: 4 SIDs; run the same fetch again to continue" in status.stdout.decode()

    # Again, with new SIDs: only the failed and the new are fetched.
    fake.clear_faults()
    new = sids_of(fake, 5, found=True, prefix="new")
    sids_file.write_text("\n".join(ok + missing + new) + "\n")
    before = fake.request_count
    done = await ccm(env, "fetch", "-i", str(sids_file), "-o", str(job))
    assert done.returncode == 0, done.stderr
    assert sorted(fetched_sids(fake, before)) == sorted(broken + new)
    rows = job_rows(job)
    assert {rows[sid] for sid in broken} == {("ok", 2)}
    assert {rows[sid] for sid in ok[4:]} == {("ok", 1)}
    status = await ccm(env, "status", str(job))
    assert states_in(status.stdout.decode()) == (45, 3, 0, 0)
    assert "left: none" in status.stdout.decode()


async def test_export_writes_calls_and_failed_sids(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 12, found=True)
    fake.fail(ok[0], Fault.server_error(3046))
    job = tmp_path / "calls.db"
    done = await ccm(env, "fetch", *ok, "-o", str(job))
    assert done.returncode == 1
    jsonl, table, failed = tmp_path / "calls.jsonl", tmp_path / "calls.csv", tmp_path / "f.txt"
    for args in (["-o", str(jsonl)], ["-o", str(table)], ["--failed", "-o", str(failed)]):
        done = await ccm(env, "export", str(job), *args)
        assert done.returncode == 0, done.stderr
    assert [json.loads(line)["call_sid"] for line in jsonl.read_text().splitlines()] == ok[1:]
    with table.open(newline="") as file:
        assert [row["call_sid"] for row in csv.DictReader(file)] == ok[1:]
    assert failed.read_text() == f"{ok[0]}\n"
    to_stdout = await ccm(env, "export", str(job), "-o", "-", "--format", "csv")
    assert [row["call_sid"] for row in csv.DictReader(io.StringIO(to_stdout.stdout.decode()))] == (
        ok[1:]
    )
    # The failed SIDs feed back in.
    fake.clear_faults()
    done = await ccm(env, "fetch", "-i", str(failed), "-o", str(job))
    assert done.returncode == 0, done.stderr
    for refused, reason in {
        ("-o", str(jsonl)): f"{jsonl} exists: --overwrite replaces it",
        ("-o", str(tmp_path / "other.db")): "export writes JSON lines or CSV, not a job file",
        ("-o", str(jsonl), "--format", "csv"): "is named as jsonl, but --format is csv",
    }.items():
        done = await ccm(env, "export", str(job), *refused)
        assert done.returncode == 2
        assert reason in done.stderr.decode()
    done = await ccm(env, "export", str(job), "-o", str(jsonl), "--overwrite")
    assert done.returncode == 0
    assert len(jsonl.read_text().splitlines()) == len(ok)


async def test_a_job_file_is_one_accounts_and_one_fetchs_at_a_time(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 3, found=True)
    job = tmp_path / "calls.db"
    done = await ccm(env, "fetch", *ok, "-o", str(job))
    assert done.returncode == 0, done.stderr
    before = fake.request_count
    other = {**env, "EXOTEL_ACCOUNT_SID": "another-account"}
    done = await ccm(other, "fetch", *ok, "-o", str(job))
    assert done.returncode == 2
    assert f"{job} belongs to account {fake.account_sid}, not another-account" in (
        done.stderr.decode()
    )
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("my notes\n")
    other_db = tmp_path / "other.sqlite"
    with sqlite3.connect(other_db) as db:
        db.execute("CREATE TABLE mine (x)")
    db.close()
    cut = tmp_path / "cut.db"  # a job file cut short, as a failed copy leaves it
    cut.write_bytes(job.read_bytes()[:5000])
    for path, reason in {
        not_sqlite: "is not an SQLite file: not a job file",
        other_db: "is an SQLite database but not a ccm-async job file",
        cut: f"{cut}: database disk image is malformed",
    }.items():
        for args in (["fetch", "abc", "-o", str(path)], ["status", str(path)]):
            done = await ccm(env, *args)
            assert done.returncode == 2, args
            assert reason in done.stderr.decode(), args
    done = await ccm(env, "status", str(tmp_path / "none.db"))
    assert done.returncode == 2
    assert "no such job file" in done.stderr.decode()
    assert fake.request_count == before
    assert not_sqlite.read_text() == "my notes\n"
    # --overwrite starts a job over, for any account, and replaces a file that is not SQLite.
    for path in (job, not_sqlite):
        done = await ccm(other, "fetch", ok[0], "-o", str(path), "--overwrite")
        assert done.returncode == 2  # the fake knows only its own account: wrong credentials
        assert job_rows(path) == {ok[0]: ("pending", 0)}


async def test_one_fetch_holds_a_job_file_while_status_reads_it(tmp_path: Path) -> None:
    fake = FakeCcm(generate=True, latency=0.05, api_token=TOKEN)
    sids = [f"hold{i:04d}" for i in range(1000)]
    job = tmp_path / "calls.db"
    async with fake.serve() as base_url:
        env = environment_for(fake, base_url)
        args = [*COMMAND, "fetch", *sids, "-o", str(job), "--concurrency", "8"]
        seen: list[tuple[int, int, int, int]] = []
        async with await anyio.open_process(args, env=env) as process:
            with anyio.fail_after(60):
                while fake.request_count < 20:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            second = await ccm(env, "fetch", "abc", "-o", str(job))
            assert second.returncode == 2
            assert f"{job} is in use by another ccm-async fetch" in second.stderr.decode()
            while process.returncode is None and len(seen) < 20:
                status = await ccm(env, "status", str(job))
                assert status.returncode == 0, status.stderr
                seen.append(states_in(status.stdout.decode()))
            assert await process.wait() == 0
        status = await ccm(env, "status", str(job))
    final = states_in(status.stdout.decode())
    assert final == (1000, 0, 0, 0)
    assert all(sum(counts) == len(sids) for counts in seen)
    assert [counts[0] for counts in seen] == sorted(counts[0] for counts in seen)
    assert seen[0][3] > 0  # it was read mid-fetch


async def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path: Path) -> None:
    fake = FakeCcm(generate=True, missing_rate=0.05, latency=0.005, api_token=TOKEN)
    fake.fail_randomly(Fault.server_error(), rate=0.05, max_per_sid=1)
    sids = [f"kill{i:05d}" for i in range(1500)]
    sids_file = tmp_path / "sids.txt"
    sids_file.write_text("\n".join(sids) + "\n")
    job = tmp_path / "calls.db"
    args = ["fetch", "-i", str(sids_file), "-o", str(job), "--concurrency", "8"]
    chance = random.Random(20261202)
    async with fake.serve() as base_url:
        env = environment_for(fake, base_url)
        committed: set[str] = set()
        for _ in range(4):
            before = fake.request_count
            target = len(committed) + chance.randrange(20, 300)
            killed = unmeasured(env)
            async with await anyio.open_process([*COMMAND, *args], env=killed) as process:
                with anyio.fail_after(60):
                    while done_in(job) < target and process.returncode is None:  # noqa: ASYNC110
                        await anyio.sleep(chance.uniform(0, 0.02))
                process.send_signal(signal.SIGKILL)
                await process.wait()
            # Nothing committed before was fetched again; every SID is there once.
            assert not set(fetched_sids(fake, before)) & committed
            rows = job_rows(job)
            assert sorted(rows) == sids
            now = {sid for sid, (state, _) in rows.items() if state in ("ok", "not_found")}
            assert committed <= now
            committed = now
            status = await ccm(env, "status", str(job))
            ok, missing, failed, pending = states_in(status.stdout.decode())
            assert (ok + missing, ok + missing + failed + pending) == (len(committed), len(sids))
        before = fake.request_count
        done = await ccm(env, *args)
        assert done.returncode == 1, done.stderr  # the missing SIDs stay not found
    assert not set(fetched_sids(fake, before)) & committed
    rows = job_rows(job)
    assert sorted(rows) == sids
    assert {state for state, _ in rows.values()} == {"ok", "not_found"}
    assert {sid for sid, (state, _) in rows.items() if state == "not_found"} == {
        sid for sid in sids if not fake.has_call(sid)
    }


def done_in(job: Path) -> int:
    """SIDs with a committed result, read as another program would (0 before the file is)."""
    if not job.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"{job.as_uri()}?mode=ro", uri=True)) as db:
        try:
            (count,) = db.execute("SELECT count(*) FROM calls WHERE state != 'pending'").fetchone()
        except sqlite3.OperationalError:  # not laid out yet
            return 0
    return int(count)
