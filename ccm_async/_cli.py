"""The ``ccm-async`` command: bulk fetch to a file, with progress; the demo; the fake server.

Shipped as the ``cli`` extra (click for arguments, rich for progress and the
summary); the library itself never imports this module. Credentials come from
the environment only (``AsyncCcmClient.from_env``): a token on the command line
would land in shell history.

Exit status: 0 when every SID succeeded, 1 when some failed, 2 for usage and
configuration errors (wrong credentials or region included), 130 on Ctrl-C,
after the summary.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any, Final

import anyio
import attrs
import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ccm_async._client import AsyncCcmClient
from ccm_async._convert import unstructure_call
from ccm_async._errors import (
    ApiError,
    AuthenticationError,
    CallNotFoundError,
    CcmError,
    ConfigurationError,
)
from ccm_async._models import AgentDetails, CallDetails, CallResult, CustomerDetails
from ccm_async._retry import RetryPolicy
from ccm_async._throttle import RateLimit
from ccm_async._version import __version__

__all__ = ["cli", "main"]

EXIT_OK: Final = 0
EXIT_SOME_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_NESTED: Final = {"assigned_agent_details": AgentDetails, "customer_details": CustomerDetails}
CSV_COLUMNS: Final = tuple(
    f"{field.name}.{inner.name}" if field.name in _NESTED else field.name
    for field in attrs.fields(CallDetails)
    for inner in (attrs.fields(_NESTED[field.name]) if field.name in _NESTED else (field,))
)


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


# -- get ----------------------------------------------------------------------------


@cli.command()
@click.argument("sids", nargs=-1, required=True)
def get(sids: tuple[str, ...]) -> None:
    """Print the details of each call SID as JSON (the API's field names)."""
    client = _client_from_env()
    sys.exit(anyio.run(_get, client, list(sids)))


async def _get(client: AsyncCcmClient, sids: list[str]) -> int:
    err = Console(stderr=True, highlight=False)
    try:
        async with client:
            results = await client.get_calls(sids)
    except AuthenticationError as exc:
        err.print(f"error: {exc}")
        return EXIT_USAGE
    calls = [unstructure_call(result.call) for result in results if result.call is not None]
    for result in results:
        if result.error is not None:
            err.print(f"{result.call_sid}: {result.error}")
    document: object = calls[0] if len(sids) == 1 and calls else calls
    if calls:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    return EXIT_OK if all(result.ok for result in results) else EXIT_SOME_FAILED


# -- fetch --------------------------------------------------------------------------


@attrs.define
class FetchOptions:
    """What to fetch and where to write it."""

    sids: tuple[str, ...] = ()
    input: str | None = None
    output: str | None = None
    errors: str | None = None
    format: str = "jsonl"
    concurrency: int = 32
    rate: RateLimit | None = None
    resume: bool = False

    def errors_path(self) -> str:
        """Where failed SIDs go."""
        if self.errors:
            return self.errors
        return f"{self.output}.errors.tsv" if self.output else "ccm-async-errors.tsv"


_RATE_UNITS: Final = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _parse_rate(_: click.Context, __: click.Parameter, value: str | None) -> RateLimit | None:
    if value is None:
        return None
    count, _slash, unit = value.partition("/")
    per = _RATE_UNITS.get(unit or "min")
    if per is None or not (count.isascii() and count.isdigit()):
        raise click.BadParameter("expected N/min, N/s or N/h, e.g. 200/min")
    try:
        return RateLimit(requests=int(count), per=per)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from exc


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
    client = _client_from_env(max_concurrency=concurrency, rate_limit=rate, retry=_retry_for(rate))
    sys.exit(run_fetch(client, options))


def _retry_for(rate: RateLimit | None) -> RetryPolicy:
    """The default policy, with a deadline that outlasts one window of ``rate``.

    A retry's wait for a permit counts against its deadline: after a full
    window, the next permit can be ``per`` seconds away.
    """
    if rate is None:
        return RetryPolicy()
    return RetryPolicy(timeout=min(3600.0, max(RetryPolicy().timeout, 2 * rate.per)))


def run_fetch(client: AsyncCcmClient, options: FetchOptions) -> int:
    """Run a fetch to the end (or to Ctrl-C), print the summary, return the exit status."""
    return anyio.run(fetch_and_summarize, client, options)


async def fetch_and_summarize(client: AsyncCcmClient, options: FetchOptions) -> int:
    """Fetch as ``options`` say; the summary goes to stderr even when interrupted."""
    err = Console(stderr=True, highlight=False)
    summary = Summary()
    try:
        return await _fetch(client, options, summary, err)
    finally:
        summary.print(err)


async def _fetch(
    client: AsyncCcmClient, options: FetchOptions, summary: Summary, err: Console
) -> int:
    done: set[str] = _resume_point(options) if options.resume else set()
    total = _count_sids(options)
    with (
        _open_output(options, append=bool(done)) as out,
        # Blocking file writes in the loop: one short flushed line per result.
        Path(options.errors_path()).open("w", encoding="utf-8") as errors_file,  # noqa: ASYNC230
        _progress(err, total=None if total is None else total - len(done)) as progress,
    ):
        writer = _writer(options.format, out, header=not done)
        sids = (sid for sid in _sids(options) if sid not in done)
        interrupted = anyio.Event()
        async with client, anyio.create_task_group() as group:
            group.start_soon(_stop_on_signal, group.cancel_scope, interrupted)
            try:
                async with client.stream_calls(sids, concurrency=options.concurrency) as results:
                    async for result in results:
                        summary.add(result)
                        if result.call is not None:
                            writer(result.call)
                        else:
                            errors_file.write(_error_line(result))
                            errors_file.flush()
                        progress(summary)
            except AuthenticationError as exc:
                err.print(f"error: {exc}")
                return EXIT_USAGE
            finally:
                summary.retries = client.stats.retries
                group.cancel_scope.cancel()
    if interrupted.is_set():
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.failed == 0 else EXIT_SOME_FAILED


async def _stop_on_signal(scope: anyio.CancelScope, interrupted: anyio.Event) -> None:
    """Ctrl-C (or SIGTERM) stops the run cleanly: every finished line stays written."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            interrupted.set()
            scope.cancel()
            return


@attrs.define
class Summary:
    """Tallies of a fetch, for the progress bar and the closing summary."""

    started: float = attrs.field(factory=time.monotonic)
    ok: int = 0
    not_found: int = 0
    failures: Counter[str] = attrs.field(factory=Counter[str])
    retries: int = 0

    @property
    def failed(self) -> int:
        """SIDs that did not succeed (not found included)."""
        return self.not_found + sum(self.failures.values())

    @property
    def done(self) -> int:
        """SIDs finished either way."""
        return self.ok + self.failed

    def add(self, result: CallResult) -> None:
        """Count one result."""
        if result.ok:
            self.ok += 1
        elif isinstance(result.error, CallNotFoundError):
            self.not_found += 1
        else:
            self.failures[_error_code(result.error)] += 1

    def print(self, console: Console) -> None:
        """The closing summary."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        console.print(
            f"ok {self.ok}, not found {self.not_found}, failed {sum(self.failures.values())}, "
            f"retries {self.retries}; {self.done / elapsed:,.0f} lookups/s, {elapsed:.1f}s elapsed"
        )
        for code, count in sorted(self.failures.items()):
            console.print(f"  failed with {code}: {count}")


