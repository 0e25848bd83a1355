"""The files of a fetch: SIDs in, one line per call out, failures to the errors file.

SIDs come from the arguments and from a file or stdin, one per line (the
first field, so an errors file feeds back in; ``#`` comments skipped). Each
result is written as one whole, flushed line, JSON (the API's field names) or
CSV (a column per leaf field), so a crash never loses a finished result, and
``--resume`` reads back which SIDs an earlier run already wrote.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO, Final

import attrs

from ccm_async import AgentDetails, CallDetails, CallResult, CustomerDetails
from ccm_async._cli_summary import error_code
from ccm_async._convert import unstructure_call

__all__ = [
    "CSV_COLUMNS",
    "count_sids",
    "csv_row",
    "error_line",
    "open_output",
    "resume_point",
    "sids",
    "writer",
]

_NESTED: Final = {"assigned_agent_details": AgentDetails, "customer_details": CustomerDetails}
CSV_COLUMNS: Final = tuple(
    f"{field.name}.{inner.name}" if field.name in _NESTED else field.name
    for field in attrs.fields(CallDetails)
    for inner in (attrs.fields(_NESTED[field.name]) if field.name in _NESTED else (field,))
)


def sids(given: Iterable[str], input_path: str | None) -> Iterator[str]:
    """The SIDs given, then those of ``input_path`` ('-': stdin), read lazily."""
    yield from given
    if input_path is None:
        return
    stream = sys.stdin if input_path == "-" else Path(input_path).open(encoding="utf-8")  # noqa: SIM115
    with stream:
        yield from _sids_in(stream)


def _sids_in(lines: Iterable[str]) -> Iterator[str]:
    """The first field of each line (an errors file feeds back in); '#' comments skipped."""
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            yield text.replace(",", "\t").split()[0]


def count_sids(given: tuple[str, ...], input_path: str | None) -> int | None:
    """How many SIDs :func:`sids` yields; None for stdin, which is read only once."""
    if input_path == "-":
        return None
    count = len(given)
    if input_path is not None:
        with Path(input_path).open(encoding="utf-8") as lines:
            count += sum(1 for _ in _sids_in(lines))
    return count


def resume_point(output: str, format_: str) -> set[str]:
    """The SIDs already written; a partial last line (a killed run) is cut off."""
    path = Path(output)
    if not path.exists():
        return set()
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as file:
            file.truncate(len(whole))
    text = whole.decode("utf-8")
    if format_ == "csv":
        return {row["call_sid"] for row in csv.DictReader(io.StringIO(text))}
    return {json.loads(line)["call_sid"] for line in text.splitlines() if line}


def open_output(output: str | None, *, append: bool) -> AbstractContextManager[IO[str]]:
    """The output file (stdout without one), appended to when resuming."""
    if output is None:
        return nullcontext(sys.stdout)
    mode = "a" if append else "w"
    return Path(output).open(mode, encoding="utf-8", newline="")


def writer(format_: str, out: IO[str], *, header: bool) -> Callable[[CallDetails], None]:
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


def error_line(result: CallResult) -> str:
    """A failed SID's line of the errors file: SID, error code, message (tab-separated)."""
    message = " ".join(str(result.error).split())
    return f"{result.call_sid}\t{error_code(result.error)}\t{message}\n"
