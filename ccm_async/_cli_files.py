"""A fetch's JSON lines and CSV outputs, and its errors file: whole records, read back exactly.

The output's format comes from its extension (``.jsonl``/``.ndjson``, ``.csv``;
``.db``, ``.sqlite``, ``.sqlite3`` are job files, ``_cli_jobfile``) or from
``--format``; the two must agree, and so must an existing file's contents. An
existing output is continued with ``--resume`` or replaced with
``--overwrite``, never truncated silently.

Each record is written whole and unbuffered: JSON with non-ASCII escaped (any
string a server sends, a lone surrogate or U+2028 included, is written and read
back as it was), CSV a column per leaf field (a character UTF-8 cannot encode,
a lone surrogate, is written as U+FFFD). A write that fails (disk full) cuts
the file back to its last whole record and raises :class:`OutputError`.
``--resume`` reads back the complete records (JSON lines split on ``\\n`` only,
CSV rows by the csv reader, quoted newlines included), checks each one, and
cuts off a partial last record.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final, cast

import attrs

from ccm_async import AgentDetails, CallDetails, CallResult, CustomerDetails
from ccm_async._cli_input import allow_long_csv_fields
from ccm_async._cli_jobfile import JOB_FILE_SUFFIXES
from ccm_async._cli_summary import error_code
from ccm_async._command import silence_stdout

__all__ = [
    "CSV_COLUMNS",
    "ErrorsFile",
    "OutputError",
    "RecordFile",
    "csv_row",
    "json_line",
    "output_format",
    "resume_point",
    "utf8",
]

_NESTED: Final = {"assigned_agent_details": AgentDetails, "customer_details": CustomerDetails}
CSV_COLUMNS: Final = tuple(
    f"{field.name}.{inner.name}" if field.name in _NESTED else field.name
    for field in attrs.fields(CallDetails)
    for inner in (attrs.fields(_NESTED[field.name]) if field.name in _NESTED else (field,))
)
_EXTENSIONS: Final = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"} | dict.fromkeys(
    JOB_FILE_SUFFIXES, "job"
)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")  # in a str, only ever a lone one
_CSV_HEADER: Final = ",".join(CSV_COLUMNS).encode() + b"\n"


class OutputError(Exception):
    """An output cannot be written or continued: which file and why."""


def output_format(output: str | None, format_: str | None) -> str:
    """``jsonl``, ``csv`` or ``job``: from ``--format``, else the extension (JSON lines)."""
    by_name = _EXTENSIONS.get(Path(output).suffix.lower()) if output and output != "-" else None
    if format_ and by_name and format_ != by_name:
        raise OutputError(f"{output} is named as {by_name}, but --format is {format_}")
    return format_ or by_name or "jsonl"


def json_line(data: dict[str, Any]) -> bytes:
    """One JSON line, non-ASCII escaped: it encodes whatever the server sent."""
    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def csv_row(data: dict[str, Any]) -> list[str]:
    """One CSV row of a call's API JSON: a column per leaf field, recording URLs space-joined."""
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


