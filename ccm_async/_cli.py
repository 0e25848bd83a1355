"""The ``ccm-async`` command's arguments: bulk fetch to a job file or a file, status, export.

Shipped as the ``cli`` extra (click for arguments, rich for progress and the
summary); the library itself never imports this module, and the console
script (``_command``) says how to install the extra when it is missing.
Credentials come from the environment only (``AsyncCcmClient.from_env``): a
token on the command line would land in shell history.

Each command hands its arguments to its run, imported only when it runs, so
``--version`` and ``--help`` load click alone: ``_cli_get`` (get),
``_cli_fetch`` (fetch, with ``_cli_input``, ``_cli_files``, ``_cli_jobfile``
and ``_cli_summary``), ``_cli_status`` (status), ``_cli_export`` (export) and
``_cli_demo`` (demo, fake-server).

Exit status: 0 when every SID succeeded, 1 when some failed, 2 for usage,
configuration, input and output problems (wrong credentials or region
included), 130 on SIGINT and 143 on SIGTERM, after the summary.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import click

from ccm_async._version import __version__

if TYPE_CHECKING:
    from ccm_async._convert import ApiVersion
    from ccm_async._throttle import RateLimit

__all__ = ["cli"]

_F = TypeVar("_F", bound=Callable[..., object])


# Help text is never re-wrapped to the terminal: its lines stay as written.
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ccm-async")
def cli() -> None:
    """Look up Exotel CCM call details in bulk.

    Credentials come from the environment: EXOTEL_API_KEY, EXOTEL_API_TOKEN,
    EXOTEL_ACCOUNT_SID, and EXOTEL_REGION (sg or in) or EXOTEL_CCM_BASE_URL;
    EXOTEL_API_VERSION (v2 or v3) picks the API version.
    """


# The job file's names, as _cli_jobfile has them (not imported: --help loads click alone).
_JOB_SUFFIXES: Final = (".db", ".sqlite", ".sqlite3")
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


def _api_version_option(default: str | None) -> Callable[[_F], _F]:
    return click.option(
        "--api-version",
        type=click.Choice(["v2", "v3"]),
        default=default,
        show_default=default is not None,
        help=None if default else "The API version (default: EXOTEL_API_VERSION, else v2).",
    )


def _version_option(api_version: ApiVersion | None) -> dict[str, ApiVersion]:
    # Given, it wins over EXOTEL_API_VERSION; not given, the environment decides.
    return {} if api_version is None else {"api_version": api_version}


@cli.command()
@click.argument("sids", nargs=-1, required=True)
@_api_version_option(None)
def get(sids: tuple[str, ...], api_version: ApiVersion | None) -> None:
    """Print each call's details as one JSON object per line (the API's field names).

    Failures go to stderr, one line per SID; the status is 1 when any failed.
    Writes no file.
    """
    from ccm_async._cli_fetch import client_from_env
    from ccm_async._cli_get import run_get

    sys.exit(run_get(client_from_env(**_version_option(api_version)), list(sids)))


_DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _parse_duration(_: click.Context, __: click.Parameter, value: str) -> float:
    number = value.rstrip("smhin")
    per = _DURATION_UNITS.get(value[len(number) :] or "s")
    try:
        seconds = float(number) * per if per is not None else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= 86_400:
        raise click.BadParameter("expected a duration up to a day, e.g. 90s, 10m or 1h")
    return seconds


@cli.command()
@click.argument("sids", nargs=-1)
@click.option("-i", "--input", "input_", help="A file of call SIDs, one per line ('-': stdin).")
@click.option("--column", help="Read SIDs from this column of a CSV input (its header names it).")
@click.option(
    "-o", "--output", help="calls.db (a job file), calls.jsonl or calls.csv; default stdout."
)
@click.option(
    "--errors", help="The errors file of a .jsonl/.csv output (default: OUTPUT.errors.tsv)."
)
@click.option(
    "--format", "format_", type=click.Choice(["jsonl", "csv"]), help="Default: from OUTPUT's name."
)
@click.option("--concurrency", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--rate", callback=_parse_rate, help="Stay under this rate, e.g. 200/min.")
@click.option("--resume", is_flag=True, help="Continue an existing .jsonl/.csv OUTPUT.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT (and its errors file).")
@click.option(
    "--max-pause",
    default="10m",
    show_default=True,
    callback=_parse_duration,
    help="Wait out an account pause (429 Retry-After) up to this; longer stops the run.",
)
@click.option(
    "--otel",
    is_flag=True,
    help="Export traces and metrics as the OTEL_* variables say (needs opentelemetry-sdk).",
)
@_api_version_option(None)
def fetch(  # noqa: PLR0917 - click passes every option positionally by name
    sids: tuple[str, ...],
    input_: str | None,
    column: str | None,
    output: str | None,
    errors: str | None,
    format_: str | None,
    concurrency: int,
    rate: RateLimit | None,
    resume: bool,
    overwrite: bool,
    max_pause: float,
    otel: bool,
    api_version: ApiVersion | None,
) -> None:
    """Fetch many calls into a job file (OUTPUT.db) or as JSON lines or CSV.

    SIDs come from the arguments and from --input: a file, a pipe or '-'
    (stdin), read once, UTF-8 with or without a BOM; blank lines and '#'
    comments are skipped, and a line's first field is its SID (an errors file
    feeds back in), or --column NAME of a CSV file.

    \b
    Files it writes:
      OUTPUT.db (.sqlite, .sqlite3)  the job file: a row per SID, committed as
                 results come; run the same command again to continue (ok and
                 not-found SIDs are skipped, failed ones retried); see
                 'ccm-async status' and 'ccm-async export'; SQLite keeps
                 OUTPUT.db-wal and OUTPUT.db-shm beside it while it is open
      OUTPUT.jsonl, OUTPUT.csv       a record per call; an existing one needs
                 --resume (continue) or --overwrite (replace)
      --errors (OUTPUT.errors.tsv, or ./ccm-async-errors.tsv for stdout)  with
                 .jsonl/.csv: failed SIDs, error code, message; removed when
                 none failed

    With --otel, traces and metrics go where OTEL_TRACES_EXPORTER and
    OTEL_METRICS_EXPORTER say (otlp, the default, to OTEL_EXPORTER_OTLP_ENDPOINT;
    console, to stderr; none).

    Wrong credentials or region, an unreachable API host or an unwritable
    output stop the run (status 2).
    """
    continued = bool(output) and Path(str(output)).suffix.lower() in _JOB_SUFFIXES
    if not sids and input_ is None and not (continued and Path(str(output)).exists()):
        raise click.UsageError(
            "give call SIDs as arguments or with --input FILE (- for stdin), "
            "or an existing job file to continue"
        )
    if resume and output in (None, "-"):
        raise click.UsageError("--resume needs --output FILE")
    if resume and overwrite:
        raise click.UsageError("--resume continues OUTPUT, --overwrite replaces it: give one")
    from ccm_async._cli_fetch import FetchOptions, client_from_env, retry_for, run_fetch

    options = FetchOptions(
        sids=sids,
        input=input_,
        column=column,
        output=output,
        errors=errors,
        format=format_,
        concurrency=concurrency,
        rate=rate,
        resume=resume,
        overwrite=overwrite,
        max_pause=max_pause,
    )
    with _exported() if otel else contextlib.nullcontext():
        client = client_from_env(
            max_concurrency=concurrency,
            rate_limit=rate,
            retry=retry_for(rate),
            **_version_option(api_version),
        )
        status = run_fetch(client, options)
    sys.exit(status)


def _exported() -> contextlib.AbstractContextManager[None]:
    from ccm_async._cli_otel import exporting

    return exporting(os.environ)


@cli.command()
@click.argument("job_file")
def status(job_file: str) -> None:
    """Show a job file's SIDs by state and error, its fetch times and rate, and what is left.

    It reads the file while a fetch may be writing it. Writes no file (SQLite,
    as for any reader, may add JOB_FILE-wal and JOB_FILE-shm beside it).
    """
    from ccm_async._cli_status import run_status

    sys.exit(run_status(job_file))


@cli.command()
@click.argument("job_file")
@click.option("-o", "--output", required=True, help="calls.jsonl, calls.csv, or '-' (stdout).")
@click.option(
    "--format", "format_", type=click.Choice(["jsonl", "csv"]), help="Default: from OUTPUT's name."
)
@click.option("--failed", is_flag=True, help="Only the failed SIDs, one per line (ready for -i).")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
def export(job_file: str, output: str, format_: str | None, failed: bool, overwrite: bool) -> None:
    """Write a job file's calls (or its failed SIDs) to OUTPUT, the only file it writes."""
    from ccm_async._cli_export import run_export

    sys.exit(run_export(job_file, output, format_=format_, failed=failed, overwrite=overwrite))


