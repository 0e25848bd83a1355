"""The rate limit shared through Redis, against a real redis-server.

Four processes, each with a client of its own on one account, against a FakeCcm
that answers 429 past exactly the limit and records when each request arrived:
the window holds at the server, and holds when Redis stops halfway. In-process:
the shared pause, Redis's failures (down, silent, answering nonsense, a wrong
password) falling back to the client's share, and the settings.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis

from ccm_async import AsyncCcmClient, CallDetails, CallState, ConfigurationError, RateLimit
from ccm_async._shared import Permit, SharedStore, Verdict, _checked, _share
from ccm_async._throttle import redacted_url
from ccm_async.testing import FakeCcm, Fault

from .conftest import most_in_any_window
from .redis_support import RedisServer, free_port, redis_server_fixture

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent


def worker_sids(first: int, count: int) -> list[str]:
    return [f"c{index:031d}" for index in range(first, first + count)]


def served_fake(count: int, limit: RateLimit, **options: Any) -> FakeCcm:
    fake = FakeCcm(
        rate_limit=limit, api_key="k", api_token="t", account_sid="fake-account", **options
    )
    for sid in worker_sids(0, count):
        fake.add_call(CallDetails(call_sid=sid, call_state=CallState.TERMINAL))
    return fake


async def run_workers(
    base_url: str, storage: str, backend: str, *, processes: int, each: int, limit: RateLimit
) -> list[dict[str, Any]]:
    """``processes`` clients in processes of their own, ``each`` SIDs apiece."""
    outcomes: list[dict[str, Any]] = []

    async def worker(first: int) -> None:
        arguments = [base_url, storage, backend, first, each, limit.requests, limit.per]
        done = await anyio.run_process(
            [sys.executable, "-m", "tests.shared_worker", *map(str, arguments)],
            cwd=ROOT,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        outcomes.append(json.loads(done.stdout))

    async with anyio.create_task_group() as group:
        for index in range(processes):
            group.start_soon(worker, index * each)
    return outcomes


LIMIT = RateLimit(requests=20, per=1.0)


async def test_four_processes_keep_to_one_window(redis_url: str, anyio_backend: str) -> None:
    fake = served_fake(2000, LIMIT)
    async with fake.serve() as base_url:
        outcomes = await run_workers(
            base_url, redis_url, anyio_backend, processes=4, each=500, limit=LIMIT
        )
    assert [outcome["ok"] for outcome in outcomes] == [500] * 4
    assert all(outcome["redis_logs"] == [] for outcome in outcomes)
    statuses = [request.status for request in fake.requests]
    assert statuses == [200] * 2000  # not one 429
    arrivals = [request.time for request in fake.requests]
    assert most_in_any_window(arrivals, per=1.0) <= 20
    # At least 90% of the limit used, from the first arrival to the last.
    rate = (len(arrivals) - 20) / (max(arrivals) - min(arrivals))
    assert rate >= 0.9 * 20, f"{rate:.2f} requests/s"


async def test_redis_stopped_halfway_costs_no_lookup(
    redis_server: RedisServer, redis_url: str, anyio_backend: str
) -> None:
    fake = served_fake(2000, LIMIT, rate_limit_retry_after=True)

    async def outage() -> None:
        with anyio.fail_after(120):  # a guard
            while fake.request_count < 1000:  # noqa: ASYNC110 - the server's thread counts
                await anyio.sleep(0.05)
        redis_server.stop()
        await anyio.sleep(3)
        redis_server.start()

    async with fake.serve() as base_url, anyio.create_task_group() as group:
        group.start_soon(outage)
        outcomes = await run_workers(
            base_url, redis_url, anyio_backend, processes=4, each=500, limit=LIMIT
        )
    assert [outcome["ok"] for outcome in outcomes] == [500] * 4
    for outcome in outcomes:
        logs = outcome["redis_logs"]
        assert len(logs) == 2, logs
        assert "failed (ConnectionError)" in logs[0]
        assert "keeps to 5 requests per 1s (its share of 4 clients)" in logs[0]
        assert "answers again" in logs[1]


# -- in-process ------------------------------------------------------------------------


def shared(storage: str, **options: Any) -> RateLimit:
    return RateLimit(requests=20, per=1.0, storage=storage, **options)


async def test_one_client_s_429_pauses_the_others(redis_url: str) -> None:
    fake = FakeCcm()
    for sid in worker_sids(0, 3):
        fake.add_call(CallDetails(call_sid=sid, call_state=CallState.TERMINAL))
    first, second, third = worker_sids(0, 3)
    fake.fail(first, Fault.rate_limited(retry_after=1), times=1)
    async with (
        fake.client(rate_limit=shared(redis_url)) as paused,
        fake.client(rate_limit=shared(redis_url)) as other,
    ):
        async with anyio.create_task_group() as group:
            group.start_soon(paused.get_call, first)  # its 429, then its retry
            await anyio.sleep(0.5)
            group.start_soon(other.get_call, second)
        await other.get_call(third)
    limited, *after = fake.requests
    assert (limited.call_sid, limited.status) == (first, 429)
    assert sorted(str(request.call_sid) for request in after) == [first, second, third]
    # The other client learnt of the pause from Redis alone, and waited it out.
    assert min(request.time for request in after) >= limited.time + 1


async def test_an_unreachable_redis_leaves_the_client_its_own_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    fake = FakeCcm()
    sids = worker_sids(0, 30)
    for sid in sids:
        fake.add_call(CallDetails(call_sid=sid, call_state=CallState.TERMINAL))
    async with fake.client(rate_limit=shared(closed)) as ccm:
        results = await ccm.get_calls(sids)
    assert all(result.ok for result in results)
    (warning,) = [r for r in caplog.records if "Redis" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert "failed (ConnectionError)" in warning.getMessage()
    assert "keeps to 20 requests per 1s (its share of 1 clients)" in warning.getMessage()
    assert most_in_any_window([request.time for request in fake.requests], per=1.0) <= 20


@asynccontextmanager
async def misbehaving_redis(answer: bytes | None) -> AsyncIterator[str]:
    """A TCP server that answers every command with ``answer`` (None: never)."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                while await stream.receive():
                    if answer is not None:
                        await stream.send(answer)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio's, not Django's
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        yield f"redis://127.0.0.1:{port}/0"
        group.cancel_scope.cancel()


