"""The run of ``ccm-async export``: a job file's calls, or its failed SIDs, to a file or stdout.

The job file is read read-only in one read transaction (a fetch may be writing
it); the calls are written as JSON lines or CSV, the formats of ``fetch``, and
the failed SIDs one per line, ready for ``fetch -i``.
"""

from __future__ import annotations

import os
import sqlite3

from ccm_async._cli_files import OutputError, RecordFile, output_format
from ccm_async._cli_jobfile import JobFileError, exported_calls, failed_sids, read_job
from ccm_async._cli_summary import stderr_console
from ccm_async._command import EXIT_OK, EXIT_USAGE

__all__ = ["run_export"]


def run_export(
    path: str, output: str, *, format_: str | None, failed: bool, overwrite: bool
) -> int:
    """Write the job file's calls (or failed SIDs) to ``output``; the exit status."""
    try:
        format_ = "sids" if failed else output_format(output, format_)
        _check_export_output(path, output, format_, overwrite=overwrite)
        db = read_job(path)
        try:
            _export(db, path, RecordFile.open(output, format_, append=False))
        finally:
            db.close()
    except (JobFileError, OutputError) as exc:
        stderr_console().print(f"error: {exc}")
        return EXIT_USAGE
    return EXIT_OK


def _check_export_output(path: str, output: str, format_: str, *, overwrite: bool) -> None:
    if format_ == "job":
        raise OutputError(f"{output}: export writes JSON lines or CSV, not a job file")
    if output == "-":
        return
    if os.path.isdir(output):
        raise OutputError(f"cannot write {output}: it is a directory")
    if os.path.realpath(output) == os.path.realpath(path):
        raise OutputError(f"{output} is the job file being exported")
    if os.path.isfile(output) and os.path.getsize(output) and not overwrite:
        raise OutputError(f"{output} exists: --overwrite replaces it")


def _export(db: sqlite3.Connection, path: str, records: RecordFile) -> None:
    """Write every record, or remove the output: half an export is not one."""
    try:
        if records.format == "sids":
            for sid in failed_sids(db, path):
                records.write_bytes(f"{sid}\n".encode())
        else:
            for call in exported_calls(db, path):
                records.write_bytes(records.encode(call))
    except BaseException:
        records.close()
        records.remove()
        raise
    records.close()
