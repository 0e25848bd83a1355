"""Every runnable example in the README runs, against FakeCcm on a socket."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from ccm_async.testing import FakeCcm

README = (Path(__file__).parent.parent / "README.md").read_text()
SCRIPTS = [
    block
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    if "anyio.run(" in block
]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("script", SCRIPTS, ids=[f"example-{i}" for i in range(len(SCRIPTS))])
async def test_readme_example_runs(script: str) -> None:
    fake = FakeCcm(generate=True)
    async with fake.serve() as base_url:
        env = {
            **os.environ,
            "EXOTEL_API_KEY": fake.api_key,
            "EXOTEL_API_TOKEN": fake.api_token,
            "EXOTEL_ACCOUNT_SID": fake.account_sid,
            "EXOTEL_CCM_BASE_URL": base_url,
        }
        with anyio.fail_after(60):
            done = await anyio.run_process([sys.executable, "-c", script], env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout
    assert fake.request_count > 0
    if "ConsoleSpanExporter" in script:  # the Observability example: what it prints
        assert done.stdout.count(b'"name": "ccm_async.get_call"') == 1
        assert b'"name": "ccm_async.lookups"' in done.stdout


TEST_EXAMPLES = [
    block
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    if "async def test_" in block
]


def test_readme_test_examples_pass(tmp_path: Path) -> None:
    for number, block in enumerate(TEST_EXAMPLES):
        (tmp_path / f"test_example_{number}.py").write_text(block)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # 5 would mean nothing ran
    assert " passed" in done.stdout


COMMANDS = [
    line
    for block in re.findall(r"```shell\n(.*?)```", README, flags=re.DOTALL)
    for line in block.splitlines()
    if line.strip()
]
QUERIES = [
    block
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    if "sqlite3.connect(" in block
]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_readme_command_examples_run_in_order(tmp_path: Path) -> None:
    fake = FakeCcm(generate=True)
    sids = [sid for sid in (f"readme{i:03d}" for i in range(200)) if fake.has_call(sid)][:30]
    (tmp_path / "sids.txt").write_text("\n".join(sids) + "\n")
    async with fake.serve() as base_url:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "EXOTEL_API_KEY": fake.api_key,
            "EXOTEL_API_TOKEN": fake.api_token,
            "EXOTEL_ACCOUNT_SID": fake.account_sid,
            "EXOTEL_CCM_BASE_URL": base_url,
        }
        for command in COMMANDS:
            with anyio.fail_after(60):
                done = await anyio.run_process(
                    ["bash", "-c", command], env=env, cwd=tmp_path, check=False
                )
            assert done.returncode == 0, (command, done.stderr.decode())
    assert fake.request_count == len(sids)
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == len(sids)
    for query in QUERIES:
        done = await anyio.run_process([sys.executable, "-c", query], cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert sorted(line.split()[0] for line in done.stdout.decode().splitlines()) == sids


WEB_BACKEND = [
    block
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    if "FastAPI(" in block or "class CallWatch" in block
]


def test_the_readme_s_web_backend_is_the_tested_example_app() -> None:
    """examples/fastapi_app.py runs in tests/test_example_app.py and
    tests/test_example_events.py; the README shows its code as it is, in two parts."""
    source = (Path(__file__).parent.parent / "examples" / "fastapi_app.py").read_text()
    code = source.split("from __future__ import annotations\n\n", 1)[1]
    assert len(WEB_BACKEND) == 2
    assert "\n\n\n".join(block.rstrip("\n") for block in WEB_BACKEND) + "\n" == code


def test_the_readme_has_runnable_examples() -> None:
    assert len(SCRIPTS) >= 4
    assert len(TEST_EXAMPLES) >= 1
    assert len(COMMANDS) >= 5
    assert len(QUERIES) == 1