@pytest.mark.parametrize(
    "answer",
    [
        None,  # silent
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
        b"-ERR unknown command\r\n",
        b"$99999999999\r\n",  # a bulk string that never comes
        b"*-5\r\n:x\r\n",
    ],
    ids=["silent", "http", "error", "truncated", "nonsense"],
)
async def test_a_redis_that_misbehaves_costs_no_lookup(
    answer: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeCcm()
    sids = worker_sids(0, 5)
    for sid in sids:
        fake.add_call(CallDetails(call_sid=sid, call_state=CallState.TERMINAL))
    async with (
        misbehaving_redis(answer) as url,
        fake.client(rate_limit=shared(url, storage_timeout=0.05)) as ccm,
    ):
        results = await ccm.get_calls(sids)
    assert all(result.ok for result in results)
    warnings = [r.getMessage() for r in caplog.records if "Redis" in r.getMessage()]
    assert len(warnings) == 1
    assert f"Redis at {url} failed (" in warnings[0]


async def test_a_password_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCcm()
    fake.add_call(CallDetails(call_sid="c1", call_state=CallState.TERMINAL))
    async with misbehaving_redis(b"-WRONGPASS invalid password\r\n") as url:
        with_password = url.replace("redis://", "redis://user:hunter2-secret@")
        limit = shared(with_password, storage_timeout=0.05)
        assert "hunter2" not in repr(limit)
        assert url.replace("redis://", "redis://***@") in repr(limit)
        async with fake.client(rate_limit=limit) as ccm:
            assert (await ccm.get_call("c1")).call_sid == "c1"
            assert "hunter2" not in repr(ccm)
    messages = [record.getMessage() for record in caplog.records]
    assert any("redis://***@127.0.0.1" in message for message in messages)
    assert not any("hunter2" in message for message in messages)


async def test_a_closed_client_leaves_no_permit_in_flight(redis_url: str) -> None:
    fake = FakeCcm()
    sids = worker_sids(0, 10)
    for sid in sids:
        fake.add_call(CallDetails(call_sid=sid, call_state=CallState.TERMINAL))
    async with fake.client(rate_limit=shared(redis_url)) as ccm:
        await ccm.get_calls(sids)
    with redis.Redis.from_url(redis_url) as client:  # pyright: ignore[reportUnknownMemberType]
        (key,) = client.keys("*:window")
        seconds, microseconds = client.time()
        now = seconds * 1000 + microseconds // 1000
        ends = [score for _, score in client.zrange(key, 0, -1, withscores=True)]
        assert len(ends) == 10
        assert all(end <= now for end in ends)  # every one ended, none in flight
        assert client.keys("*:clients") == []  # it left the live clients


# -- the settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "storage",
    [b"redis://127.0.0.1", 6379, "http://127.0.0.1:6379", "127.0.0.1:6379", "redis://a b",
     "redis://127.0.0.1\n", "redis://" + "a" * 2000, "redis://h:abc/0", "redis://h:99999999/0",
     "redis://:pw@[::1/0", "redis://h/0?socket_timeout=abc", "redis://h/0?db=zz"],
    ids=repr,
)  # fmt: skip
def test_a_storage_that_is_no_redis_url_is_refused(storage: object) -> None:
    with pytest.raises(ConfigurationError, match=r"RateLimit\.storage (must be|is not)") as info:
        RateLimit(requests=1, storage=storage)  # type: ignore[arg-type]
    assert info.value.__cause__ is None  # redis-py's message may quote a password


