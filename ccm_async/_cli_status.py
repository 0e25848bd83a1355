"""The run of ``ccm-async status``: a job file read, never written, while a fetch may write it.

It reads the file read-only in one read transaction, so its counts agree with
one another and with a commit of the fetch. It imports the job file's module
alone (no HTTP stack, no rich): it answers in well under a second.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import click

from ccm_async._cli_jobfile import JobFileError, JobStatus, job_status, read_job
from ccm_async._command import EXIT_OK, EXIT_USAGE

__all__ = ["run_status", "status_lines"]


def run_status(path: str) -> int:
    """Print the job file's status to stdout; the exit status."""
    try:
        db = read_job(path)
        try:
            status = job_status(db, path)
        finally:
            db.close()
    except JobFileError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    for line in status_lines(path, status):
        click.echo(line)
    return EXIT_OK


def status_lines(path: str, status: JobStatus) -> Iterator[str]:
    """The status report, line by line."""
    states = status.states
    yield f"{path}: {status.total:,} SIDs, account {status.account_sid}, {status.api_host}"
    yield (
        f"ok {states['ok']:,}, not found {states['not_found']:,}, failed {states['failed']:,}, "
        f"pending {states['pending']:,}"
    )
    for name, count in sorted(status.failures.items()):
        yield f"  failed with {name}: {count:,}"
    if status.first_fetch is not None and status.last_fetch is not None:
        rate = status.lookups_per_second
        shown = "" if rate is None else f", {rate:,.1f} lookups/s"
        yield f"fetched {_local(status.first_fetch)} to {_local(status.last_fetch)}{shown}"
    if status.left:
        yield f"left: {status.left:,} SIDs; run the same fetch again to continue"
    else:
        yield "left: none"


def _local(iso: str) -> str:
    try:
        return datetime.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):  # a time written by something else: as it is
        return str(iso)
