"""The run of ``ccm-async fetch``: SIDs through ``stream_calls`` to the output, to the end.

Each result is written as it completes (``_cli_files``), counted for the
progress bar and the summary (``_cli_summary``); the summary is printed even
when Ctrl-C or SIGTERM stops the run, and every finished line stays written.
The exit statuses of the command are here too.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Final

import anyio
import attrs
from rich.console import Console

from ccm_async import (
    AsyncCcmClient,
    AuthenticationError,
    ConfigurationError,
    RateLimit,
    RetryPolicy,
)
from ccm_async._cli_files import count_sids, error_line, open_output, resume_point, sids, writer
from ccm_async._cli_summary import Summary, progress

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "FetchOptions",
    "client_from_env",
    "fetch_and_summarize",
    "retry_for",
    "run_fetch",
]

EXIT_OK: Final = 0
EXIT_SOME_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


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


def client_from_env(**options: Any) -> AsyncCcmClient:
    """A client from the environment; a configuration error ends the command (status 2)."""
    try:
        return AsyncCcmClient.from_env(**options)
    except ConfigurationError as exc:
        Console(stderr=True, highlight=False).print(f"error: {exc}")
        sys.exit(EXIT_USAGE)


def retry_for(rate: RateLimit | None) -> RetryPolicy:
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
    done = resume_point(options.output or "", options.format) if options.resume else set[str]()
    total = count_sids(options.sids, options.input)
    with (
        open_output(options.output, append=bool(done)) as out,
        # Blocking file writes in the loop: one short flushed line per result.
        Path(options.errors_path()).open("w", encoding="utf-8") as errors_file,  # noqa: ASYNC230
        progress(err, total=None if total is None else total - len(done)) as show,
    ):
        write = writer(options.format, out, header=not done)
        pending = (sid for sid in sids(options.sids, options.input) if sid not in done)
        interrupted = anyio.Event()
        async with client, anyio.create_task_group() as group:
            group.start_soon(_stop_on_signal, group.cancel_scope, interrupted)
            try:
                async with client.stream_calls(pending, concurrency=options.concurrency) as results:
                    async for result in results:
                        summary.add(result)
                        if result.call is not None:
                            write(result.call)
                        else:
                            errors_file.write(error_line(result))
                            errors_file.flush()
                        show(summary)
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
