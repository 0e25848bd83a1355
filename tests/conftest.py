from __future__ import annotations

import asyncio
import bisect
import json
import selectors
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpcore
import httpx
import pytest

from ccm_async import AsyncCcmClient
from ccm_async.testing import FakeCcm

from .redis_support import RedisServer, redis_server_fixture

SAMPLE_SID = "72827ead13a355d334338f53af71157s"


@asynccontextmanager
async def stand_in_client(
    app: Any, *, http_options: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[AsyncCcmClient]:
    """A client whose http_client talks to an ASGI ``app`` (or a transport) standing in
    for the API."""
    is_transport = isinstance(app, httpx.AsyncBaseTransport)
    transport = app if is_transport else httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, **(http_options or {})) as http_client:
        yield AsyncCcmClient(
            api_key="k",
            api_token="t",
            account_sid="a",
            base_url="http://127.0.0.1",
            http_client=http_client,
            **options,
        )


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let other tasks run until ``predicate()`` holds (bounded by a guard timeout)."""
    with anyio.fail_after(10):
        while not predicate():  # noqa: ASYNC110 - a condition owned by another thread
            await anyio.sleep(0.001)


class CountingBackend(httpcore.AsyncNetworkBackend):
    """Counts the client's open connections on the client's side."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.inner = inner or httpcore.AnyIOBackend()
        self.open = 0
        self.max_open = 0
        self.closed_mid_read = 0  # closed under a request waiting for its response
        self.streams: list[CountedStream] = []

    async def connect_tcp(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        stream = await self.inner.connect_tcp(*args, **kwargs)  # type: ignore[arg-type]
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self.streams.append(CountedStream(stream, self))
        return self.streams[-1]

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class CountedStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream, backend: CountingBackend) -> None:
        self.stream = stream
        self.backend = backend
        self.closed = False
        self.reading = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.reading = True
        try:
            return await self.stream.read(max_bytes, timeout)
        finally:
            self.reading = False

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.stream.write(buffer, timeout)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend.open -= 1
            self.backend.closed_mid_read += self.reading
        await self.stream.aclose()

    def get_extra_info(self, info: str) -> object:
        return self.stream.get_extra_info(info)


@pytest.fixture
def own_pool_connections(monkeypatch: pytest.MonkeyPatch) -> CountingBackend:
    """Counts the connections of the own pool of every client the test creates."""
    connections = CountingBackend()
    monkeypatch.setattr(httpcore, "AnyIOBackend", lambda: connections)
    return connections


class SlowConnectBackend(httpcore.AsyncNetworkBackend):
    """Opens each connection ``delay`` seconds late, as to a server far away."""

    def __init__(self, delay: float) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.delay = delay

    async def connect_tcp(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        await self.inner.sleep(self.delay)
        return await self.inner.connect_tcp(*args, **kwargs)  # type: ignore[arg-type]

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@pytest.fixture
def slow_connections(monkeypatch: pytest.MonkeyPatch) -> SlowConnectBackend:
    """Every connection of the own pool of every client the test creates takes 30 ms."""
    backend = SlowConnectBackend(0.03)
    monkeypatch.setattr(httpcore, "AnyIOBackend", lambda: backend)
    return backend


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    backend = str(request.param)
    if request.node.get_closest_marker("virtual_clock"):
        return backend, virtual_clock_options(backend)
    return backend


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the tests' own (each xdist worker has one)."""
    yield from redis_server_fixture(tmp_path_factory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The tests' Redis, empty, running (a test may stop it)."""
    redis_server.flush()
    yield redis_server.url
    redis_server.start_if_stopped()


@pytest.fixture
def sample_response() -> dict[str, Any]:
    """The seed document's sample response, verbatim."""
    path = Path(__file__).parent / "fixtures" / "sample_response.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def fake(sample_response: dict[str, Any]) -> FakeCcm:
    fake = FakeCcm()
    fake.add_call(sample_response["response"]["data"])
    return fake


@pytest.fixture
async def client(fake: FakeCcm) -> AsyncIterator[AsyncCcmClient]:
    """A single-attempt client: each error is seen as the API sent it."""
    async with fake.client(retry=None) as client:
        yield client


# -- a virtual clock ---------------------------------------------------------------
#
# A test marked ``virtual_clock`` runs on a clock that jumps ahead whenever every
# task waits on time alone: a minute of sleeps and timeouts takes no real time,
# and what the test measures with ``anyio.current_time()`` depends on no
# machine's speed. Trio has it (MockClock); for asyncio, a loop whose selector
# moves the loop's time on by the timeout instead of blocking for it. Neither
# waits for a thread or a socket's peer before jumping: such tests use FakeCcm
# in-process (fake.client()).


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "virtual_clock: run on a clock that jumps over idle waits (no wall time)"
    )


class _AutojumpSelector(selectors.DefaultSelector):
    """Polls without blocking; when nothing is ready, moves the time on by the timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(None if timeout is None else 0)
        if not ready and timeout:
            self.now += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a virtual clock: it never sleeps for a timer, it jumps to it."""

    def __init__(self) -> None:
        self._autojump = _AutojumpSelector()
        super().__init__(self._autojump)

    def time(self) -> float:
        return self._autojump.now


def virtual_clock_options(backend: str) -> dict[str, Any]:
    """anyio's backend options for a virtual clock, new for each test."""
    if backend == "trio":
        from trio.testing import MockClock

        return {"clock": MockClock(autojump_threshold=0)}
    return {"loop_factory": VirtualClockLoop}


def most_in_any_window(times: Iterable[float], *, per: float) -> int:
    """The most of ``times`` that fall in any window ``[t, t + per)``: what a server's
    sliding window of ``per`` seconds counted at its fullest."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + per) - i for i, t in enumerate(ordered)), default=0)


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeCcm, dict[str, str]]]:
    """A fake API on a socket (5% of SIDs missing), and the command's environment for it."""
    from tests.cli_support import TOKEN, environment_for

    fake = FakeCcm(generate=True, missing_rate=0.05, api_token=TOKEN)
    async with fake.serve() as base_url:
        yield fake, environment_for(fake, base_url)
