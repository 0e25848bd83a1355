"""The ccm-async command, through its real entry point, against FakeCcm on a socket."""

from __future__ import annotations

import base64
import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
import pytest

from ccm_async import CallDetails, Recording
from ccm_async._cli_files import CSV_COLUMNS
from ccm_async.testing import FakeCcm, Fault

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

TOKEN = "cli-secret-token-7f3a"


def environment_for(fake: FakeCcm, base_url: str) -> dict[str, str]:
    """The command's environment: the fake's credentials and address."""
    return {
        **os.environ,
        "EXOTEL_API_KEY": fake.api_key,
        "EXOTEL_API_TOKEN": TOKEN,
        "EXOTEL_ACCOUNT_SID": fake.account_sid,
        "EXOTEL_CCM_BASE_URL": base_url,
    }


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeCcm, dict[str, str]]]:
    fake = FakeCcm(generate=True, missing_rate=0.05, api_token=TOKEN)
    async with fake.serve() as base_url:
        env = environment_for(fake, base_url)
        yield fake, env


async def ccm(
    env: Mapping[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [sys.executable, "-m", "ccm_async", *args], input=stdin, env=env, check=False
        )
    for stream in (done.stdout, done.stderr):
        assert TOKEN.encode() not in stream
        assert base64.b64encode(f"fake-api-key:{TOKEN}".encode()) not in stream
    return done


def sids_of(fake: FakeCcm, count: int, *, found: bool) -> list[str]:
    sids = (f"cli{i:05d}" for i in range(100_000))
    return [sid for sid in sids if fake.has_call(sid) == found][:count]


async def test_get(served: tuple[FakeCcm, dict[str, str]]) -> None:
    fake, env = served
    [sid] = sids_of(fake, 1, found=True)
    done = await ccm(env, "get", sid)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["call_sid"] == sid
    [missing] = sids_of(fake, 1, found=False)
    done = await ccm(env, "get", sid, missing)
    assert done.returncode == 1
    assert [call["call_sid"] for call in json.loads(done.stdout)] == [sid]
    assert missing.encode() in done.stderr


async def test_fetch_from_a_file_with_failures(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 60, found=True)
    missing = sids_of(fake, 4, found=False)
    broken = ok[:3]
    for sid in broken:
        fake.fail(sid, Fault.server_error(3046))
    fake.fail_randomly(Fault.server_error(), rate=0.1, max_per_sid=2)
    sids_file = tmp_path / "sids.txt"
    sids_file.write_text("# a day's calls\n" + "\n".join(ok + missing) + "\n\n")
    out = tmp_path / "calls.jsonl"
    done = await ccm(env, "fetch", "-i", str(sids_file), "-o", str(out), "--concurrency", "8")
    assert done.returncode == 1, done.stderr
    written = [json.loads(line)["call_sid"] for line in out.read_text().splitlines()]
    assert sorted(written) == sorted(set(ok) - set(broken))
    errors = Path(f"{out}.errors.tsv").read_text().splitlines()
    failed = {line.split("\t")[0]: line.split("\t")[1] for line in errors}
    assert failed == {
        **dict.fromkeys(broken, "HTTP 500 code 3046"),
        **dict.fromkeys(missing, "HTTP 404 code 3043"),
    }
    summary = done.stderr.decode()
    assert "ok 57, not found 4, failed 3" in summary
    assert "lookups/s" in summary
    assert "━" not in summary  # no progress bar: stderr is not a terminal
    # The errors file feeds back in.
    fake.clear_faults()
    again = tmp_path / "again.jsonl"
    done = await ccm(env, "fetch", "-i", f"{out}.errors.tsv", "-o", str(again))
    assert done.returncode == 1  # the not-found SIDs are still not found
    assert len(again.read_text().splitlines()) == len(broken)


async def test_fetch_from_stdin_to_stdout(served: tuple[FakeCcm, dict[str, str]]) -> None:
    fake, env = served
    ok = sids_of(fake, 5, found=True)
    stdin = ("\n".join(ok) + "\n").encode()
    done = await ccm(env, "fetch", "-i", "-", "--errors", os.devnull, stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["call_sid"] for line in done.stdout.splitlines()) == ok


async def test_csv_output_parses_back(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    fake.add_call(
        CallDetails(
            call_sid="withrecs",
            call_state="terminal",
            recordings=(Recording(url="https://r/1.mp3"), Recording(url="https://r/2.mp3")),
        )
    )
    ok = [*sids_of(fake, 5, found=True), "withrecs"]
    out = tmp_path / "calls.csv"
    done = await ccm(env, "fetch", *ok, "-o", str(out), "--format", "csv")
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert "assigned_agent_details.user_id" in CSV_COLUMNS
    assert sorted(row["call_sid"] for row in rows) == sorted(ok)
    by_sid = {row["call_sid"]: row for row in rows}
    assert by_sid["withrecs"]["recordings"] == "https://r/1.mp3 https://r/2.mp3"
    assert by_sid["withrecs"]["assigned_agent_details.user_id"] == ""
    generated = by_sid[ok[0]]
    assert generated["assigned_agent_details.user_id"]
    assert generated["call_state"] in ("terminal", "active")


async def test_killed_fetch_leaves_whole_lines_and_resume_finishes(
    tmp_path: Path,
) -> None:
    fake = FakeCcm(generate=True, latency=0.01, api_token=TOKEN)
    sids = [f"kill{i:05d}" for i in range(1500)]
    sids_file = tmp_path / "sids.txt"
    sids_file.write_text("\n".join(sids) + "\n")
    out = tmp_path / "calls.jsonl"
    async with fake.serve() as base_url:
        env = environment_for(fake, base_url)
        args = ["fetch", "-i", str(sids_file), "-o", str(out), "--concurrency", "4"]
        async with await anyio.open_process(
            [sys.executable, "-m", "ccm_async", *args], env=env
        ) as process:
            with anyio.fail_after(60):
                while not out.exists() or out.read_text().count("\n") < 100:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        text = out.read_text()
        lines = text.splitlines()
        first_run = {json.loads(line)["call_sid"] for line in lines}  # every line is whole
        assert 100 <= len(first_run) < len(sids)
        requests_before = fake.request_count

        done = await ccm(env, *args, "--resume")
        assert done.returncode == 0, done.stderr
    final = [json.loads(line)["call_sid"] for line in out.read_text().splitlines()]
    assert sorted(final) == sorted(sids)  # each SID exactly once
    resumed = [r.call_sid for r in fake.requests][-(fake.request_count - requests_before) :]
    assert not set(resumed) & first_run  # nothing already written was fetched again
    assert len(resumed) == len(sids) - len(first_run)


async def test_resume_cuts_a_partial_last_line(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 3, found=True)
    out = tmp_path / "calls.jsonl"
    out.write_text(json.dumps({"call_sid": ok[0]}) + "\n" + '{"call_sid": "' + ok[1][:3])
    done = await ccm(env, "fetch", *ok, "-o", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["call_sid"] for line in out.read_text().splitlines()) == ok


async def test_ctrl_c_writes_the_summary_and_exits_130(tmp_path: Path) -> None:
    fake = FakeCcm(generate=True, latency=0.05, api_token=TOKEN)
    out = tmp_path / "calls.jsonl"
    async with fake.serve() as base_url:
        env = environment_for(fake, base_url)
        sids = [f"int{i}" for i in range(2000)]
        args = [sys.executable, "-m", "ccm_async", "fetch", *sids, "-o", str(out)]
        async with await anyio.open_process(args, env=env) as process:
            with anyio.fail_after(60):
                while fake.request_count < 50:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            process.send_signal(signal.SIGINT)
            assert process.stderr is not None
            stderr = b"".join([chunk async for chunk in process.stderr])
            assert await process.wait() == 130
    assert b"ok " in stderr
    assert all(json.loads(line) for line in out.read_text().splitlines())


async def test_usage_and_configuration_errors_exit_2(
    served: tuple[FakeCcm, dict[str, str]],
) -> None:
    fake, env = served
    done = await ccm(env, "fetch")
    assert done.returncode == 2
    done = await ccm(env, "fetch", "x", "--rate", "fast")
    assert done.returncode == 2
    done = await ccm(env, "fetch", "x", "--resume")
    assert done.returncode == 2
    no_credentials = {k: v for k, v in env.items() if not k.startswith("EXOTEL_")}
    done = await ccm(no_credentials, "get", "abc")
    assert done.returncode == 2
    assert b"EXOTEL_API_KEY" in done.stderr
    wrong = {**env, "EXOTEL_API_TOKEN": "wrong-token"}
    before = fake.request_count
    sids = [f"s{i}" for i in range(500)]
    done = await ccm(wrong, "fetch", *sids, "--concurrency", "4", "--errors", os.devnull)
    assert done.returncode == 2
    assert b"region" in done.stderr
    assert fake.request_count - before <= 4
    done = await ccm(wrong, "get", "abc")
    assert done.returncode == 2


async def test_rate_option_and_version(served: tuple[FakeCcm, dict[str, str]]) -> None:
    fake, env = served
    ok = sids_of(fake, 3, found=True)
    done = await ccm(env, "fetch", *ok, "--rate", "600/min", "--errors", os.devnull)
    assert done.returncode == 0, done.stderr
    done = await ccm(env, "--version")
    assert b"ccm-async" in done.stdout


async def test_demo_runs_and_recovers_its_failures(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "EXOTEL_API_TOKEN": TOKEN}
    done = await ccm(env, "demo", "--calls", "300", "--latency-ms", "1", "--fail-rate", "0.1")
    assert done.returncode == 0, done.stderr
    summary = done.stderr.decode()
    assert "ok 300, not found 0, failed 0" in summary
    retries = int(summary.split("retries ")[1].split(";")[0])
    assert retries > 0
    [output] = tmp_path.glob("ccm-async-demo-*/calls.jsonl")
    assert len(output.read_text().splitlines()) == 300


async def test_fake_server_prints_its_own_credentials() -> None:
    env = {**os.environ, "EXOTEL_API_TOKEN": TOKEN}
    args = [sys.executable, "-m", "ccm_async", "fake-server", "--port", "0", "--latency-ms", "1"]
    async with await anyio.open_process(args, env=env) as process:
        assert process.stdout is not None
        text = b""
        with anyio.fail_after(30):
            async for chunk in process.stdout:
                text += chunk
                if text.count(b"\n") >= 5:
                    break
        process.send_signal(signal.SIGINT)
        await process.wait()
    lines = text.decode().splitlines()
    assert lines[1].startswith("export EXOTEL_CCM_BASE_URL=http://127.0.0.1:")
    assert "export EXOTEL_API_TOKEN=fake-api-token" in lines
    assert TOKEN not in text.decode()


async def test_progress_bar_when_stderr_is_a_terminal(
    served: tuple[FakeCcm, dict[str, str]],
) -> None:
    fake, env = served
    ok = sids_of(fake, 20, found=True)
    terminal = {**env, "FORCE_COLOR": "1", "COLUMNS": "120"}
    done = await ccm(terminal, "fetch", *ok, "--errors", os.devnull)
    assert done.returncode == 0, done.stderr
    assert "━" in done.stderr.decode()
    assert "20/20" in done.stderr.decode()
