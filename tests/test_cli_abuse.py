"""What a user trying to break the command did, each case kept: files that are not what
they seem, damaged job files, odd outputs, and signals at awkward moments.

Every case ends in a message and the conventional status, never a traceback, and
never with a file the user did not hand over destroyed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import anyio
import pytest

from ccm_async.testing import FakeCcm
from tests.cli_support import COMMAND, TOKEN, catches, ccm, environment_for, job_rows, sids_of

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


def no_traceback(done: object) -> None:
    assert b"Traceback" not in getattr(done, "stderr", b"")


async def test_a_rerun_of_a_job_file_fails_while_a_sid_still_fails(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    [good] = sids_of(fake, 1, found=True)
    job = tmp_path / "calls.db"
    done = await ccm(env, "fetch", "-o", str(job), "bad!sid", good)
    assert done.returncode == 1
    done = await ccm(env, "fetch", "-o", str(job))  # only the failed one, in the last commit
    assert done.returncode == 1, done.stderr
    assert "ok 0, not found 0, failed 1" in done.stderr.decode()
    done = await ccm(env, "fetch", "-o", str(tmp_path / "typo.db"))
    assert done.returncode == 2
    assert "or an existing job file to continue" in done.stderr.decode()
    assert not (tmp_path / "typo.db").exists()


async def test_the_errors_file_is_never_a_strangers(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    [good] = sids_of(fake, 1, found=True)
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    out = tmp_path / "calls.jsonl"
    done = await ccm(env, "fetch", good, "-o", str(out), "--errors", str(precious))
    assert done.returncode == 2
    assert f"{precious} exists: --resume continues it, --overwrite replaces it" in (
        done.stderr.decode()
    )
    assert precious.read_text() == "precious\n"
    assert not out.exists()
    link = tmp_path / "same.jsonl"
    link.symlink_to(out)
    done = await ccm(env, "fetch", good, "-o", str(out), "--errors", str(link))
    assert done.returncode == 2
    assert "cannot be both the output and the errors file" in done.stderr.decode()
    # An errors file that is a link of the user's own is written through, never removed.
    elsewhere = tmp_path / "elsewhere.tsv"
    elsewhere.write_text("")
    errors_link = tmp_path / "errors.tsv"
    errors_link.symlink_to(elsewhere)
    done = await ccm(env, "fetch", good, "-o", str(out), "--errors", str(errors_link))
    assert done.returncode == 0, done.stderr
    assert errors_link.is_symlink()
    assert elsewhere.exists()


async def test_export_never_writes_over_its_own_job_file(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    job = tmp_path / "calls.db"
    done = await ccm(env, "fetch", *sids_of(fake, 3, found=True), "-o", str(job))
    assert done.returncode == 0, done.stderr
    kept = job_rows(job)
    link = tmp_path / "link.jsonl"
    link.symlink_to(job)
    for args in (["--failed", "-o", str(job), "--overwrite"], ["-o", str(link), "--overwrite"]):
        done = await ccm(env, "export", str(job), *args)
        assert done.returncode == 2, args
        assert "is the job file being exported" in done.stderr.decode()
    done = await ccm(env, "export", str(job), "-o", str(tmp_path))
    assert done.returncode == 2
    assert "it is a directory" in done.stderr.decode()
    assert job_rows(job) == kept


async def test_damaged_job_files_are_named_not_tracebacks(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    job = tmp_path / "calls.db"
    done = await ccm(env, "fetch", *sids_of(fake, 3, found=True), "-o", str(job))
    assert done.returncode == 0, done.stderr
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    layout = tmp_path / "layout.db"
    with sqlite3.connect(layout) as db:
        db.execute("CREATE TABLE job (account_sid)")
        db.execute("INSERT INTO job VALUES ('fake-account')")
        db.execute("CREATE TABLE calls (x)")
    db.close()
    for path in (empty, layout):
        for args in (["status", str(path)], ["export", str(path), "-o", "-"]):
            done = await ccm(env, *args)
            assert done.returncode == 2, args
            assert f"{path}" in done.stderr.decode()
            no_traceback(done)
    with sqlite3.connect(job) as db:
        db.execute("UPDATE calls SET fetched_at = 'garbage' WHERE rowid = 1")
        db.execute("UPDATE calls SET call = '{not json' WHERE rowid = 2")
    db.close()
    done = await ccm(env, "status", str(job))
    assert done.returncode == 0, done.stderr  # what it cannot read is shown as it is
    assert "garbage" in done.stdout.decode()
    out = tmp_path / "calls.jsonl"
    done = await ccm(env, "export", str(job), "-o", str(out))
    assert done.returncode == 2
    assert "is not a JSON object" in done.stderr.decode()
    assert not out.exists()  # half an export is not left behind
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE mine (x)")
    db.close()
    done = await ccm(env, "fetch", "abc", "-o", str(other), "--overwrite")
    assert done.returncode == 2
    with sqlite3.connect(other) as db:
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    db.close()
    assert mode == "delete"  # another program's database is left as it was


async def test_csv_fields_longer_than_the_csv_modules_cap(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    [good] = sids_of(fake, 1, found=True)
    notes = "n" * 200_000
    crm = tmp_path / "crm.csv"
    crm.write_text(f"call_sid,notes\n{good},{notes}\n")
    done = await ccm(env, "fetch", "-i", str(crm), "--column", "call_sid", "-o", "-")
    assert done.returncode == 0, done.stderr
    fake.add_call({"call_sid": "long1", "call_state": "terminal", "custom_field": notes})
    table = tmp_path / "calls.csv"
    for flags in ([], ["--resume"]):
        done = await ccm(env, "fetch", "long1", good, "-o", str(table), *flags)
        assert done.returncode == 0, done.stderr
    header = table.read_bytes().split(b"\n")[0] + b"\n"
    table.write_bytes(header[:100])  # cut off inside its header
    done = await ccm(env, "fetch", good, "-o", str(table), "--resume")
    assert done.returncode == 0, done.stderr
    assert table.read_bytes().startswith(header)


async def test_odd_outputs_fifos_devices_and_closed_streams(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    [good] = sids_of(fake, 1, found=True)
    shell = " ".join(COMMAND)
    for line in (
        f"{shell} fetch {good} -o /dev/stdout | cat",
        f"fifo={tmp_path}/out.fifo; mkfifo $fifo; cat $fifo & {shell} fetch {good} -o $fifo; wait",
    ):
        with anyio.fail_after(60):
            done = await anyio.run_process(["bash", "-c", line], env=env, check=False)
        assert done.returncode == 0, (line, done.stderr)
        assert json.loads(done.stdout)["call_sid"] == good
    job = tmp_path / "calls.db"
    await ccm(env, "fetch", good, "-o", str(job))
    for line, reason in {
        f"{shell} get {good} > /dev/full": "cannot write stdout: No space left on device",
        f"{shell} status {job} > /dev/full": "cannot write stdout: No space left on device",
        f"{shell} --help > /dev/full": "cannot write stdout: No space left on device",
        f"{shell} fetch {good} >&-": "cannot write stdout: it is closed",
        f"{shell} fetch -i - -o {tmp_path}/x.jsonl <&-": "cannot read stdin: it is closed",
    }.items():
        with anyio.fail_after(60):
            done = await anyio.run_process(["bash", "-c", line], env=env, check=False)
        assert done.returncode == 2, (line, done.stderr)
        assert reason in done.stderr.decode(), line
        no_traceback(done)
    # A FIFO output nobody reads: the command still stops on SIGTERM (whichever of its
    # handlers has it by then: the start-up one or the run's).
    fifo = tmp_path / "unread.fifo"
    os.mkfifo(fifo)
    async with await anyio.open_process(
        [*COMMAND, "fetch", good, "-o", str(fifo)], env=env
    ) as process:
        with anyio.fail_after(30):
            while not catches(process.pid, signal.SIGTERM):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await process.wait() == 143


async def test_signals_early_and_twice_exit_by_the_convention(tmp_path: Path) -> None:
    fake = FakeCcm(generate=True, latency=0.05, api_token=TOKEN)
    sids = [f"twice{i}" for i in range(3000)]
    job = tmp_path / "calls.db"
    async with fake.serve() as base_url:
        env = environment_for(fake, base_url)
        args = [*COMMAND, "fetch", *sids, "-o", str(job)]
        # While starting up: as soon as the command has its own handlers (SIGTERM's is set
        # after SIGINT's; the interpreter catches SIGINT from its own start).
        async with await anyio.open_process(args, env=env) as process:
            with anyio.fail_after(30):
                while not catches(process.pid, signal.SIGTERM):  # noqa: ASYNC110
                    await anyio.sleep(0.001)
            process.send_signal(signal.SIGINT)
            assert process.stderr is not None
            stderr = b"".join([chunk async for chunk in process.stderr])
            assert await process.wait() == 130, stderr
        assert b"Traceback" not in stderr
        assert b"Aborted" not in stderr
        # Twice, in a burst, mid-fetch: one stop, its last commit whole.
        async with await anyio.open_process(args, env=env) as process:
            with anyio.fail_after(60):
                while fake.request_count < 100:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            process.send_signal(signal.SIGINT)
            process.send_signal(signal.SIGINT)
            process.send_signal(signal.SIGTERM)
            assert process.stderr is not None
            stderr = b"".join([chunk async for chunk in process.stderr])
            status = await process.wait()
    assert b"Traceback" not in stderr
    # The first the process took is the one it stops by (the kernel may hand it SIGTERM first).
    [first] = [name for name in ("SIGINT", "SIGTERM") if f"stopped by {name}:".encode() in stderr]
    assert status == {"SIGINT": 130, "SIGTERM": 143}[first]
    assert b"run the same command again to continue" in stderr
    done = sum(1 for state, _ in job_rows(job).values() if state != "pending")
    assert f"ok {done}, ".encode() in stderr
