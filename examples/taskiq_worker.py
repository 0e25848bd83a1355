"""Bulk fetching over many processes and hosts, on taskiq and its Redis broker.

A task carries an account and a call SID. Each worker process keeps one
``AsyncCcmClient`` per account, its ``RateLimit`` shared through Redis, so
that each account is held to its own limit however many workers run, on
however many hosts. Each result (a call, or the error that stopped it) is a
line of JSON in the account's file, one file per worker process so that no
two processes write one file: ``{CCM_OUT}/{account}.{host}.{pid}.jsonl``.

Start workers (on any host that reaches Redis and the API), then enqueue::

    export CCM_TASKIQ_REDIS=redis://redis.internal:6379/0 CCM_ACCOUNTS=accounts.json
    CCM_OUT=calls/ taskiq worker examples.taskiq_worker:broker --workers 4
    python -m examples.taskiq_worker ACCOUNT_SID sids.txt

``accounts.json`` maps each account SID to its client's settings, the
limit's ``requests`` and ``per`` among them::

    {"<account sid>": {"api_key": "...", "api_token": "...", "region": "in",
                       "requests": 200, "per": 60}}

Each task goes to one worker (a Redis list: at most once), and each result is
written once. A worker that dies, or is stopped before the queue is empty,
loses the tasks it held: enqueue the same file again, and only the SIDs with
no line in ``CCM_OUT`` are enqueued, so a run can be finished however often it
was cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from taskiq import Context, TaskiqDepends, TaskiqEvents, TaskiqState
from taskiq_redis import ListQueueBroker

from ccm_async import AsyncCcmClient, CallResult, RateLimit

REDIS_URL = os.environ.get("CCM_TASKIQ_REDIS", "redis://127.0.0.1:6379/0")
"""The broker's Redis, and the rate limits' (``CCM_RATE_LIMIT_REDIS`` for another)."""

# A list, not a stream with acknowledgements: taskiq-redis's stream broker ran
# 20 tasks/s here (its workers take turns at a lock after each read), the list 90.
# Its reads wait for a task as long as the queue is empty: with the pool's socket
# timeout (5 s) an idle worker's read failed, and the worker with it.
broker = ListQueueBroker(REDIS_URL, socket_timeout=None, socket_keepalive=True)


class Accounts:
    """One client per account, and the files their results go to."""

    def __init__(self, config: Mapping[str, Mapping[str, Any]], out: Path) -> None:
        self._config = config
        self._out = out
        self._clients: dict[str, AsyncCcmClient] = {}
        self._files: dict[str, IO[str]] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Accounts:
        storage = os.environ.get("CCM_RATE_LIMIT_REDIS", REDIS_URL)
        self._out.mkdir(parents=True, exist_ok=True)
        for account, settings in self._config.items():
            options = dict(settings)
            limit = RateLimit(
                requests=options.pop("requests", 200),
                per=options.pop("per", 60.0),
                storage=storage,
            )
            client = AsyncCcmClient(account_sid=account, rate_limit=limit, **options)
            self._clients[account] = await self._stack.enter_async_context(client)
            name = f"{account}.{socket.gethostname()}.{os.getpid()}.jsonl"
            path = self._out / name
            self._files[account] = self._stack.enter_context(path.open("a", encoding="utf-8"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def fetch(self, account: str, call_sid: str) -> None:
        """Look ``call_sid`` up for ``account`` and write its result."""
        (result,) = await self._clients[account].get_calls([call_sid])
        self._write(account, result)

    def _write(self, account: str, result: CallResult) -> None:
        file = self._files[account]
        file.write(json.dumps(result.to_dict(), separators=(",", ":")) + "\n")
        file.flush()  # a line is whole once written: a reader may read as it goes


def accounts_from_env() -> Accounts:
    """The accounts ``CCM_ACCOUNTS`` names, their results to go to ``CCM_OUT``."""
    config = json.loads(Path(os.environ["CCM_ACCOUNTS"]).read_text(encoding="utf-8"))
    return Accounts(config, Path(os.environ.get("CCM_OUT", "calls")))


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def open_accounts(state: TaskiqState) -> None:
    state.accounts = await accounts_from_env().__aenter__()


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def close_accounts(state: TaskiqState) -> None:
    accounts: Accounts = state.accounts
    await accounts.__aexit__(None, None, None)


# Named: a task kicked from ``python -m`` (module __main__) is the workers' task too.
@broker.task(task_name="ccm_async.fetch_call")
async def fetch_call(
    account: str,
    call_sid: str,
    context: Context = TaskiqDepends(),  # noqa: B008 - how a taskiq task asks for it
) -> None:
    """One SID of one account: its result written (an error is a result too)."""
    accounts: Accounts = context.state.accounts
    await accounts.fetch(account, call_sid)


def written(out: Path, account: str) -> set[str]:
    """The SIDs of ``account`` with a result in ``out`` (whole lines: a worker may
    be writing one)."""
    sids: set[str] = set()
    for path in out.glob(f"{account}.*.jsonl"):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                # A line cut short (its worker died writing it) is no result.
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    sids.add(json.loads(line)["call_sid"])
    return sids


async def enqueue(account: str, sids: Iterable[str]) -> int:
    """A task for each of ``sids``; how many."""
    count = 0
    await broker.startup()
    try:
        for sid in sids:
            await fetch_call.kiq(account, sid)
            count += 1
    finally:
        await broker.shutdown()
    return count


def main() -> None:
    account, path = sys.argv[1:3]
    done = written(Path(os.environ.get("CCM_OUT", "calls")), account)
    with Path(path).open(encoding="utf-8-sig") as lines:  # a BOM is no part of a SID
        sids = dict.fromkeys(sid for line in lines if (sid := line.strip()) and sid not in done)
    count = asyncio.run(enqueue(account, sids))
    print(f"{count:,} SIDs of {account} enqueued ({len(done):,} had a result)")


if __name__ == "__main__":
    main()
