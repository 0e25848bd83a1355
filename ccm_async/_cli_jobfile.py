"""The job file: a bulk fetch as an SQLite database, durable, re-runnable, readable meanwhile.

Its layout is a public interface (the README documents it):

- ``job``: one row, the account SID the file belongs to, the API host of its
  latest run, when it was created, and the layout's version.
- ``calls``: one row per distinct SID, in the order first given: ``state``
  (``pending``, ``ok``, ``not_found``, ``failed``), ``call`` (the call as JSON
  text, the API's field names, when ok), ``error_class``, ``http_status``,
  ``error_code`` and ``error_message`` (when not), ``attempts`` (how many runs
  looked the SID up) and ``fetched_at`` (UTC, ISO 8601).

Results are committed in small transactions (WAL): a killed run loses at most
the last uncommitted few and never leaves half a row, and a reader (``status``,
``export``, a user's ``sqlite3``) sees whole commits while a fetch writes.
Running the same fetch again continues: ``ok`` and ``not_found`` SIDs are
skipped, ``pending`` and ``failed`` ones are fetched. One fetch at a time
holds the file (an advisory lock beside SQLite's own).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import sqlite3
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, Final, cast

import attrs

from ccm_async._errors import ApiError, CallNotFoundError
from ccm_async._models import CallResult

__all__ = [
    "JOB_FILE_SUFFIXES",
    "JobFile",
    "JobFileError",
    "JobStatus",
    "exported_calls",
    "failed_sids",
    "failure_name",
    "job_status",
    "open_job",
    "read_job",
]

JOB_FILE_SUFFIXES: Final = (".db", ".sqlite", ".sqlite3")
LAYOUT_VERSION: Final = 1
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
# A commit after this many results or seconds, whichever comes first: a killed
# run loses no more, and commits stay cheap beside the lookups they record.
_COMMIT_EVERY: Final = 64
_COMMIT_AFTER: Final = 0.25

_SCHEMA: Final = """
CREATE TABLE job (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    layout_version INTEGER NOT NULL,
    account_sid TEXT NOT NULL,
    api_host TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE calls (
    call_sid TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'ok', 'not_found', 'failed')),
    call TEXT,
    error_class TEXT,
    http_status INTEGER,
    error_code INTEGER,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    fetched_at TEXT
);
CREATE INDEX calls_by_outcome ON calls (state, error_class, http_status, error_code);
CREATE INDEX calls_by_time ON calls (fetched_at);
"""


class JobFileError(Exception):
    """The job file cannot be used: which file and why."""


def failure_name(error_class: str, http_status: int | None, code: int | None) -> str:
    """``HTTP 500 code 1234`` for an answer from the API, else the error's class name."""
    if http_status is None:
        return error_class
    return f"HTTP {http_status}" + (f" code {code}" if code else "")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _connect(path: str, *, read_only: bool) -> sqlite3.Connection:
    uri = f"{Path(path).absolute().as_uri()}?mode={'ro' if read_only else 'rwc'}"
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise JobFileError(f"cannot open {path}: {exc}") from exc


@contextmanager
def _reading(path: str) -> Generator[None]:
    """sqlite3's errors while reading, as a JobFileError naming the file."""
    try:
        yield
    except sqlite3.Error as exc:
        raise JobFileError(f"cannot read {path}: {exc}") from exc


def _check_is_a_job_file(path: str) -> None:
    file = Path(path)
    if not file.exists() or file.stat().st_size == 0:
        return
    with file.open("rb") as head:
        if head.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise JobFileError(f"{path} exists and is not an SQLite file: not a job file")


def _account_of(db: sqlite3.Connection, path: str) -> str | None:
    """The account the job file belongs to; None for an empty database (a new job file)."""
    with _reading(path):
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return None
        if not {"job", "calls"} <= tables:
            raise JobFileError(f"{path} is an SQLite database but not a ccm-async job file")
        row = db.execute("SELECT account_sid FROM job").fetchone()
    if row is None:
        raise JobFileError(f"{path} is a ccm-async job file without its job row")
    return str(row[0])


