from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from ccm_async import AsyncCcmClient
from ccm_async.testing import FakeCcm

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


class CountingBackend(httpcore.AsyncNetworkBackend):
    """Counts the client's open connections on the client's side."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.open = 0
        self.max_open = 0

    async def connect_tcp(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        stream = await self.inner.connect_tcp(*args, **kwargs)  # type: ignore[arg-type]
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        return CountedStream(stream, self)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class CountedStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream, backend: CountingBackend) -> None:
        self.stream = stream
        self.backend = backend
        self.closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.stream.write(buffer, timeout)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend.open -= 1
        await self.stream.aclose()

    def get_extra_info(self, info: str) -> object:
        return self.stream.get_extra_info(info)


@pytest.fixture
def own_pool_connections(monkeypatch: pytest.MonkeyPatch) -> CountingBackend:
    """Counts the connections of the own pool of every client the test creates."""
    connections = CountingBackend()
    monkeypatch.setattr(httpcore, "AnyIOBackend", lambda: connections)
    return connections


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
