"""The own pool against httpcore's stock pool: same semantics under churn, and the guard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import select
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib.metadata import version
from typing import cast

import anyio
import anyio.abc
import anyio.lowlevel
import httpcore
import httpx
import pytest

from ccm_async import AsyncCcmClient, CcmError, TransportError
from ccm_async._transport import Backend, Pool, fits, pool_class
from ccm_async.testing import FakeCcm
from tests.conftest import CountingBackend

pytestmark = pytest.mark.anyio

_ANYIO = tuple(int(part) for part in version("anyio").split(".")[:2])


def _tolerating_anyio_socket_leak(test: Callable[[], None]) -> Callable[[], None]:
    """anyio before 4.16 leaves a socket to the garbage collector (a ResourceWarning)
    when asyncio cancels its ``connect_tcp`` just as it connects: not ours to close."""
    if _ANYIO >= (4, 16):
        return test
    ignored = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    return ignored(test)


_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


async def _close_when_idle(stream: anyio.abc.SocketStream, rng: random.Random) -> None:
    """Answer each request; close, without a word, a connection idle for 20-80 ms."""
    buffer = b""
    async with stream:
        while True:
            with anyio.move_on_after(rng.uniform(0.02, 0.08)) as idle:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
            if idle.cancelled_caught:
                return
            _, _, buffer = buffer.partition(b"\r\n\r\n")
            try:
                await stream.send(_RESPONSE)
            except anyio.BrokenResourceError:
                return


@asynccontextmanager
async def _churning_server() -> AsyncIterator[str]:
    rng = random.Random(1035)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - not Django
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, lambda stream: _close_when_idle(stream, rng))
        yield f"http://127.0.0.1:{port}/"
        tasks.cancel_scope.cancel()


async def _failures_under_churn(
    pool_type: type[httpcore.AsyncConnectionPool],
    url: str,
    backend: CountingBackend,
    failures: dict[str, int],
    *,
    seed: int,
) -> None:
    """Count into ``failures`` the failed requests by type, of 250 from 16 tasks through 4
    connections that expire 0.05 s after their last response, to a server that closes
    idle ones at random."""
    rng = random.Random(seed)
    left = 250
    extensions = {"timeout": {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 30.0}}

    async def send(pool: httpcore.AsyncConnectionPool) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                response = await pool.request("GET", url, extensions=extensions)
                assert response.content == b"ok"
            except httpcore.NetworkError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            except httpcore.RemoteProtocolError:
                failures["RemoteProtocolError"] = failures.get("RemoteProtocolError", 0) + 1
            await anyio.sleep(rng.uniform(0.0, 0.03))

    async with pool_type(
        max_connections=4,
        max_keepalive_connections=4,
        keepalive_expiry=0.05,
        network_backend=backend,
    ) as pool:
        with anyio.fail_after(120):  # a request hung on a closed socket would stop here
            async with anyio.create_task_group() as tasks:
                for _ in range(16):
                    tasks.start_soon(send, pool)


async def test_churn_fails_no_more_requests_than_the_stock_pool_and_closes_no_active_one() -> None:
    # A connection handed to a queued request that expired or was closed by the
    # server before the request started used to be sent on anyway: 76-80
    # failures in 8,000 requests where the stock pool had 10-14. Both pools lose
    # a few to the server closing a connection as a request goes out on it: that
    # race is the network's, hence the margin. The two pools take turns, so that
    # the machine's load, which makes that race likelier, weighs on both alike.
    ours: dict[str, int] = {}
    stock: dict[str, int] = {}
    ours_backend = CountingBackend(Backend())
    async with _churning_server() as url:
        for seed in range(1110, 1114):
            await _failures_under_churn(Pool, url, ours_backend, ours, seed=seed)
            stock_backend = CountingBackend(Backend())
            await _failures_under_churn(
                httpcore.AsyncConnectionPool, url, stock_backend, stock, seed=seed
            )
    assert "ReadTimeout" not in ours
    assert sum(ours.values()) <= 2 * sum(stock.values()) + 5, (ours, stock)
    # encode/httpcore#1110: the pool never closes a connection under a request.
    assert ours_backend.closed_mid_read == 0
    assert ours_backend.open == 0


@contextmanager
def _closing_on_cue(cue: threading.Event) -> Iterator[str]:
    """A server in a thread that answers each connection's first request, then closes
    that connection, without a word, once ``cue`` is set."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer(conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            conn.sendall(_RESPONSE)
            cue.wait(10)

    def accept() -> None:
        with listener:
            for _ in range(2):
                conn, _ = listener.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    cue.set()
    acceptor.join(10)


async def test_a_connection_closed_before_its_queued_request_starts_is_replaced() -> None:
    cue = threading.Event()
    backend = CountingBackend(Backend())
    with _closing_on_cue(cue) as url:
        async with (
            Pool(max_connections=1, network_backend=backend) as pool,
            anyio.create_task_group() as tasks,
        ):
            first = await pool.handle_async_request(
                httpcore.Request(b"GET", url, headers=[(b"host", b"127.0.0.1")])
            )
            [stream] = backend.streams
            queued: list[httpcore.Response] = []

            async def second() -> None:
                queued.append(await pool.request("GET", url))

            tasks.start_soon(second)
            await anyio.wait_all_tasks_blocked()  # the second request waits for the connection
            await first.aread()
            await first.aclose()  # hands the connection to the queued request, not yet started
            cue.set()
            # Hold the loop until the server's close has arrived, so that the
            # queued request starts on a connection the server has closed.
            # (asyncio's is a TransportSocket: a socket's face, not its class)
            sock = cast("socket.socket", stream.get_extra_info("socket"))
            assert select.select([sock.fileno()], [], [], 10)[0]
    [response] = queued
    assert response.status == 200
    assert response.content == b"ok"
    assert len(backend.streams) == 2  # placed again, on a new connection
    assert backend.closed_mid_read == 0