@attrs.define
class JobFile:
    """A job file open for a fetch: SIDs in, results recorded in small commits."""

    path: str
    _db: sqlite3.Connection
    _lock: IO[bytes]
    _uncommitted: list[CallResult] = attrs.field(factory=list[CallResult])
    _last_commit: float = attrs.field(factory=time.monotonic)

    def add(self, sids: Iterable[str]) -> None:
        """Add new SIDs as ``pending`` (known ones are left as they are)."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO calls (call_sid) VALUES (?)", ((sid,) for sid in sids)
            )

    def to_fetch(self) -> int:
        """How many SIDs are ``pending`` or ``failed``."""
        with _reading(self.path):
            row = self._db.execute(
                "SELECT count(*) FROM calls WHERE state IN ('pending', 'failed')"
            ).fetchone()
        return int(row[0])

    def sids_to_fetch(self, *, batch: int = 1000) -> Iterator[str]:
        """The ``pending`` and ``failed`` SIDs in input order, read in batches as needed."""
        after = 0
        while True:
            with _reading(self.path):
                rows = self._db.execute(
                    "SELECT rowid, call_sid FROM calls WHERE rowid > ? "
                    "AND state IN ('pending', 'failed') ORDER BY rowid LIMIT ?",
                    (after, batch),
                ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            yield from (str(row[1]) for row in rows)

    def record(self, result: CallResult) -> list[CallResult]:
        """Record one result; the results this made durable (a commit), if any."""
        self._uncommitted.append(result)
        if (
            len(self._uncommitted) >= _COMMIT_EVERY
            or time.monotonic() - self._last_commit >= _COMMIT_AFTER
        ):
            return self.commit()
        return []

    def commit(self) -> list[CallResult]:
        """Commit what is recorded; the results this made durable."""
        results, self._uncommitted = self._uncommitted, []
        self._last_commit = time.monotonic()
        if not results:
            return []
        fetched_at = _now()
        with self._transaction():
            self._db.executemany(
                "UPDATE calls SET state = ?, call = ?, error_class = ?, http_status = ?, "
                "error_code = ?, error_message = ?, attempts = attempts + 1, fetched_at = ? "
                "WHERE call_sid = ?",
                (_row(result, fetched_at) for result in results),
            )
        return results

    def close(self) -> None:
        """Close the file (what is not committed is not recorded) and release it."""
        self._db.close()
        self._lock.close()

    def _transaction(self) -> AbstractContextManager[None]:
        return _writing(self._db, self.path)


def _row(result: CallResult, fetched_at: str) -> tuple[object, ...]:
    error = result.error
    if result.call is not None:
        call = json.dumps(result.call.to_dict(), separators=(",", ":"))
        return ("ok", call, None, None, None, None, fetched_at, result.call_sid)
    state = "not_found" if isinstance(error, CallNotFoundError) else "failed"
    status = error.http_status if isinstance(error, ApiError) else None
    code = error.code if isinstance(error, ApiError) and error.code else None
    return (
        state,
        None,
        type(error).__name__,
        status,
        code,
        str(error),
        fetched_at,
        result.call_sid,
    )


@contextmanager
def _writing(db: sqlite3.Connection, path: str) -> Generator[None]:
    """One write transaction (BEGIN IMMEDIATE), rolled back on failure; sqlite3's errors typed."""
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            db.rollback()
        if isinstance(exc, sqlite3.Error):
            raise JobFileError(f"cannot write {path}: {exc}") from exc
        raise


def open_job(path: str, *, account_sid: str, api_host: str, afresh: bool = False) -> JobFile:
    """Open (or create) the job file at ``path`` for a fetch on ``account_sid``.

    ``afresh`` starts the job over (``--overwrite``): a job file's rows are
    dropped once it is held, and a file at ``path`` that is not SQLite is
    replaced (another program's database never is).
    """
    try:
        _check_is_a_job_file(path)
    except JobFileError:
        if not afresh:
            raise
        Path(path).unlink()
    db = _connect(path, read_only=False)
    try:
        lock = _lock(path)
    except BaseException:
        db.close()
        raise
    job = JobFile(path, db, lock)
    try:
        _prepare(db, path, account_sid=account_sid, api_host=api_host, afresh=afresh)
    except BaseException:
        job.close()
        raise
    return job


def _prepare(
    db: sqlite3.Connection, path: str, *, account_sid: str, api_host: str, afresh: bool
) -> None:
    """Lay out a new job file, or check an old one is this account's; record the host."""
    owner = _account_of(db, path)
    # Only now, the file known to be a job file (or new): WAL, which another
    # program's database would keep. WAL with NORMAL survives a killed process;
    # power loss may drop the latest commits.
    with _reading(path):
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
    if owner is not None and afresh:
        with _writing(db, path):
            db.execute("DROP TABLE calls")
            db.execute("DROP TABLE job")
        owner = None
    if owner is not None and owner != account_sid:
        raise JobFileError(
            f"{path} belongs to account {owner}, not {account_sid}: "
            "give another job file for this account"
        )
    with _writing(db, path):
        if owner is None:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(
            "INSERT INTO job (id, layout_version, account_sid, api_host, created_at) "
            "VALUES (1, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET api_host = excluded.api_host",
            (LAYOUT_VERSION, account_sid, api_host, _now()),
        )


