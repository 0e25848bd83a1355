from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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
    if not isinstance(app, httpx.AsyncBaseTransport):
        app = httpx.ASGITransport(app=app)
    transport = app
    async with httpx.AsyncClient(transport=transport, **(http_options or {})) as http_client:
        yield AsyncCcmClient(
            api_key="k",
            api_token="t",
            account_sid="a",
            base_url="http://127.0.0.1",
            http_client=http_client,
            **options,
        )


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
