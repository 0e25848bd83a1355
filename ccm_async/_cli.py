"""The ``ccm-async`` command's arguments: bulk fetch to a file, the demo, the fake server.

Shipped as the ``cli`` extra (click for arguments, rich for progress and the
summary); the library itself never imports this module. Credentials come from
the environment only (``AsyncCcmClient.from_env``): a token on the command line
would land in shell history.

Each command hands its arguments to its run, imported only when it runs, so
``--version`` and ``--help`` load click alone: ``_cli_get`` (get),
``_cli_fetch`` (fetch, with ``_cli_files`` and ``_cli_summary``) and
``_cli_demo`` (demo, fake-server).

Exit status: 0 when every SID succeeded, 1 when some failed, 2 for usage and
configuration errors (wrong credentials or region included), 130 on Ctrl-C,
after the summary.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

import click

from ccm_async._version import __version__

if TYPE_CHECKING:
    from ccm_async._throttle import RateLimit

__all__ = ["cli", "main"]


def main() -> None:
    """The console script's entry point."""
    cli(prog_name="ccm-async")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ccm-async")
def cli() -> None:
    """Look up Exotel CCM call details in bulk.

    Credentials come from the environment: EXOTEL_API_KEY, EXOTEL_API_TOKEN,
    EXOTEL_ACCOUNT_SID, and EXOTEL_REGION (sg or in) or EXOTEL_CCM_BASE_URL.
    """


_RATE_UNITS: Final = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _parse_rate(_: click.Context, __: click.Parameter, value: str | None) -> RateLimit | None:
    if value is None:
        return None
    from ccm_async._errors import ConfigurationError
    from ccm_async._throttle import RateLimit

    count, _slash, unit = value.partition("/")
    per = _RATE_UNITS.get(unit or "min")
    if per is None or not (count.isascii() and count.isdigit()):
        raise click.BadParameter("expected N/min, N/s or N/h, e.g. 200/min")
    try:
        return RateLimit(requests=int(count), per=per)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from exc


@cli.command()
@click.argument("sids", nargs=-1, required=True)
def get(sids: tuple[str, ...]) -> None:
    """Print the details of each call SID as JSON (the API's field names)."""
    from ccm_async._cli_fetch import client_from_env
    from ccm_async._cli_get import run_get

    sys.exit(run_get(client_from_env(), list(sids)))


@cli.command()
@click.argument("sids", nargs=-1)
@click.option("-i", "--input", "input_", help="A file of call SIDs, one per line ('-': stdin).")
@click.option("-o", "--output", help="Write results here (default: stdout).")
@click.option("--errors", help="Write failed SIDs here (default: OUTPUT.errors.tsv).")
@click.option(
    "--format", "format_", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--concurrency", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--rate", callback=_parse_rate, help="Stay under this rate, e.g. 200/min.")
@click.option("--resume", is_flag=True, help="Skip SIDs already in OUTPUT; retry the rest.")
def fetch(  # noqa: PLR0917 - click passes every option positionally by name
    sids: tuple[str, ...],
    input_: str | None,
    output: str | None,
    errors: str | None,
    format_: str,
    concurrency: int,
    rate: RateLimit | None,
    resume: bool,
) -> None:
    """Fetch many calls: one line per call as it completes, failures to an errors file.

    SIDs come from the arguments, from --input FILE, or from stdin (-i -). A
    failed SID goes to the errors file with its error code and message; that
    file can be fed back with -i. Wrong credentials or region stop the run.
    """
    if not sids and input_ is None:
        raise click.UsageError("give call SIDs as arguments or with --input FILE (- for stdin)")
    if resume and not output:
        raise click.UsageError("--resume needs --output FILE")
    from ccm_async._cli_fetch import FetchOptions, client_from_env, retry_for, run_fetch

    options = FetchOptions(
        sids=sids,
        input=input_,
        output=output,
        errors=errors,
        format=format_,
        concurrency=concurrency,
        rate=rate,
        resume=resume,
    )
    client = client_from_env(max_concurrency=concurrency, rate_limit=rate, retry=retry_for(rate))
    sys.exit(run_fetch(client, options))


@cli.command()
@click.option("--calls", type=click.IntRange(1, 10_000_000), default=10_000, show_default=True)
@click.option("--fail-rate", type=click.FloatRange(0, 0.5), default=0.02, show_default=True)
@click.option("--latency-ms", type=click.FloatRange(0, 10_000), default=20.0, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 4096), default=32, show_default=True)
def demo(calls: int, fail_rate: float, latency_ms: float, concurrency: int) -> None:
    """Fetch CALLS calls from the built-in fake CCM API, with injected failures.

    Shows the whole path: progress, retries recovering the failures, the summary,
    and the output file.
    """
    from ccm_async._cli_demo import run_demo

    sys.exit(
        run_demo(calls=calls, fail_rate=fail_rate, latency_ms=latency_ms, concurrency=concurrency)
    )


@cli.command("fake-server")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--latency-ms", type=click.FloatRange(0, 60_000), default=0.0, show_default=True)
@click.option("--rate-limit", "rate", callback=_parse_rate, help="Answer 429 beyond, e.g. 200/min.")
def fake_server(port: int, fail_rate: float, latency_ms: float, rate: RateLimit | None) -> None:
    """Run the fake CCM API on 127.0.0.1 until Ctrl-C; print how to point a client at it."""
    from ccm_async._cli_demo import serve_fake

    serve_fake(port=port, fail_rate=fail_rate, latency_ms=latency_ms, rate=rate)
