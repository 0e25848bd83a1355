"""The run of ``ccm-async fetch``: SIDs through ``stream_calls`` into the output, to the end.

Before the first request every path is checked and the whole input is read
once (a bad line or an unwritable output exits 2 with the path and the reason);
a job file takes the SIDs in (``_cli_jobfile``), a JSON lines or CSV output
skips those it already holds (``_cli_files``). Each result is recorded as it
completes, and the summary (``_cli_summary``) counts only what was durably
written; it is printed however the run ends.

The run stops early, resumable, when continuing could not help: wrong
credentials, no response at all from the API host, a write that failed, or
the account paused (429 ``Retry-After``) longer than ``--max-pause``. A
shorter pause is waited out and its SIDs are fetched again.

Exit statuses: 0 every SID ok, 1 some failed (or a pause stopped the run), 2
usage, configuration, input or output problems, 130 on SIGINT, 143 on SIGTERM.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, Protocol

import anyio
import attrs

from ccm_async import (
    AsyncCcmClient,
    AuthenticationError,
    CallResult,
    ConfigurationError,
    RateLimit,
    RateLimitError,
    RetryPolicy,
    TransportError,
)
from ccm_async._cli_files import ErrorsFile, OutputError, RecordFile, output_format, resume_point
from ccm_async._cli_input import InputError, distinct, in_daemon_thread, read_sids
from ccm_async._cli_jobfile import JobFile, JobFileError, open_job
from ccm_async._cli_summary import Summary, progress, stderr_console
from ccm_async._command import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE

__all__ = [
    "FetchOptions",
    "client_from_env",
    "fetch_and_summarize",
    "retry_for",
    "run_fetch",
]

_EXIT_ON_SIGNAL: Final = {signal.SIGINT: 130, signal.SIGTERM: 143}
# No response to this many first lookups (or to all, when fewer): the host is unreachable.
_FIRST_LOOKUPS: Final = 8
# A SID the account's pause failed is fetched again after the pause, this many times.
_AGAIN_AFTER_PAUSE: Final = 3
_PROBLEMS: Final = (InputError, OutputError, JobFileError)


@attrs.define
class FetchOptions:
    """What to fetch and where to write it."""

    sids: tuple[str, ...] = ()
    input: str | None = None
    column: str | None = None
    output: str | None = None
    errors: str | None = None
    format: str | None = None
    concurrency: int = 32
    rate: RateLimit | None = None
    resume: bool = False
    overwrite: bool = False
    max_pause: float = 600.0

    def errors_path(self) -> str:
        """Where failed SIDs go (a JSON lines or CSV fetch)."""
        if self.errors:
            return self.errors
        to_stdout = self.output in (None, "-")
        return "ccm-async-errors.tsv" if to_stdout else f"{self.output}.errors.tsv"


def client_from_env(**options: Any) -> AsyncCcmClient:
    """A client from the environment; a configuration error ends the command (status 2)."""
    try:
        return AsyncCcmClient.from_env(**options)
    except ConfigurationError as exc:
        stderr_console().print(f"error: {exc}")
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
    """Run a fetch to its end, print the summary, return the exit status."""
    return anyio.run(fetch_and_summarize, client, options)


class _Sink(Protocol):
    def record(self, result: CallResult) -> list[CallResult]: ...
    def commit(self) -> list[CallResult]: ...
    def close(self) -> None: ...
    def where(self) -> str: ...


@attrs.define
class _JobSink:
    job: JobFile

    def record(self, result: CallResult) -> list[CallResult]:
        return self.job.record(result)

    def commit(self) -> list[CallResult]:
        return self.job.commit()

    def close(self) -> None:
        self.job.close()

    def where(self) -> str:
        return f"job file: {self.job.path} (ccm-async status {self.job.path})"


@attrs.define
class _FileSink:
    records: RecordFile
    errors: ErrorsFile

    @classmethod
    def open(cls, output: str | None, format_: str, append: bool, errors: str) -> _FileSink:
        records = RecordFile.open(output, format_, append=append)
        try:
            return cls(records, ErrorsFile.open(errors))
        except BaseException:
            records.close()
            raise

    def record(self, result: CallResult) -> list[CallResult]:
        if result.call is not None:
            self.records.write(result.call)
        else:
            self.errors.write(result)
        return [result]

    def commit(self) -> list[CallResult]:
        return []

    def close(self) -> None:
        self.records.close()
        self.errors.close()

    def where(self) -> str:
        if self.errors.count:
            return f"errors: {self.errors.path} ({self.errors.count} SIDs, ready for -i)"
        return "errors: none (no errors file written)"


class _StopError(Exception):
    """The run stops early: why, and its exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


