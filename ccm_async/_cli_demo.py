"""The runs of ``ccm-async demo`` and ``ccm-async fake-server``, on the built-in fake API.

Both serve :class:`~ccm_async.testing.FakeCcm` on a local socket (uvicorn, of
the ``cli`` extra). The demo fetches from it with injected failures that the
retries recover, through the same path as ``fetch`` (``_cli_fetch``), into a
job file in a temporary directory whose status ends the run; the directory is
removed afterwards unless kept.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import anyio
import click

from ccm_async import AsyncCcmClient, RateLimit
from ccm_async._cli_fetch import FetchOptions, fetch_and_summarize
from ccm_async._cli_status import run_status
from ccm_async._cli_summary import stderr_console
from ccm_async._convert import ApiVersion
from ccm_async.testing import FakeCcm, Fault

__all__ = ["run_demo", "serve_fake"]


def run_demo(
    *,
    calls: int,
    fail_rate: float,
    latency_ms: float,
    concurrency: int,
    keep: bool,
    api_version: ApiVersion = "v2",
) -> int:
    """Fetch ``calls`` generated calls from the fake API (its ``api_version`` paths)
    into a job file; the exit status."""
    fake = FakeCcm(generate=True, latency=latency_ms / 1000, seed=1)
    # Never more failures for one SID than retries, so every SID recovers.
    fake.fail_randomly(Fault.server_error(), rate=fail_rate * 0.6, max_per_sid=2)
    fake.fail_randomly(Fault.rate_limited(), rate=fail_rate * 0.2, max_per_sid=2)
    fake.fail_randomly(Fault.disconnect(), rate=fail_rate * 0.2, max_per_sid=2)
    stderr_console().print(
        f"demo: {calls:,} calls from the fake CCM API ({latency_ms:g} ms latency, "
        f"{fail_rate:.0%} injected failures: 500s, 429s, dropped connections; "
        f"API {api_version})"
    )
    out_dir = Path(tempfile.mkdtemp(prefix="ccm-async-demo-"))
    try:
        return _demo(
            fake, out_dir, calls=calls, concurrency=concurrency, api_version=api_version, keep=keep
        )
    finally:
        if not keep:
            shutil.rmtree(out_dir, ignore_errors=True)


def _demo(
    fake: FakeCcm,
    out_dir: Path,
    *,
    calls: int,
    concurrency: int,
    api_version: ApiVersion,
    keep: bool,
) -> int:
    """Serve ``fake``, fetch from it into ``out_dir``'s job file, show its status."""
    options = FetchOptions(
        input=str(_demo_input(out_dir, calls)),
        output=str(out_dir / "calls.db"),
        concurrency=concurrency,
    )
    err = stderr_console()

    async def serve_and_fetch() -> int:
        async with fake.serve() as base_url:
            client = AsyncCcmClient(
                **fake.credentials,
                base_url=base_url,
                max_concurrency=concurrency,
                api_version=api_version,
            )
            return await fetch_and_summarize(client, options)

    status = anyio.run(serve_and_fetch)
    err.print(f"{fake.request_count:,} requests served; ccm-async status {options.output}:")
    run_status(str(options.output))
    if keep:
        err.print(f"kept: {out_dir} (the input sids.txt and the job file calls.db)")
    else:
        err.print(f"removed {out_dir} (--keep keeps it)")
    return status


def _demo_input(out_dir: Path, calls: int) -> Path:
    path = out_dir / "sids.txt"
    with path.open("w", encoding="utf-8") as file:
        for i in range(calls):
            file.write(hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest() + "\n")
    return path


def serve_fake(*, port: int, fail_rate: float, latency_ms: float, rate: RateLimit | None) -> None:
    """Serve the fake API on 127.0.0.1 until Ctrl-C, after printing how to point a client at it."""
    fake = FakeCcm(generate=True, latency=latency_ms / 1000, rate_limit=rate)
    if fail_rate:
        fake.fail_randomly(Fault.server_error(), rate=fail_rate)

    async def serve() -> None:
        async with fake.serve(port=port) as base_url:
            click.echo(f"fake CCM API at {base_url} (its own test credentials):")
            click.echo(f"export EXOTEL_CCM_BASE_URL={base_url}")
            for name, value in fake.credentials.items():
                click.echo(f"export EXOTEL_{name.upper()}={value}")
            sys.stdout.flush()
            await anyio.sleep_forever()

    try:
        anyio.run(serve)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