def _lock(path: str) -> IO[bytes]:
    """Hold the file for this fetch: a second fetch on it would fetch the same SIDs."""
    holder = Path(path).open("rb")  # noqa: SIM115 - held until the job file closes
    try:
        # flock is apart from SQLite's own (fcntl) locks: readers are never blocked.
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder.close()
        raise JobFileError(f"{path} is in use by another ccm-async fetch") from exc
    return holder


@attrs.frozen
class JobStatus:
    """Where a job stands: SIDs by state and failures by error, and when they were fetched."""

    account_sid: str
    api_host: str
    states: dict[str, int]
    failures: dict[str, int]
    first_fetch: str | None
    last_fetch: str | None

    @property
    def total(self) -> int:
        """SIDs in the job."""
        return sum(self.states.values())

    @property
    def left(self) -> int:
        """SIDs a fetch would still look up (pending or failed)."""
        return self.states["pending"] + self.states["failed"]

    @property
    def lookups_per_second(self) -> float | None:
        """SIDs fetched per second between the first fetch and the last."""
        if self.first_fetch is None or self.last_fetch is None:
            return None
        try:
            first = datetime.datetime.fromisoformat(self.first_fetch)
            span = (datetime.datetime.fromisoformat(self.last_fetch) - first).total_seconds()
        except (TypeError, ValueError):  # times written by something else
            return None
        return (self.total - self.states["pending"]) / span if span > 0 else None


def read_job(path: str) -> sqlite3.Connection:
    """The job file at ``path``, read-only (a fetch may be writing it meanwhile)."""
    if not Path(path).is_file():
        raise JobFileError(f"{path}: no such job file")
    _check_is_a_job_file(path)
    db = _connect(path, read_only=True)
    try:
        owner = _account_of(db, path)
    except BaseException:
        db.close()
        raise
    if owner is None:
        db.close()
        raise JobFileError(f"{path} is empty: not a job file")
    return db


def job_status(db: sqlite3.Connection, path: str) -> JobStatus:
    """The status of the job file ``db`` (one read transaction: its counts agree)."""
    with _reading(path), _snapshot(db):
        account_sid, api_host = db.execute("SELECT account_sid, api_host FROM job").fetchone()
        states: dict[str, int] = dict.fromkeys(("ok", "not_found", "failed", "pending"), 0)
        failures: dict[str, int] = {}
        rows = db.execute(
            "SELECT state, error_class, http_status, error_code, count(*) FROM calls "
            "GROUP BY state, error_class, http_status, error_code"
        )
        for state, error_class, http_status, code, count in rows:
            states[state] = states.get(state, 0) + count  # a state of another's: its own count
            if state == "failed":
                name = failure_name(error_class, http_status, code)
                failures[name] = failures.get(name, 0) + count
        # Apart, each is one step down the index; together they would scan it.
        (first,) = db.execute("SELECT min(fetched_at) FROM calls").fetchone()
        (last,) = db.execute("SELECT max(fetched_at) FROM calls").fetchone()
    return JobStatus(account_sid, api_host, states, failures, first, last)


@contextmanager
def _snapshot(db: sqlite3.Connection) -> Generator[None]:
    """One read transaction: what it reads is one commit's state."""
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


def exported_calls(db: sqlite3.Connection, path: str) -> Iterator[dict[str, Any]]:
    """The ok calls' API JSON, in input order."""
    query = "SELECT call_sid, call FROM calls WHERE state = 'ok' ORDER BY rowid"
    with _reading(path):
        for sid, call in db.execute(query):
            try:
                data = json.loads(call)
            except (TypeError, ValueError):
                data = None
            if not isinstance(data, dict):
                raise JobFileError(f"{path}: the call of {sid} is not a JSON object")
            yield cast("dict[str, Any]", data)


def failed_sids(db: sqlite3.Connection, path: str) -> Iterator[str]:
    """The failed SIDs (not found excluded: a retry would not find them), in input order."""
    query = "SELECT call_sid FROM calls WHERE state = 'failed' ORDER BY rowid"
    with _reading(path):
        for (sid,) in db.execute(query):
            yield str(sid)
