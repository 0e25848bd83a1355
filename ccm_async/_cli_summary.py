"""What a fetch shows on stderr: the progress bar while it runs, the summary after.

:class:`Summary` tallies the results durably written (ok, not found, failed by
error code) and the client's retries, budget denials and rate-limit waits; the
progress bar is drawn only when stderr is a terminal. Messages are never
hard-wrapped (:func:`stderr_console`): a log collector gets each as one line.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Generator
from contextlib import contextmanager

import attrs
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

from ccm_async import ApiError, CallNotFoundError, CallResult, CcmError
from ccm_async._cli_jobfile import failure_name

__all__ = ["Summary", "error_code", "progress", "stderr_console"]


def stderr_console() -> Console:
    """The console for messages: stderr, no markup guessing, no hard wrap off a terminal."""
    console = Console(stderr=True, highlight=False, markup=False)
    console.soft_wrap = not console.is_terminal
    return console


@attrs.define
class Summary:
    """Tallies of a fetch, for the progress bar and the closing summary."""

    started: float = attrs.field(factory=time.monotonic)
    ok: int = 0
    not_found: int = 0
    failures: Counter[str] = attrs.field(factory=Counter[str])
    retries: int = 0
    budget_denials: int = 0
    rate_limit_waits: int = 0
    rate_given: bool = False  # waits for a --rate of the user's own need no hint
    failures_at: str = ""  # where the failed SIDs are: the errors file, or the job file

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
            self.failures[error_code(result.error)] += 1

    def print(self, console: Console) -> None:
        """The closing summary."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        console.print(
            f"ok {self.ok}, not found {self.not_found}, failed {sum(self.failures.values())}, "
            f"retries {self.retries}; {self.done / elapsed:,.0f} lookups/s, {elapsed:.1f}s elapsed"
        )
        for code, count in sorted(self.failures.items()):
            console.print(f"  failed with {code}: {count}")
        if self.budget_denials:
            console.print(
                f"the retry budget refused {self.budget_denials} retries (the server failed "
                "often): run the same command again to retry the failed SIDs"
            )
        if self.rate_limit_waits and not self.rate_given:
            console.print(
                f"waited for the rate limit {self.rate_limit_waits} times: --rate N/min "
                "below the account's limit (Exotel's default: 200/min) avoids the 429s"
            )
        if self.failures_at:
            console.print(self.failures_at)


def error_code(error: CcmError | None) -> str:
    """A failure's short name: ``HTTP 500 code 1234``, or the error's class."""
    if isinstance(error, ApiError):
        return failure_name(type(error).__name__, error.http_status, error.code)
    return failure_name(type(error).__name__, None, None)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s")


@contextmanager
def progress(console: Console, *, total: int | None) -> Generator[Callable[[Summary, str], None]]:
    """A progress bar on stderr when it is a terminal (a rate without a total); nothing otherwise.

    It is called with the summary so far and a note (a pause), shown after the tallies.
    """
    if not console.is_terminal:
        yield lambda _summary, _note: None
        return
    bar = Progress(
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}  {task.fields[note]}"),
        console=console,
    )
    task = bar.add_task("fetch", total=total, ok=0, failed=0, note="")
    with bar:
        yield lambda summary, note: bar.update(
            task, completed=summary.done, ok=summary.ok, failed=summary.failed, note=note
        )
