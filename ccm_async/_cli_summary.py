"""What a fetch shows on stderr: the progress bar while it runs, the summary after.

:class:`Summary` tallies the results (ok, not found, failed by error code,
retries); the progress bar is drawn only when stderr is a terminal.
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

__all__ = ["Summary", "error_code", "progress"]


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


def error_code(error: CcmError | None) -> str:
    """A failure's short name: ``HTTP 500 code 1234``, or the error's class."""
    if isinstance(error, ApiError):
        return f"HTTP {error.http_status}" + (f" code {error.code}" if error.code else "")
    return type(error).__name__


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s")


@contextmanager
def progress(console: Console, *, total: int | None) -> Generator[Callable[[Summary], None]]:
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