def _error_code(error: CcmError | None) -> str:
    if isinstance(error, ApiError):
        return f"HTTP {error.http_status}" + (f" code {error.code}" if error.code else "")
    return type(error).__name__


def _error_line(result: CallResult) -> str:
    message = " ".join(str(result.error).split())
    return f"{result.call_sid}\t{_error_code(result.error)}\t{message}\n"


def _client_from_env(**options: Any) -> AsyncCcmClient:
    try:
        return AsyncCcmClient.from_env(**options)
    except ConfigurationError as exc:
        Console(stderr=True, highlight=False).print(f"error: {exc}")
        sys.exit(EXIT_USAGE)


def _sids(options: FetchOptions) -> Iterator[str]:
    yield from options.sids
    if options.input is None:
        return
    stream = sys.stdin if options.input == "-" else Path(options.input).open(encoding="utf-8")  # noqa: SIM115
    with stream:
        yield from _sids_in(stream)


def _sids_in(lines: Iterable[str]) -> Iterator[str]:
    """The first field of each line (an errors file feeds back in); '#' comments skipped."""
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            yield text.replace(",", "\t").split()[0]


def _count_sids(options: FetchOptions) -> int | None:
    if options.input == "-":
        return None
    count = len(options.sids)
    if options.input is not None:
        with Path(options.input).open(encoding="utf-8") as lines:
            count += sum(1 for _ in _sids_in(lines))
    return count


def _resume_point(options: FetchOptions) -> set[str]:
    """The SIDs already written; a partial last line (a killed run) is cut off."""
    path = Path(options.output or "")
    if not path.exists():
        return set()
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as file:
            file.truncate(len(whole))
    text = whole.decode("utf-8")
    if options.format == "csv":
        return {row["call_sid"] for row in csv.DictReader(io.StringIO(text))}
    return {json.loads(line)["call_sid"] for line in text.splitlines() if line}