async def fetch_and_summarize(client: AsyncCcmClient, options: FetchOptions) -> int:
    """Fetch as ``options`` say; the summary goes to stderr however the run ends."""
    err = stderr_console()
    run = _Run(client, options, Summary(rate_given=options.rate is not None))
    status = EXIT_USAGE  # what a signal while the input is read leaves, overwritten below
    async with anyio.create_task_group() as signals:
        # A signal cancels the fetch alone; the receiver outlives its last commit.
        with anyio.CancelScope() as fetching:
            signals.start_soon(run.stop_on_signal, fetching)
            try:
                status = await run.fetch()
            except _PROBLEMS as exc:
                err.print(f"error: {exc}")
            except _StopError as exc:
                err.print(str(exc))
                status = exc.status
        signals.cancel_scope.cancel()
    if run.signal is not None:
        err.print(f"stopped by {run.signal.name}{run.how_to_continue()}")
        status = _EXIT_ON_SIGNAL[run.signal]
    if run.started:
        run.summary.print(err)
    return status


@attrs.define
class _Run:
    """One fetch: its sink, its queue of SIDs, its tallies, and what stopped it."""

    client: AsyncCcmClient
    options: FetchOptions
    summary: Summary
    signal: signal.Signals | None = None
    started: bool = False

    async def stop_on_signal(self, scope: anyio.CancelScope) -> None:
        """SIGINT or SIGTERM stops the run cleanly: what is recorded stays recorded.

        Signals after the first are taken and ignored until the run has wrapped
        up (its last commit, its files closed): a second Ctrl-C cannot cut them.
        """
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                if self.signal is None:
                    self.signal = signal.Signals(received)
                    scope.cancel()

    async def fetch(self) -> int:
        """Check the paths, read the input, fetch into the output; the exit status."""
        format_ = output_format(self.options.output, self.options.format)
        sink, sids, total = await (self._job() if format_ == "job" else self._files(format_))
        self.started = True
        self.summary.started = time.monotonic()
        try:
            await self._fetch_into(sink, sids, total)
        finally:
            try:
                self._count(sink.commit())
            finally:
                sink.close()
                stats = self.client.stats
                self.summary.retries = stats.retries
                self.summary.budget_denials = stats.budget_denials
                self.summary.rate_limit_waits = stats.rate_limit_waits
                self.summary.failures_at = sink.where()
        # After the last commit: its results count too.
        return EXIT_OK if self.summary.failed == 0 else EXIT_SOME_FAILED

    async def _job(self) -> tuple[_Sink, Iterator[str], int]:
        output = str(self.options.output)
        _not_a_directory(output)
        given = await self._read_input()
        job = open_job(
            output,
            account_sid=self.client.account_sid,
            api_host=self.client.base_url,
            afresh=self.options.overwrite,
        )
        try:
            job.add(given)
        except BaseException:
            job.close()
            raise
        return _JobSink(job), job.sids_to_fetch(), job.to_fetch()

    async def _files(self, format_: str) -> tuple[_Sink, Iterator[str], int]:
        output = self.options.output if self.options.output != "-" else None
        resume = self.options.resume and output is not None
        errors_path = self.options.errors_path()
        if output is not None:
            self._may_write(output, continued=resume)
            _not_the_same(output, errors_path)
        # The errors file goes with its output: replaced when the output is continued or replaced.
        self._may_write(errors_path, continued=resume)
        given = await self._read_input()
        done = resume_point(output, format_) if output is not None and resume else set[str]()
        sids = [sid for sid in given if sid not in done]
        append = output is not None and resume and _holds_data(output)
        # Opening a FIFO waits for its reader: off the loop, so that a signal still stops it.
        sink = await in_daemon_thread(lambda: _FileSink.open(output, format_, append, errors_path))
        return sink, iter(sids), len(sids)

    async def _read_input(self) -> list[str]:
        """Every distinct SID given, the input read once and whole before any request."""
        options = self.options
        return await in_daemon_thread(
            lambda: list(distinct(read_sids(options.sids, options.input, column=options.column)))
        )

    def _may_write(self, output: str, *, continued: bool) -> None:
        """An existing output is continued or replaced (truncated) only when asked."""
        _not_a_directory(output)
        if _holds_data(output) and not (continued or self.options.overwrite):
            raise OutputError(f"{output} exists: --resume continues it, --overwrite replaces it")

    async def _fetch_into(self, sink: _Sink, sids: Iterator[str], total: int) -> None:
        queue = _Queue(sids)
        answered = _Answered(host=self.client.base_url, enough=min(_FIRST_LOOKUPS, total))
        concurrency = self.options.concurrency
        with progress(stderr_console(), total=total) as show:
            try:
                async with (
                    self.client,
                    self.client.stream_calls(queue.sids(), concurrency=concurrency) as results,
                ):
                    async for result in results:
                        again = self._again_after_pause(result, queue)
                        queue.done(result.call_sid if again else None)
                        if not again:
                            self._count(sink.record(result))
                            answered.check(result)
                        show(self.summary, queue.note())
            except (AuthenticationError, ConfigurationError) as exc:
                raise _StopError(f"error: {exc}", EXIT_USAGE) from exc

    def _again_after_pause(self, result: CallResult, queue: _Queue) -> bool:
        """Whether the account's pause failed this SID, to be fetched after it; or stop the run."""
        error = result.error
        if not isinstance(error, RateLimitError) or not error.retry_after:
            return False
        if error.retry_after > self.options.max_pause:
            raise _StopError(
                f"stopped: the API asks for a pause of {error.retry_after:,.0f}s (429 "
                f"Retry-After), longer than --max-pause {self.options.max_pause:g}s"
                f"{self.how_to_continue(after=_clock(error.retry_after))}",
                EXIT_SOME_FAILED,
            )
        return queue.again_after(result.call_sid, error.retry_after)

    def how_to_continue(self, *, after: str = "") -> str:
        """How to go on from where the run stopped: the same command (with --resume)."""
        output = self.options.output
        if output in (None, "-"):
            return ""  # stdout keeps no record of what was done
        when = f" after {after}" if after else ""
        if output_format(output, self.options.format) == "job" or self.options.resume:
            return f": run the same command again{when} to continue"
        return f": run it again with --resume{when} to continue"

    def _count(self, results: list[CallResult]) -> None:
        for result in results:
            self.summary.add(result)


