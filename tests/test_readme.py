"""Every runnable example in the README runs, against FakeCcm on a socket."""

from __future__ import annotations

import os
import re
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


def test_the_readme_has_runnable_examples() -> None:
    assert len(SCRIPTS) >= 4