def _csv_bytes(row: list[str]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(row)
    return utf8(text.getvalue())


def utf8(text: str) -> bytes:
    """``text`` as UTF-8, a lone surrogate (which UTF-8 cannot encode) as U+FFFD."""
    return _SURROGATE.sub("\ufffd", text).encode()


@attrs.define
class RecordFile:
    """A JSON lines or CSV output (stdout for ``-``), one whole record per write."""

    name: str
    format: str
    _out: IO[bytes]
    _size: int | None  # its length after the last whole record; None: not a regular file
    _owned: bool  # closed with the RecordFile (stdout is not)

    @classmethod
    def open(cls, output: str | None, format_: str, *, append: bool) -> RecordFile:
        """Open ``output`` (stdout when None or '-'); a new file gets the CSV header."""
        if output is None or output == "-":
            if sys.stdout is None:
                raise OutputError("cannot write stdout: it is closed")
            record_file = cls("stdout", format_, sys.stdout.buffer, None, False)
        else:
            try:
                out = Path(output).open("ab" if append else "wb", buffering=0)  # noqa: SIM115
            except OSError as exc:
                raise OutputError(f"cannot write {output}: {exc.strerror}") from exc
            # A FIFO or a device has no length to cut back to.
            size = out.tell() if stat.S_ISREG(os.fstat(out.fileno()).st_mode) else None
            record_file = cls(output, format_, out, size, True)
        if format_ == "csv" and not append:
            record_file.write_bytes(_CSV_HEADER)
        return record_file

    def write(self, call: CallDetails) -> None:
        """Write one call as one whole record."""
        self.write_bytes(self.encode(call.to_dict()))

    def encode(self, data: dict[str, Any]) -> bytes:
        """One call's record, from its API JSON."""
        return json_line(data) if self.format == "jsonl" else _csv_bytes(csv_row(data))

    def write_bytes(self, record: bytes) -> None:
        """Write ``record`` whole, or cut back to the last whole record and raise OutputError."""
        try:
            left = memoryview(record)
            while left:  # an unbuffered write may take part of it (a disk filling up)
                left = left[self._out.write(left) :]
            self._out.flush()
        except OSError as exc:
            self._cut_back()
            if not self._owned:
                silence_stdout()
            raise OutputError(f"cannot write {self.name}: {exc.strerror or exc}") from exc
        if self._size is not None:
            self._size += len(record)

    def _cut_back(self) -> None:
        if self._size is None:
            return
        # A file that cannot be cut (a device) keeps its partial tail: resume cuts it.
        with contextlib.suppress(OSError):
            os.truncate(self._out.fileno(), self._size)

    def remove(self) -> None:
        """Remove the file written (a regular file of its own; never stdout or a device)."""
        if self._owned and self._size is not None:
            Path(self.name).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the file (never stdout)."""
        if self._owned:
            self._out.close()
        else:
            self._out.flush()


@attrs.define
class ErrorsFile:
    """The errors file: a failed SID per line, SID, error code, message; removed if none failed."""

    _file: RecordFile
    count: int = 0

    @classmethod
    def open(cls, path: str) -> ErrorsFile:
        """Create (or replace) the errors file at ``path``."""
        return cls(RecordFile.open(path, "tsv", append=False))

    @property
    def path(self) -> str:
        """Where it is."""
        return self._file.name

    def write(self, result: CallResult) -> None:
        """One failed SID's line."""
        message = " ".join(str(result.error).split())
        self._file.write_bytes(utf8(f"{result.call_sid}\t{error_code(result.error)}\t{message}\n"))
        self.count += 1

    def close(self) -> None:
        """Close it; an empty one is removed (no SID failed), if it is a file of its own."""
        self._file.close()
        with contextlib.suppress(OSError):
            if self.count == 0 and stat.S_ISREG(os.lstat(self.path).st_mode):
                Path(self.path).unlink()


def resume_point(output: str, format_: str) -> set[str]:
    """The SIDs already written to ``output``; a partial last record is cut off."""
    path = Path(output)
    try:
        data = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise OutputError(f"cannot read {output}: {exc.strerror}") from exc
    if not data:
        return set()
    if format_ == "csv" and _CSV_HEADER.startswith(data):
        whole, done = 0, set[str]()  # cut off inside its header: no record was written yet
    else:
        _check_contents(output, data, format_)
        whole = _whole_records(data, format_)
        done = _sids_of_records(output, data[:whole], format_)
    if whole != len(data):
        try:
            with path.open("r+b") as file:
                file.truncate(whole)
        except OSError as exc:
            raise OutputError(f"cannot cut the partial last record of {output}: {exc}") from exc
    return done


def _check_contents(output: str, data: bytes, format_: str) -> None:
    found = "csv" if data.startswith(_CSV_HEADER[:9]) else "jsonl" if data[:1] == b"{" else None
    if found is None:
        raise OutputError(f"{output} is not a ccm-async JSON lines or CSV output: not resumed")
    if found != format_:
        raise OutputError(f"{output} holds {found}, not {format_}: give a {found} output name")


def _whole_records(data: bytes, format_: str) -> int:
    """The length of ``data``'s complete records: up to the last record-ending newline."""
    if format_ == "jsonl":
        return data.rfind(b"\n") + 1
    # A newline ends a CSV record when it is outside quotes: after an even number of them.
    end = 0
    quotes = 0
    start = 0
    while (newline := data.find(b"\n", start)) != -1:
        quotes += data.count(b'"', start, newline)
        if quotes % 2 == 0:
            end = newline + 1
        start = newline + 1
    return end


def _sids_of_records(output: str, data: bytes, format_: str) -> set[str]:
    text = data.decode("utf-8", "replace")
    if format_ == "jsonl":
        return {_sid_of_json(output, number, line) for number, line in _json_lines(text)}
    allow_long_csv_fields()
    rows = csv.reader(io.StringIO(text, newline=""))
    if tuple(next(rows, ())) != CSV_COLUMNS:
        raise OutputError(f"{output}: its CSV header is not ccm-async's: not resumed")
    sids = set[str]()
    for row in rows:
        if len(row) != len(CSV_COLUMNS) or not row[0]:
            raise OutputError(f"{output}, line {rows.line_num}: not a whole call record")
        sids.add(row[0])
    return sids


def _json_lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines split on ``\\n`` only (``str.splitlines`` splits at U+2028 too)."""
    return ((number, line) for number, line in enumerate(text.split("\n"), start=1) if line)


def _sid_of_json(output: str, number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    sid = cast("dict[str, object]", record).get("call_sid") if isinstance(record, dict) else None
    if not isinstance(sid, str):
        raise OutputError(f"{output}, line {number}: not a whole call record")
    return sid