def _open_output(options: FetchOptions, *, append: bool) -> AbstractContextManager[IO[str]]:
    if options.output is None:
        return nullcontext(sys.stdout)
    mode = "a" if append else "w"
    return Path(options.output).open(mode, encoding="utf-8", newline="")


def _writer(format_: str, out: IO[str], *, header: bool) -> Callable[[CallDetails], None]:
    """One whole line per call, flushed, so a crash never loses a finished result."""
    if format_ == "csv":
        rows = csv.writer(out, lineterminator="\n")
        if header:
            rows.writerow(CSV_COLUMNS)
            out.flush()

        def write_row(call: CallDetails) -> None:
            rows.writerow(csv_row(call))
            out.flush()

        return write_row

    def write_json(call: CallDetails) -> None:
        out.write(json.dumps(unstructure_call(call), ensure_ascii=False) + "\n")
        out.flush()

    return write_json


def csv_row(call: CallDetails) -> list[str]:
    """One CSV row: a column per leaf field, recording URLs joined with a space."""
    data = unstructure_call(call)
    flat: dict[str, object] = {}
    for name, value in data.items():
        if name in _NESTED:
            nested: dict[str, object] = value or {}
            for inner, inner_value in nested.items():
                flat[f"{name}.{inner}"] = inner_value
        elif name == "recordings":
            flat[name] = " ".join(r["url"] for r in value if r.get("url"))
        else:
            flat[name] = value
    return ["" if flat.get(column) is None else str(flat[column]) for column in CSV_COLUMNS]


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s")


@contextmanager
def _progress(console: Console, *, total: int | None) -> Generator[Callable[[Summary], None]]:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""
    if not console.is_terminal:
        yield lambda _: None
        return
    bar = Progress(
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}"),
        console=console,
    )
    task = bar.add_task("fetch", total=total, ok=0, failed=0)
    with bar:
        yield lambda summary: bar.update(
            task, completed=summary.done, ok=summary.ok, failed=summary.failed
        )


# -- demo and fake-server -----------------------------------------------------------


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
    from ccm_async.testing import FakeCcm, Fault  # noqa: PLC0415 - the cli extra's uvicorn

    fake = FakeCcm(generate=True, latency=latency_ms / 1000, seed=1)
    # Never more failures for one SID than retries, so every SID recovers.
    fake.fail_randomly(Fault.server_error(), rate=fail_rate * 0.6, max_per_sid=2)
    fake.fail_randomly(Fault.rate_limited(), rate=fail_rate * 0.2, max_per_sid=2)
    fake.fail_randomly(Fault.disconnect(), rate=fail_rate * 0.2, max_per_sid=2)
    out_dir = Path(tempfile.mkdtemp(prefix="ccm-async-demo-"))
    options = FetchOptions(
        input=str(_demo_input(out_dir, calls)),
        output=str(out_dir / "calls.jsonl"),
        concurrency=concurrency,
    )
    err = Console(stderr=True, highlight=False)
    err.print(
        f"demo: {calls:,} calls from the fake CCM API ({latency_ms:g} ms latency, "
        f"{fail_rate:.0%} injected failures: 500s, 429s, dropped connections)"
    )

    async def serve_and_fetch() -> int:
        async with fake.serve() as base_url:
            client = AsyncCcmClient(
                **fake.credentials, base_url=base_url, max_concurrency=concurrency
            )
            return await fetch_and_summarize(client, options)

    status = anyio.run(serve_and_fetch)
    err.print(f"output: {options.output} ({fake.request_count:,} requests served)")
    err.print(f"errors: {options.errors_path()}")
    sys.exit(status)


def _demo_input(out_dir: Path, calls: int) -> Path:
    path = out_dir / "sids.txt"
    with path.open("w", encoding="utf-8") as file:
        for i in range(calls):
            file.write(hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest() + "\n")
    return path


@cli.command("fake-server")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--latency-ms", type=click.FloatRange(0, 60_000), default=0.0, show_default=True)
@click.option("--rate-limit", "rate", callback=_parse_rate, help="Answer 429 beyond, e.g. 200/min.")
def fake_server(port: int, fail_rate: float, latency_ms: float, rate: RateLimit | None) -> None:
    """Run the fake CCM API on 127.0.0.1 until Ctrl-C; print how to point a client at it."""
    from ccm_async.testing import FakeCcm, Fault  # noqa: PLC0415 - the cli extra's uvicorn

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