def _holds_data(output: str) -> bool:
    return os.path.isfile(output) and os.path.getsize(output) > 0


def _not_the_same(output: str, errors_path: str) -> None:
    if os.path.realpath(errors_path) == os.path.realpath(output):
        raise OutputError(f"{output} cannot be both the output and the errors file")


def _not_a_directory(output: str) -> None:
    if os.path.isdir(output):
        raise OutputError(f"cannot write {output}: it is a directory")


@attrs.define
class _Answered:
    """Stops the run when its first lookups got no response at all: the host is unreachable."""

    host: str
    enough: int
    unanswered: int = 0
    any_answer: bool = False

    def check(self, result: CallResult) -> None:
        if self.any_answer:
            return
        if not isinstance(result.error, TransportError):
            self.any_answer = True
            return
        self.unanswered += 1
        if self.unanswered >= self.enough:
            raise _StopError(
                f"error: no response from {self.host} to the first {self.unanswered} lookups "
                f"({result.error}): check EXOTEL_REGION or EXOTEL_CCM_BASE_URL and the network",
                EXIT_USAGE,
            )


@attrs.define
class _Queue:
    """The SIDs to fetch, lazily, and those the account's pause failed, fetched after it."""

    _source: Iterator[str]
    _again: collections.deque[str] = attrs.field(factory=collections.deque[str])
    _times_again: collections.Counter[str] = attrs.field(factory=collections.Counter[str])
    _in_flight: int = 0
    _paused_until: float = -math.inf
    _changed: anyio.Event = attrs.field(factory=anyio.Event)

    async def sids(self) -> AsyncIterator[str]:
        """Each SID to fetch, after the pause, until none is left or in flight."""
        while True:
            if (pause := self._paused_until - anyio.current_time()) > 0:
                await anyio.sleep(pause)
            sid = self._again.popleft() if self._again else next(self._source, None)
            if sid is None:
                if not self._in_flight:
                    return
                await self._changed.wait()
                continue
            self._in_flight += 1
            yield sid

    def again_after(self, sid: str, pause: float) -> bool:
        """Fetch ``sid`` again after ``pause`` seconds; False once it had its tries."""
        if self._times_again[sid] >= _AGAIN_AFTER_PAUSE:
            return False
        self._times_again[sid] += 1
        self._paused_until = max(self._paused_until, anyio.current_time() + pause)
        return True

    def done(self, again: str | None) -> None:
        """One SID's result is in; ``again`` is to be fetched after the pause."""
        self._in_flight -= 1
        if again is not None:
            self._again.append(again)
        self._changed.set()
        self._changed = anyio.Event()

    def note(self) -> str:
        """What the progress line says about the pause."""
        left = self._paused_until - anyio.current_time()
        if left <= 0:
            return ""
        return f"paused until {_clock(left)}: the account is rate limited (429)"


def _clock(seconds_from_now: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time.time() + seconds_from_now))