@_tolerating_anyio_socket_leak
def test_lookups_cancelled_at_any_point_leave_the_pool_usable() -> None:
    # asyncio's own cancellation (asyncio.wait_for, task.cancel) lands even in
    # httpcore's shielded checkpoints: a request cancelled while it was taking a
    # lock on its new connection left that connection connecting, or connected
    # with nothing sent, and no pass handed it out again. At the limit (one
    # connection here) every later lookup timed out waiting for the pool.
    async def cancel_after(steps: int, fake: FakeCcm, base_url: str) -> list[str]:
        # Without `async with`, a lookup runs in its caller's task, and is cancelled with it.
        client = AsyncCcmClient(
            **fake.credentials,
            base_url=base_url,
            max_concurrency=1,
            timeout=httpx.Timeout(5.0, pool=1.0),
            retry=None,
        )
        try:
            task = asyncio.ensure_future(client.get_call(f"first{steps}"))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, CcmError):
                await task
            results = await client.get_calls([f"then{steps}x{i}" for i in range(3)])
        finally:
            await client.aclose()
        return [type(result.error).__name__ for result in results if result.error]

    async def main() -> dict[int, list[str]]:
        fake = FakeCcm(generate=True)
        async with fake.serve() as base_url:
            failures = {steps: await cancel_after(steps, fake, base_url) for steps in range(60)}
        return {steps: errors for steps, errors in failures.items() if errors}

    assert asyncio.run(main()) == {}


def test_a_cancelled_close_still_closes_every_connection() -> None:
    # Cancelled by asyncio once the close has begun (after one loop step or more).
    async def close_cancelled_after(steps: int, fake: FakeCcm, base_url: str) -> int:
        backend = CountingBackend(Backend())
        pool = Pool(max_connections=8, network_backend=backend)
        url = f"{base_url}/health"
        await asyncio.gather(*(pool.request("GET", url) for _ in range(8)))
        closing = asyncio.ensure_future(pool.aclose())
        for _ in range(steps):
            await asyncio.sleep(0)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        return backend.open

    async def main() -> dict[int, int]:
        fake = FakeCcm(generate=True)
        async with fake.serve() as base_url:
            left = {
                steps: await close_cancelled_after(steps, fake, base_url) for steps in range(1, 8)
            }
        return {steps: count for steps, count in left.items() if count}

    assert asyncio.run(main()) == {}


def test_the_own_pool_fits_the_installed_httpcore() -> None:
    assert fits(httpcore.AsyncConnectionPool)
    assert pool_class() is Pool


def test_a_pool_without_the_replaced_pass_does_not_fit() -> None:
    class Other(httpcore.AsyncConnectionPool):
        _assign_requests_to_connections = None  # type: ignore[assignment]

    class Bare(httpcore.AsyncConnectionPool):
        def __init__(self, **_: object) -> None:
            pass  # none of the attributes the pass reads

    class Raising(httpcore.AsyncConnectionPool):
        def __init__(self, **_: object) -> None:
            raise RuntimeError("a changed constructor")

    class Refusing(httpcore.AsyncConnectionPool):
        def __init__(self) -> None:  # takes none of the arguments we build it with
            super().__init__()

    assert not fits(Other)
    assert not fits(Bare)
    assert not fits(Raising)
    assert not fits(Refusing)


async def test_without_a_fit_the_stock_pool_serves_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("ccm_async._transport.fits", lambda _: False)
    pool_class.cache_clear()
    caplog.set_level(logging.WARNING, logger="ccm_async")
    fake = FakeCcm(generate=True)
    try:
        async with fake.serve() as base_url:
            for _ in range(2):
                async with AsyncCcmClient(**fake.credentials, base_url=base_url) as client:
                    results = await client.get_calls([f"s{i}" for i in range(20)])
                assert all(result.ok for result in results)
        warnings = [r for r in caplog.records if "stock pool" in r.getMessage()]
        assert len(warnings) == 1
        assert pool_class() is httpcore.AsyncConnectionPool
    finally:
        pool_class.cache_clear()


async def test_a_pool_that_cannot_be_built_is_each_lookup_s_transport_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Unbuildable(httpcore.AsyncConnectionPool):
        def __init__(self, **_: object) -> None:
            raise TypeError("unexpected keyword argument 'network_backend'")

    monkeypatch.setattr("ccm_async._transport.pool_class", lambda: Unbuildable)
    fake = FakeCcm(generate=True)
    async with (
        fake.serve() as base_url,
        AsyncCcmClient(**fake.credentials, base_url=base_url, retry=None) as client,
    ):
        with pytest.raises(TransportError) as info:
            await client.get_call("one")
        results = await client.get_calls(["a", "b"])
    assert info.value.call_sid == "one"
    assert isinstance(info.value.__cause__, TypeError)
    assert [type(result.error) for result in results] == [TransportError, TransportError]