@cli.command()
@click.option("--calls", type=click.IntRange(1, 10_000_000), default=10_000, show_default=True)
@click.option("--fail-rate", type=click.FloatRange(0, 0.5), default=0.02, show_default=True)
@click.option("--latency-ms", type=click.FloatRange(0, 10_000), default=20.0, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo's directory (its job file) afterwards.")
@_api_version_option("v2")
def demo(  # noqa: PLR0917 - click passes every option positionally by name
    calls: int,
    fail_rate: float,
    latency_ms: float,
    concurrency: int,
    keep: bool,
    api_version: ApiVersion,
) -> None:
    """Fetch CALLS calls from the built-in fake CCM API, with injected failures.

    Shows the whole path: progress, retries recovering the failures, the
    summary, and the job file's status. It writes its SIDs and job file to a
    temporary directory, removed at the end unless --keep.
    """
    from ccm_async._cli_demo import run_demo

    sys.exit(
        run_demo(
            calls=calls,
            fail_rate=fail_rate,
            latency_ms=latency_ms,
            concurrency=concurrency,
            keep=keep,
            api_version=api_version,
        )
    )


@cli.command("fake-server")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--latency-ms", type=click.FloatRange(0, 60_000), default=0.0, show_default=True)
@click.option("--rate-limit", "rate", callback=_parse_rate, help="Answer 429 beyond, e.g. 200/min.")
def fake_server(port: int, fail_rate: float, latency_ms: float, rate: RateLimit | None) -> None:
    """Run the fake CCM API on 127.0.0.1 until Ctrl-C; print how to point a client at it.

    Writes no file.
    """
    from ccm_async._cli_demo import serve_fake

    serve_fake(port=port, fail_rate=fail_rate, latency_ms=latency_ms, rate=rate)
