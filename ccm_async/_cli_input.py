"""The SIDs a fetch reads: from its arguments and one input, each read exactly once.

An input is a file, a pipe, a FIFO or ``-`` (stdin), read as bytes once and
never reopened, so a pipe or a process substitution gives all its lines. Each
line is UTF-8, with or without a byte-order mark (Excel and Notepad write
one); a line that is not valid UTF-8 is an :class:`InputError` naming its line.
Blank lines, ``#`` comments, CRLF and surrounding space are ignored; a line's
first field is its SID, so an errors file feeds back in. ``column=NAME`` reads
that column of a CSV file instead (a CRM export), its header naming it.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final, TypeVar

import anyio
import anyio.from_thread

__all__ = ["InputError", "allow_long_csv_fields", "distinct", "in_daemon_thread", "read_sids"]

_BOM: Final = codecs.BOM_UTF8
_T = TypeVar("_T")


class InputError(Exception):
    """The input cannot be read as SIDs: which input, which line, and why."""


def read_sids(given: Iterable[str], input_path: str | None, *, column: str | None) -> Iterator[str]:
    """The SIDs given, then those of ``input_path`` ('-': stdin), read lazily and once."""
    yield from given
    if input_path is None:
        return
    if input_path == "-" and sys.stdin is None:
        raise InputError("cannot read stdin: it is closed")
    try:
        stream: BinaryIO = sys.stdin.buffer if input_path == "-" else Path(input_path).open("rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read {input_path}: {exc.strerror}") from exc
    with stream:
        lines = _decoded(stream, name="stdin" if input_path == "-" else input_path)
        yield from (_column(lines, column, name=input_path) if column else _first_fields(lines))


async def in_daemon_thread(read: Callable[[], _T]) -> _T:
    """``read()`` in a daemon thread: a read blocked on a silent FIFO never holds up the exit.

    Cancelled (SIGTERM), the read is left to the thread and its result ignored.
    """
    results: list[_T] = []
    errors: list[BaseException] = []
    finished = anyio.Event()
    async with anyio.from_thread.BlockingPortal() as portal:

        def target() -> None:
            try:
                results.append(read())
            except BaseException as exc:
                errors.append(exc)
            with contextlib.suppress(RuntimeError):  # the portal stopped: nobody waits
                portal.call(finished.set)

        threading.Thread(target=target, name="ccm-async input", daemon=True).start()
        await finished.wait()
    if errors:
        raise errors[0]
    return results[0]


def allow_long_csv_fields() -> None:
    """Let the csv reader take a field of any length a record can have (its own cap is 128 KiB)."""
    csv.field_size_limit(2**31 - 1)


def distinct(sids: Iterable[str]) -> Iterator[str]:
    """Each SID once, in the order first given."""
    seen: set[str] = set()
    for sid in sids:
        if sid not in seen:
            seen.add(sid)
            yield sid


def _decoded(stream: BinaryIO, *, name: str) -> Iterator[str]:
    """Each line as text (a BOM dropped), or an InputError naming the first bad line."""
    try:
        for number, raw in enumerate(stream, start=1):
            line = raw.removeprefix(_BOM)  # any line: files that Excel wrote get concatenated
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{name}, line {number}: not UTF-8 (byte {line[exc.start]:#04x} "
                    f"at column {exc.start + 1}); save the file as UTF-8"
                ) from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror}") from exc


def _first_fields(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            yield text.replace(",", "\t").split()[0]


def _column(lines: Iterable[str], column: str, *, name: str) -> Iterator[str]:
    allow_long_csv_fields()
    rows = csv.reader(lines)
    header = [field.strip() for field in next(rows, list[str]())]
    if column not in header:
        names = ", ".join(header) or "none: the file is empty"
        raise InputError(f"{name}: no column {column!r} in its header (columns: {names})")
    index = header.index(column)
    for row in rows:
        value = row[index].strip() if index < len(row) else ""
        if value:
            yield value
