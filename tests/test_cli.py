"""The ccm-async command, through its real entry point, against FakeCcm on a socket.

The commands' behaviour as a user meets it: get, fetch to JSON lines and CSV,
exit statuses, signals, the summary and its hints, the demo, the fake server,
and a plain install without the cli extra. The job file is in test_cli_jobfile,
what real files and pipes do to a fetch in test_cli_files.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest

from ccm_async import CallDetails, Recording, _command
from ccm_async._cli import _JOB_SUFFIXES
from ccm_async._cli_files import CSV_COLUMNS
from ccm_async._cli_jobfile import JOB_FILE_SUFFIXES
from ccm_async.testing import FakeCcm, Fault
from tests.cli_support import COMMAND, TOKEN, assert_no_secret, ccm, environment_for, sids_of

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

ROOT = Path(__file__).parent.parent


async def test_get_prints_one_json_object_per_line(
    served: tuple[FakeCcm, dict[str, str]],
) -> None:
    fake, env = served
    found = sids_of(fake, 3, found=True)
    [missing] = sids_of(fake, 1, found=False)
    done = await ccm(env, "get", found[0])
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["call_sid"] for line in done.stdout.splitlines()] == found[:1]
    done = await ccm(env, "get", found[0], missing, *found[1:])
    assert done.returncode == 1
    assert [json.loads(line)["call_sid"] for line in done.stdout.splitlines()] == found
    [failure] = done.stderr.decode().splitlines()
    assert failure.startswith(f"{missing}: HTTP 404 code 3043: ")
    # A reader that leaves early (| head -1), well before a pipe's buffer is full of
    # records: a message, not a traceback.
    many = sids_of(fake, 1500, found=True)
    for command in ("get", "fetch"):
        line = f"{' '.join(COMMAND)} {command} {' '.join(many)} | head -1"
        with anyio.fail_after(60):
            piped = await anyio.run_process(
                ["bash", "-o", "pipefail", "-c", line], env=env, check=False
            )
        assert json.loads(piped.stdout)["call_sid"] in many
        assert piped.returncode == 2, piped.stderr
        assert piped.stderr.decode().startswith("error: cannot write stdout: Broken pipe\n")


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
    assert f"errors: {out}.errors.tsv (7 SIDs, ready for -i)" in summary
    assert "━" not in summary  # no progress bar: stderr is not a terminal
    # The errors file feeds back in.
    fake.clear_faults()
    again = tmp_path / "again.jsonl"
    done = await ccm(env, "fetch", "-i", f"{out}.errors.tsv", "-o", str(again))
    assert done.returncode == 1  # the not-found SIDs are still not found
    assert len(again.read_text().splitlines()) == len(broken)


async def test_fetch_to_stdout_names_its_errors_file_and_removes_an_empty_one(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    ok = sids_of(fake, 5, found=True)
    [missing] = sids_of(fake, 1, found=False)
    done = await ccm(env, "fetch", "-i", "-", stdin=("\n".join(ok) + "\n").encode(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["call_sid"] for line in done.stdout.splitlines()) == ok
    assert "errors: none (no errors file written)" in done.stderr.decode()
    assert not list(tmp_path.iterdir())
    done = await ccm(env, "fetch", ok[0], missing, cwd=tmp_path)
    assert done.returncode == 1
    assert "errors: ccm-async-errors.tsv (1 SIDs, ready for -i)" in done.stderr.decode()
    assert (tmp_path / "ccm-async-errors.tsv").read_text().startswith(f"{missing}\tHTTP 404")


async def test_csv_output_by_its_name_parses_back(
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
    done = await ccm(env, "fetch", *ok, "-o", str(out))  # no --format: the name says CSV
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


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_writes_the_summary_and_exits_by_convention(
    tmp_path: Path, stop: signal.Signals
) -> None:
    fake = FakeCcm(generate=True, latency=0.05, api_token=TOKEN)
    out = tmp_path / "calls.jsonl"
    async with fake.serve() as base_url:
        env = environment_for(fake, base_url)
        sids = [f"int{i}" for i in range(2000)]
        args = [*COMMAND, "fetch", *sids, "-o", str(out)]
        async with await anyio.open_process(args, env=env) as process:
            with anyio.fail_after(60):
                while fake.request_count < 50:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            process.send_signal(stop)
            assert process.stderr is not None
            stderr = b"".join([chunk async for chunk in process.stderr])
            assert await process.wait() == {signal.SIGINT: 130, signal.SIGTERM: 143}[stop]
    assert f"stopped by {stop.name}: run it again with --resume to continue".encode() in stderr
    written = [json.loads(line)["call_sid"] for line in out.read_text().splitlines()]
    assert f"ok {len(written)}, ".encode() in stderr  # the summary counts what was written


async def test_usage_and_configuration_errors_exit_2(
    served: tuple[FakeCcm, dict[str, str]],
) -> None:
    fake, env = served
    for args in (
        ["fetch"],
        ["fetch", "x", "--rate", "fast"],
        ["fetch", "x", "--resume"],
        ["fetch", "x", "-o", "-", "--resume"],
        ["fetch", "x", "-o", "a.jsonl", "--resume", "--overwrite"],
        ["fetch", "x", "--max-pause", "forever"],
        ["fetch", "x", "--max-pause", "2d"],
    ):
        done = await ccm(env, *args)
        assert done.returncode == 2, args
        assert b"Traceback" not in done.stderr
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


async def test_an_unreachable_host_stops_the_run_early_and_names_it(tmp_path: Path) -> None:
    fake = FakeCcm(generate=True, api_token=TOKEN)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"  # closed: nothing listens there now
    sids = [f"gone{i}" for i in range(2000)]
    out = tmp_path / "calls.jsonl"
    done = await ccm(environment_for(fake, base_url), "fetch", *sids, "-o", str(out))
    assert done.returncode == 2
    message = done.stderr.decode()
    assert f"error: no response from {base_url} to the first 8 lookups" in message
    failed = len(Path(f"{out}.errors.tsv").read_text().splitlines())
    assert 8 <= failed < 100  # it stopped early, after recording what it had
    assert f"failed {failed}," in message


async def test_the_summary_shows_budget_denials_with_a_hint(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    fake.fail_randomly(Fault.server_error(), rate=1.0)
    sids = sids_of(fake, 400, found=True)
    done = await ccm(env, "fetch", *sids, "-o", str(tmp_path / "calls.jsonl"))
    assert done.returncode == 1
    summary = done.stderr.decode()
    assert "failed 400," in summary
    assert "the retry budget refused " in summary
    assert "run the same command again to retry the failed SIDs" in summary


async def test_the_summary_shows_rate_limit_waits_with_a_hint(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    sids = sids_of(fake, 60, found=True)
    fake.fail_randomly(Fault.rate_limited(retry_after=0.2), rate=0.3, max_per_sid=1)
    out = str(tmp_path / "calls.jsonl")
    # Lookups start while another's 429 pauses the client: they wait for the pause.
    done = await ccm(env, "fetch", *sids, "-o", out, "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    assert "waited for the rate limit " in done.stderr.decode()
    assert "--rate N/min below the account's limit" in done.stderr.decode()


async def test_a_pause_longer_than_max_pause_stops_the_run_resumably(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    sids = sids_of(fake, 40, found=True)
    fake.fail_randomly(Fault.rate_limited(retry_after=3600), rate=1.0)
    job = tmp_path / "calls.db"
    done = await ccm(env, "fetch", *sids, "-o", str(job), "--max-pause", "10m")
    assert done.returncode == 1
    assert "stopped: the API asks for a pause of 3,600s" in done.stderr.decode()
    assert "longer than --max-pause 600s: run the same command again after " in (
        done.stderr.decode()
    )
    fake.clear_faults()
    done = await ccm(env, "fetch", "-o", str(job))  # the job file continues without input
    assert done.returncode == 0, done.stderr
    assert "ok 40, not found 0, failed 0" in done.stderr.decode()


async def test_a_pause_within_max_pause_is_waited_out(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    sids = sids_of(fake, 20, found=True)
    # Every attempt of one lookup meets a 429: the fetch asks again after the pause.
    fake.fail(sids[0], Fault.rate_limited(retry_after=1), times=4)
    done = await ccm(env, "fetch", *sids, "-o", str(tmp_path / "calls.jsonl"), "--max-pause", "1m")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    written = [json.loads(line)["call_sid"] for line in lines]
    assert sorted(written) == sorted(sids)


async def test_messages_are_not_wrapped_off_a_terminal(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    _, env = served
    deep = tmp_path / ("long-directory-name-" * 6) / "missing" / "calls.jsonl"
    done = await ccm({**env, "COLUMNS": "40"}, "fetch", "abc", "-o", str(deep))
    assert done.returncode == 2
    [line] = done.stderr.decode().splitlines()
    assert line.startswith(f"error: cannot write {deep}: ")


async def test_rate_option_and_version(served: tuple[FakeCcm, dict[str, str]]) -> None:
    fake, env = served
    ok = sids_of(fake, 3, found=True)
    done = await ccm(env, "fetch", *ok, "--rate", "600/min", "--errors", os.devnull)
    assert done.returncode == 0, done.stderr
    done = await ccm(env, "--version")
    assert b"ccm-async" in done.stdout


async def test_help_names_every_file_a_command_writes(
    served: tuple[FakeCcm, dict[str, str]],
) -> None:
    _, env = served
    done = await ccm(env, "fetch", "--help")
    text = " ".join(done.stdout.decode().split())
    for written in ("OUTPUT.db", "OUTPUT.jsonl", "OUTPUT.errors.tsv", "./ccm-async-errors.tsv"):
        assert written in text
    for command in ("get", "fake-server"):
        done = await ccm(env, command, "--help")
        assert "Writes no file." in " ".join(done.stdout.decode().split()), command
    done = await ccm(env, "status", "--help")
    assert "Writes no file (SQLite, as for any reader, may add JOB_FILE-wal" in " ".join(
        done.stdout.decode().split()
    )
    done = await ccm(env, "export", "--help")
    assert "the only file it writes" in " ".join(done.stdout.decode().split())
    done = await ccm(env, "demo", "--help")
    assert "removed at the end unless --keep" in " ".join(done.stdout.decode().split())


async def test_the_command_and_the_job_file_agree_on_its_names() -> None:
    assert _JOB_SUFFIXES == JOB_FILE_SUFFIXES


async def test_demo_recovers_its_failures_into_a_job_file_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "EXOTEL_API_TOKEN": TOKEN}
    args = ["demo", "--calls", "300", "--latency-ms", "1", "--fail-rate", "0.1"]
    done = await ccm(env, *args)
    assert done.returncode == 0, done.stderr
    summary = done.stderr.decode()
    assert "ok 300, not found 0, failed 0" in summary
    retries = int(summary.split("retries ")[1].split(";")[0])
    assert retries > 0
    assert "ok 300, not found 0, failed 0, pending 0" in done.stdout.decode()  # its status
    assert not list(tmp_path.iterdir())
    assert "(--keep keeps it)" in summary
    assert "API v2)" in summary
    done = await ccm(env, *args, "--keep", "--api-version", "v3")
    assert done.returncode == 0, done.stderr
    assert "API v3)" in done.stderr.decode()
    [job] = tmp_path.glob("ccm-async-demo-*/calls.db")
    assert f"kept: {job.parent}" in done.stderr.decode()
    status = await ccm(env, "status", str(job))
    assert "ok 300, not found 0, failed 0, pending 0" in status.stdout.decode()
    with contextlib.closing(sqlite3.connect(job)) as db:
        calls = [json.loads(call) for (call,) in db.execute("SELECT call FROM calls")]
    assert len(calls) == 300
    assert all(call["legs_url"].endswith(f"/calls/{call['call_sid']}/legs") for call in calls)


async def test_fake_server_prints_its_own_credentials() -> None:
    env = {**os.environ, "EXOTEL_API_TOKEN": TOKEN}
    args = [*COMMAND, "fake-server", "--port", "0", "--latency-ms", "1"]
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
    assert_no_secret(text)


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


async def test_without_the_cli_extra_the_command_says_how_to_install_it() -> None:
    # No site-packages: the package alone, as a plain install without [cli] has it.
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import runpy; "
    script += "runpy.run_module('ccm_async', run_name='__main__')"
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-I", "-S", "-c", script], check=False)
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr
    assert b"pip install 'ccm-async[cli]'" in done.stderr
    assert b"pip install '.[cli]'" in done.stderr


async def test_the_console_script_names_the_missing_parts_of_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "rich" else found(name)
    )
    with pytest.raises(SystemExit) as stopped:
        _command.main()
    assert stopped.value.code == 2
    assert "needs the cli extra (rich missing)" in capsys.readouterr().err


async def test_a_fetch_to_stdout_by_dash_keeps_its_errors_beside_it(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    [missing] = sids_of(fake, 1, found=False)
    done = await ccm(env, "fetch", "-o", "-", missing, cwd=tmp_path)
    assert done.returncode == 1
    assert [path.name for path in tmp_path.iterdir()] == ["ccm-async-errors.tsv"]
