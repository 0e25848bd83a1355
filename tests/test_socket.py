"""Over a real socket: what ASGITransport cannot show (timeouts, drops, size, pooling)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpcore
import httpx
import pytest

from ccm_async import (
    AsyncCcmClient,
    RequestTimeoutError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from ccm_async._transport import Pool
from ccm_async.testing import FakeCcm, Fault

from .conftest import CountingBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeCcm, AsyncCcmClient]]:
    fake = FakeCcm(generate=True)
    async with fake.serve() as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        async with AsyncCcmClient(
            **fake.credentials,
            base_url=base_url,
            timeout=httpx.Timeout(2.0),
            max_concurrency=4,
            retry=None,
        ) as client:
            yield fake, client


async def test_lookup_over_a_socket(served: tuple[FakeCcm, AsyncCcmClient]) -> None:
    fake, client = served
    call = await client.get_call("sock-1")
    assert call.call_sid == "sock-1"
    assert fake.request_count == 1


async def test_connection_dropped_mid_body(served: tuple[FakeCcm, AsyncCcmClient]) -> None:
    fake, client = served
    fake.fail("drop-1", Fault.disconnect(), times=1)
    with pytest.raises(TransportError) as info:
        await client.get_call("drop-1")
    assert not isinstance(info.value, RequestTimeoutError)
    assert isinstance(
        info.value.__cause__, httpx.RemoteProtocolError | httpcore.RemoteProtocolError
    )
    assert info.value.call_sid == "drop-1"
    assert (await client.get_call("drop-1")).call_sid == "drop-1"


async def test_server_that_never_answers_times_out() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("hang-1", Fault.hang())
    async with (
        fake.serve() as base_url,
        AsyncCcmClient(
            **fake.credentials, base_url=base_url, timeout=httpx.Timeout(0.3), retry=None
        ) as client,
    ):
        with pytest.raises(RequestTimeoutError) as info:
            await client.get_call("hang-1")
        assert isinstance(info.value.__cause__, httpx.ReadTimeout | httpcore.ReadTimeout)
        assert isinstance(info.value, TimeoutError)
        assert (await client.get_call("ok-1")).call_sid == "ok-1"


@pytest.mark.parametrize("declare_length", [True, False])
async def test_oversized_body_refused(
    served: tuple[FakeCcm, AsyncCcmClient], declare_length: bool
) -> None:
    fake, client = served
    fake.fail("big-1", Fault.oversized(64 * 1024 * 1024, declare_length=declare_length), times=1)
    with pytest.raises(ResponseFormatError, match="exceeds"):
        await client.get_call("big-1")
    assert (await client.get_call("big-1")).call_sid == "big-1"


async def test_html_502_over_a_socket(served: tuple[FakeCcm, AsyncCcmClient]) -> None:
    fake, client = served
    fake.fail("gw-1", Fault.html(502), times=1)
    with pytest.raises(ServerError):
        await client.get_call("gw-1")
    assert (await client.get_call("gw-1")).call_sid == "gw-1"


async def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with AsyncCcmClient(
        api_key="k", api_token="t", account_sid="a", base_url=f"http://127.0.0.1:{port}"
    ) as client:
        with pytest.raises(TransportError) as info:
            await client.get_call("abc")
    assert isinstance(info.value.__cause__, httpx.ConnectError | httpcore.ConnectError)


async def test_the_pool_places_each_request_in_one_pass(
    monkeypatch: pytest.MonkeyPatch, own_pool_connections: CountingBackend
) -> None:
    # httpcore's own pool made 7.8 passes per request here (it hands one idle
    # connection to every queued request, and the losers try again), each pass
    # quadratic in the connections.
    passes = 0
    assign = Pool._assign_requests_to_connections

    def counted(pool: Pool) -> list[httpcore.AsyncConnectionInterface]:
        nonlocal passes
        passes += 1
        return assign(pool)

    monkeypatch.setattr(Pool, "_assign_requests_to_connections", counted)
    connections = own_pool_connections
    fake = FakeCcm(generate=True, latency=(0.0, 0.01))
    async with (
        fake.serve() as base_url,
        AsyncCcmClient(**fake.credentials, base_url=base_url, max_concurrency=64) as client,
    ):
        results = await client.get_calls([f"s{i}" for i in range(1000)])
    assert all(result.ok for result in results)
    requests = client.stats.requests
    # One pass when a request is placed, one when its response is closed.
    assert 2 * requests <= passes <= 2.1 * requests
    assert 1 < connections.max_open <= 64
    assert connections.open == 0
