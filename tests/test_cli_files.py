"""What real files, pipes and records do to ``ccm-async fetch``: each case from the field.

A record with any string a server can send, a killed or disk-full run and its
resume, outputs that exist or do not match, inputs from Excel, CRM exports,
pipes and FIFOs, and outputs that cannot be written: the command never
crashes, never loses or duplicates a record, and says which file and why.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import pytest

from ccm_async import CallDetails
from ccm_async._cli_files import CSV_COLUMNS
from ccm_async.testing import FakeCcm
from tests.cli_support import (
    COMMAND,
    TOKEN,
    catches,
    ccm,
    environment_for,
    fetched_sids,
    job_rows,
    sids_of,
    unmeasured,
)

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

# What a server's string field can hold: a lone surrogate, the separators
# str.splitlines() splits on, a NUL, CR, quotes and commas, astral characters.
AWKWARD = [
    "x\ud800y",
    "a\u2028b\u2029c\x85d",
    'quote " comma , newline \n cr \r tab \t nul \x00',
    "emoji 😀 and Ω",
    "\ufeffbom inside",
    "",
]


def awkward_calls(fake: FakeCcm, count: int) -> list[str]:
    sids = [f"awk{i:04d}" for i in range(count)]
    for i, sid in enumerate(sids):
        fake.add_call(
            CallDetails(call_sid=sid, call_state="terminal", custom_field=AWKWARD[i % len(AWKWARD)])
        )
    return sids


def read_jsonl(path: Path) -> dict[str, dict[str, object]]:
    records = [json.loads(line) for line in path.read_bytes().split(b"\n") if line]
    by_sid = {record["call_sid"]: record for record in records}
    assert len(by_sid) == len(records)  # each SID once
    return by_sid


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    by_sid = {row["call_sid"]: row for row in rows}
    assert len(by_sid) == len(rows)
    return by_sid


async def test_any_string_a_server_sends_is_written_and_read_back(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    sids = awkward_calls(fake, 60)
    jsonl, table = tmp_path / "calls.jsonl", tmp_path / "calls.csv"
    for out in (jsonl, table):
        done = await ccm(env, "fetch", *sids, "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert "ok 60, not found 0, failed 0" in done.stderr.decode()
    by_sid = read_jsonl(jsonl)
    assert [by_sid[sid]["custom_field"] for sid in sids] == [
        AWKWARD[i % len(AWKWARD)] for i in range(60)
    ]
    rows = read_csv(table)
    assert sorted(rows) == sorted(sids)
    # A lone surrogate has no UTF-8: CSV writes U+FFFD, and everything else as sent.
    assert rows[sids[0]]["custom_field"] == "x\ufffdy"
    assert [rows[sid]["custom_field"] for sid in sids[1:6]] == AWKWARD[1:6]
    # Each resumes cleanly: nothing to fetch again, nothing duplicated.
    before = fake.request_count
    for out in (jsonl, table):
        done = await ccm(env, "fetch", *sids, "-o", str(out), "--resume")
        assert done.returncode == 0, done.stderr
        assert "ok 0, not found 0, failed 0" in done.stderr.decode()
    assert fake.request_count == before
    assert len(read_jsonl(jsonl)) == len(read_csv(table)) == 60


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".db"])
async def test_a_run_cut_off_by_a_full_disk_stops_with_2_and_resumes_exactly(
    tmp_path: Path, suffix: str
) -> None:
    fake = FakeCcm(generate=True, api_token=TOKEN)
    sids = awkward_calls(fake, 400)
    out = tmp_path / f"calls{suffix}"
    args = ["fetch", *sids, "-o", str(out), "--concurrency", "4"]
    # SQLite needs room for its shared-memory index and a few pages before the first result.
    low = 100_000 if suffix == ".db" else 5_000
    limit = random.Random(suffix).randrange(low, low + 100_000)
    # Writes past ``limit`` bytes fail with EFBIG, mid-record, as on a full disk.
    small_disk = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    readers: dict[str, Callable[[Path], Mapping[str, object]]] = {
        ".jsonl": read_jsonl,
        ".csv": read_csv,
        ".db": ok_in_job_file,
    }
    read = readers[suffix]
    async with fake.serve() as base_url:
        env = environment_for(fake, base_url)
        with anyio.fail_after(120):
            done = await anyio.run_process(
                [COMMAND[0], "-c", small_disk, *COMMAND[1:], *args],
                env=unmeasured(env),  # its coverage data could not be written whole either
                check=False,
            )
        assert done.returncode == 2, done.stderr
        # SQLite reports EFBIG as an I/O error (ENOSPC, a full disk, as "database or disk is full").
        reason = "disk I/O error" if suffix == ".db" else "File too large"
        assert f"error: cannot write {out}: {reason}" in done.stderr.decode(), done.stderr
        written = len(read(out))
        assert 0 < written < len(sids)
        assert f"ok {written}, " in done.stderr.decode()  # only what was written
        requests_before = fake.request_count
        done = await ccm(env, *args, *([] if suffix == ".db" else ["--resume"]))
        assert done.returncode == 0, done.stderr
    assert sorted(read(out)) == sorted(sids)
    assert len(fetched_sids(fake, requests_before)) == len(sids) - written


def ok_in_job_file(path: Path) -> dict[str, tuple[str, int]]:
    return {sid: row for sid, row in job_rows(path).items() if row[0] == "ok"}


async def test_resume_cuts_a_partial_record_a_quoted_newline_included(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 4, found=True)
    out = tmp_path / "calls.csv"
    done = await ccm(env, "fetch", ok[0], "-o", str(out))
    assert done.returncode == 0, done.stderr
    whole = out.read_bytes()
    # Half a row whose quoted field holds a newline: it looks like two lines.
    out.write_bytes(whole + f'{ok[1]},terminal,"half\nof a field,'.encode())
    done = await ccm(env, "fetch", *ok, "-o", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert sorted(read_csv(out)) == sorted(ok)
    fresh = tmp_path / "fresh.csv"  # --resume of an output not written yet: a whole new one
    done = await ccm(env, "fetch", *ok, "-o", str(fresh), "--resume")
    assert done.returncode == 0, done.stderr
    assert sorted(read_csv(fresh)) == sorted(ok)
    jsonl = tmp_path / "calls.jsonl"
    jsonl.write_text(json.dumps({"call_sid": ok[0]}) + "\n" + '{"call_sid": "' + ok[1][:3])
    done = await ccm(env, "fetch", *ok, "-o", str(jsonl), "--resume")
    assert done.returncode == 0, done.stderr
    assert sorted(read_jsonl(jsonl)) == sorted(ok)


async def test_existing_and_mismatched_outputs_are_refused_not_truncated(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 2, found=True)
    jsonl = tmp_path / "calls.jsonl"
    done = await ccm(env, "fetch", ok[0], "-o", str(jsonl))
    assert done.returncode == 0, done.stderr
    kept = jsonl.read_bytes()
    before = fake.request_count
    refusals = {
        ("-o", str(jsonl)): "exists: --resume continues it, --overwrite replaces it",
        ("-o", str(jsonl), "--format", "csv"): "is named as jsonl, but --format is csv",
        ("-o", str(jsonl), "--format", "csv", "--resume"): "is named as jsonl",
    }
    csv_named = tmp_path / "calls.csv"
    csv_named.write_bytes(kept)  # JSON lines under a CSV name
    refusals[("-o", str(csv_named), "--resume")] = "holds jsonl, not csv: give a jsonl output name"
    text = tmp_path / "notes.jsonl"
    text.write_text("my notes\n")
    refusals[("-o", str(text), "--resume")] = "is not a ccm-async JSON lines or CSV output"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"call_sid": "a"}\n{"no": "sid"}\n{"call_sid": "b"}\n')
    refusals[("-o", str(broken), "--resume")] = "line 2: not a whole call record"
    header = ",".join(CSV_COLUMNS)
    short_row = tmp_path / "short.csv"
    short_row.write_text(f"{header}\n{ok[0]},terminal\n")
    refusals[("-o", str(short_row), "--resume")] = "line 2: not a whole call record"
    other_csv = tmp_path / "other.csv"
    other_csv.write_text(header.replace("call_state", "state") + "\n")
    refusals[("-o", str(other_csv), "--resume")] = "its CSV header is not ccm-async's"
    refusals[("-i", str(tmp_path / "none.txt"))] = "cannot read"
    for args, reason in refusals.items():
        done = await ccm(env, "fetch", *ok, *args)
        assert done.returncode == 2, args
        assert reason in done.stderr.decode(), args
        assert b"Traceback" not in done.stderr
    assert fake.request_count == before  # refused before any request
    assert jsonl.read_bytes() == kept
    done = await ccm(env, "fetch", ok[1], "-o", str(jsonl), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert list(read_jsonl(jsonl)) == [ok[1]]


async def test_input_from_excel_a_crm_export_and_comments(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 6, found=True)
    excel = tmp_path / "excel.txt"
    excel.write_bytes(
        b"\xef\xbb\xbf"
        + f"{ok[0]}\r\n  {ok[1]}  \r\n\r\n# a comment\r\n{ok[2]}\t2024-01-01\r\n".encode()
    )
    crm = tmp_path / "export.csv"
    crm.write_bytes(
        b"\xef\xbb\xbfname,call_sid,notes\r\n"
        + "".join(f'"Caller, {i}",{sid},"two\nlines"\r\n' for i, sid in enumerate(ok[3:])).encode()
    )
    out = tmp_path / "calls.jsonl"
    done = await ccm(env, "fetch", "-i", str(excel), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(read_jsonl(out)) == sorted(ok[:3])
    out.unlink()
    done = await ccm(env, "fetch", "-i", str(crm), "--column", "call_sid", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(read_jsonl(out)) == sorted(ok[3:])
    done = await ccm(env, "fetch", "-i", str(crm), "--column", "sid", "-o", str(out), "--overwrite")
    assert done.returncode == 2
    assert "no column 'sid' in its header (columns: name, call_sid, notes)" in done.stderr.decode()


async def test_a_line_not_utf8_is_named_before_any_request(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 3, found=True)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(f"{ok[0]}\n{ok[1]}\ncaf\xe9\n{ok[2]}\n".encode("latin-1"))
    for output in ("calls.jsonl", "calls.db"):
        done = await ccm(env, "fetch", "-i", str(latin1), "-o", str(tmp_path / output))
        assert done.returncode == 2
        [message] = done.stderr.decode().splitlines()
        assert message == (
            f"error: {latin1}, line 3: not UTF-8 (byte 0xe9 at column 4); save the file as UTF-8"
        )
    assert fake.request_count == 0
    assert not (tmp_path / "calls.jsonl").exists()


async def test_pipes_process_substitution_and_fifos_are_read_once(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 30, found=True)
    listing = "\n".join(ok)
    out = tmp_path / "calls.jsonl"
    script = f'{" ".join(COMMAND)} fetch -i <(printf "%s\\n" {" ".join(ok)}) -o {out}'
    with anyio.fail_after(60):
        done = await anyio.run_process(["bash", "-c", script], env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(read_jsonl(out)) == sorted(ok)
    fifo = tmp_path / "sids.fifo"
    os.mkfifo(fifo)
    out.unlink()
    args = [*COMMAND, "fetch", "-i", str(fifo), "-o", str(out)]
    async with await anyio.open_process(args, env=env) as process:
        with anyio.fail_after(30):
            await anyio.Path(fifo).write_text(listing + "\n")
            assert await process.wait() == 0
    assert sorted(read_jsonl(out)) == sorted(ok)
    # A FIFO nobody writes to: the command still stops on SIGTERM.
    args[-1] = str(tmp_path / "never.jsonl")
    async with await anyio.open_process(args, env=env) as process:
        with anyio.fail_after(30):
            while not catches(process.pid, signal.SIGTERM):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await process.wait() == 143


@pytest.mark.parametrize(
    # /sys refuses new files even to root, as a read-only filesystem would.
    "output",
    ["missing-dir/calls.jsonl", "a-file/calls.jsonl", "a-dir", "/sys/calls.jsonl", "/dev/full"],
)
async def test_outputs_that_cannot_be_written_exit_2_naming_them(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path, output: str
) -> None:
    fake, env = served
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-dir").mkdir()
    path = output if output.startswith("/") else str(tmp_path / output)
    done = await ccm(env, "fetch", *sids_of(fake, 3, found=True), "-o", path)
    assert done.returncode == 2
    assert f"error: cannot write {path}: " in done.stderr.decode()
    assert b"Traceback" not in done.stderr
    if output == "/dev/full":  # only a write finds it full: nothing counted as written
        assert "ok 0, not found 0, failed 0" in done.stderr.decode()
    else:
        assert fake.request_count == 0  # checked before the first request
    for job in ("missing-dir/calls.db", "a-file/calls.db"):
        done = await ccm(env, "fetch", "abc", "-o", str(tmp_path / job))
        assert done.returncode == 2
        assert f"cannot open {tmp_path / job}" in done.stderr.decode()


async def test_an_errors_file_that_cannot_be_written_exits_2(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    errors = tmp_path / "missing" / "errors.tsv"
    out = tmp_path / "calls.jsonl"
    done = await ccm(env, "fetch", "abc", "-o", str(out), "--errors", str(errors))
    assert done.returncode == 2
    assert f"error: cannot write {errors}: No such file or directory" in done.stderr.decode()
    assert fake.request_count == 0
    done = await ccm(env, "fetch", "abc", "-o", str(out), "--errors", str(out), "--overwrite")
    assert done.returncode == 2
    assert f"error: {out} cannot be both the output and the errors file" in done.stderr.decode()
