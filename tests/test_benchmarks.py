"""The benchmark scripts run in --quick mode (asserting nothing about speed): they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("matplotlib")

RUN = Path(__file__).parent.parent / "benchmarks" / "run.py"


def test_quick_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    for client in ("httpx", "aiohttp", "ccm_async", "ccm_async+aiohttp"):
        assert results["throughput"]["table"][client]["10"]["errors"] == 0
    assert results["slow_server"]["httpx"]["errors"] == 0
    assert results["slow_server"]["ccm_async"]["errors"] == 0
    assert results["memory"]["ok"] == results["memory"]["count"]
    assert results["economy"]["five_percent"]["failed"] == 0
    assert results["economy"]["outage"]["failed"] == results["economy"]["outage"]["sids"]
    assert [run["failed"] for run in results["pacing"]["runs"]] == [0, 0]
    assert results["construction"]["clients"] == 100
    assert results["command"]["fetch"]["sids"] == 500
    assert results["command"]["status"]["rows"] == 10_000
    assert results["telemetry"]["sdk_in_memory"]["on_us"] > 0
    assert (tmp_path / "throughput.png").read_bytes().startswith(b"\x89PNG")
    assert "ccm_async / tuned httpx" in done.stdout


def test_quick_web_benchmark_serves_both_apps() -> None:
    web = RUN.parent / "web.py"
    done = subprocess.run(
        [sys.executable, str(web), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for app in ("ccm_async", "plain httpx"):
        for run in results[app].values():
            assert sum(run["statuses"].values()) == run["requests"]
            assert run["statuses"].get("422", 0) > 0  # the invalid SIDs of the load
    # The library retries the injected 500s away; it never answers one itself.
    assert all("500" not in run["statuses"] for run in results["ccm_async"].values())