@pytest.mark.parametrize(
    "storage",
    ["http://user:hunter2@127.0.0.1", "redis://:hunter2@127.0.0.1\r", "redis://:hunt:er2@h:x/0"],
)
def test_a_password_in_a_refused_storage_is_not_shown(storage: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RateLimit(requests=1, storage=storage)
    assert "hunt" not in str(info.value)
    assert "://***@" in str(info.value)


def test_a_storage_without_the_extra_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    with pytest.raises(ConfigurationError, match=r"pip install 'ccm-async\[redis\]'"):
        RateLimit(requests=1, storage="redis://127.0.0.1")


@pytest.mark.parametrize("timeout", [0, 0.0001, 11, True, float("nan"), "1"], ids=repr)
def test_a_storage_timeout_out_of_bounds_is_refused(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match=r"storage_timeout must be from 0\.001 to 10"):
        RateLimit(requests=1, storage_timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:pw@host:1/2", "redis://***@host:1/2"),
        ("rediss://:pw@host", "rediss://***@host"),
        ("redis://:hunt#er2@host:1/0", "redis://***@host:1/0"),  # a # unescaped
        ("redis://:a/b?c@host", "redis://***@host"),
        ("redis://host:1/0?password=pw", "redis://host:1/0?..."),
        ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock?..."),
        ("redis://:pw@host\r\n", "redis://***@host\\r\\n"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    ("clients", "share"),
    [(1, (20, 1.0)), (4, (5, 1.0)), (3, (6, 1.0)), (20, (1, 1.0)), (40, (1, 2.0))],
)
def test_a_client_s_share_of_the_limit(clients: int, share: tuple[int, float]) -> None:
    limit = _share(LIMIT, clients)
    assert (limit.requests, limit.per) == share
    assert limit.requests / limit.per * clients <= LIMIT.requests / LIMIT.per


@pytest.mark.parametrize("ci", ["true", None])
def test_without_redis_server_the_tests_skip_except_in_ci(
    ci: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="redis-server is not installed"):
        next(redis_server_fixture(tmp_path_factory))


async def test_a_lookup_cancelled_while_redis_answers_leaves_no_permit(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SharedStore.take

    def take(store: SharedStore, asked: float) -> Verdict:
        time.sleep(0.2)  # Redis, slow: the lookup is gone before its permit comes
        return slow(store, asked)

    monkeypatch.setattr(SharedStore, "take", take)
    fake = FakeCcm()
    fake.add_call(CallDetails(call_sid="c1", call_state=CallState.TERMINAL))
    async with fake.client(rate_limit=shared(redis_url)) as ccm:
        for _ in range(3):
            with anyio.move_on_after(0.05):
                await ccm.get_call("c1")
        with redis.Redis.from_url(redis_url) as client:  # pyright: ignore[reportUnknownMemberType]
            with anyio.fail_after(10):  # a guard: each permit taken, then given back
                while entries(client, "window") or not entries(client, "clients"):  # noqa: ASYNC110
                    await anyio.sleep(0.05)  # Redis's state: no event tells of it
            assert fake.request_count == 0
            await ccm.get_call("c1")
            assert entries(client, "window") == 1


def entries(client: redis.Redis, kind: str) -> int:
    """The entries of the tests' account's sorted set of ``kind``."""
    return sum(int(client.zcard(key)) for key in client.keys(f"ccm_async:*:{kind}"))


def test_ends_redis_did_not_take_are_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SharedStore(shared("redis://127.0.0.1:1/0"), key="k")
    sent: list[list[tuple[str, int | None]]] = []

    def send(ends: list[tuple[str, int | None]]) -> None:
        sent.append(list(ends))
        if len(sent) == 1:
            raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr(store, "_send", send)
    store.end(Permit("a", 1000, 0.0), sent=False)  # given back unused: no clock needed
    sender = store._sender
    assert sender is not None
    deadline = time.monotonic() + 10  # a guard
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    store._ends.put(None)
    sender.join(timeout=10)
    assert sent == [[("a", None)], [("a", None)]]


@pytest.mark.parametrize(
    "reply",
    [[0, 0, 0, 1], [0, 0, -3, 1], [7, 0, 1, 1], [2, -1, 1, 1], [0, 0, 1], "x", None],
    ids=repr,
)
def test_a_reply_that_is_not_the_script_s_is_a_failure(reply: object) -> None:
    with pytest.raises(ValueError, match="not the take script's reply"):
        _checked(reply, 1000)


def test_a_wait_or_a_pause_read_from_redis_is_bounded() -> None:
    assert _checked([2, 10**12, 1, 5], 1000) == (2, 1000, 1, 5)
    assert _checked([1, 10**12, 1, 5], 1000) == (1, 86_400_000, 1, 5)


async def test_a_fallback_counts_what_the_client_has_just_sent(
    redis_server: RedisServer, redis_url: str
) -> None:
    fake = served_fake(50, LIMIT)
    async with fake.serve() as base_url, anyio.create_task_group() as group:

        async def stop_redis() -> None:
            with anyio.fail_after(30):  # a guard
                while fake.request_count < 20:  # noqa: ASYNC110 - the server's thread
                    await anyio.sleep(0.01)
            redis_server.stop()

        group.start_soon(stop_redis)
        async with AsyncCcmClient(
            api_key="k", api_token="t", account_sid="fake-account", base_url=base_url,
            rate_limit=shared(redis_url),
        ) as ccm:  # fmt: skip
            results = await ccm.get_calls(worker_sids(0, 50))
    assert all(result.ok for result in results)
    # Its own window began with the 20 Redis had just let through: no second over 20.
    assert [request.status for request in fake.requests] == [200] * 50
    assert most_in_any_window([request.time for request in fake.requests], per=1.0) <= 20
