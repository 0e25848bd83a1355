"""The runs of ``ccm-async status`` and ``ccm-async export``: a job file read, never written.

Both read the job file read-only, in one read transaction each, so they work
while a fetch writes it and see whole commits. ``export`` writes the ok calls
as JSON lines or CSV (the formats of ``fetch``), or the failed SIDs one per
line, to a file or stdout.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
from collections.abc import Iterator

from ccm_async._cli_fetch import EXIT_OK, EXIT_USAGE
from ccm_async._cli_files import OutputError, RecordFile, output_format
from ccm_async._cli_jobfile import (
    JobFileError,
    JobStatus,
    exported_calls,
    failed_sids,
    job_status,
    read_job,
)
from ccm_async._cli_summary import stderr_console

__all__ = ["run_export", "run_status", "status_lines"]


def run_status(path: str) -> int:
    """Print the job file's status to stdout; the exit status."""
    try:
        db = read_job(path)
        try:
            status = job_status(db)
        finally:
            db.close()
    except JobFileError as exc:
        stderr_console().print(f"error: {exc}")
        return EXIT_USAGE
    for line in status_lines(path, status):
        print(line)
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
    return datetime.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def run_export(
    path: str, output: str, *, format_: str | None, failed: bool, overwrite: bool
) -> int:
    """Write the job file's calls (or failed SIDs) to ``output``; the exit status."""
    try:
        format_ = "sids" if failed else output_format(output, format_)
        _check_export_output(output, format_, overwrite=overwrite)
        db = read_job(path)
        try:
            _export(db, RecordFile.open(output, format_, append=False))
        finally:
            db.close()
    except (JobFileError, OutputError) as exc:
        stderr_console().print(f"error: {exc}")
        return EXIT_USAGE
    return EXIT_OK


def _check_export_output(output: str, format_: str, *, overwrite: bool) -> None:
    if format_ == "job":
        raise OutputError(f"{output}: export writes JSON lines or CSV, not a job file")
    if output != "-" and os.path.exists(output) and os.path.getsize(output) and not overwrite:
        raise OutputError(f"{output} exists: --overwrite replaces it")


def _export(db: sqlite3.Connection, records: RecordFile) -> None:
    try:
        if records.format == "sids":
            for sid in failed_sids(db):
                records.write_bytes(f"{sid}\n".encode())
        else:
            for call in exported_calls(db):
                records.write_bytes(records.encode(json.loads(call)))
    finally:
        records.close()
