"""The client in-process: lifecycle, validation before sending, redirects, body cap."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from ccm_async import (
    ApiError,
    AsyncCcmClient,
    CallDetails,
    ClientClosedError,
    ConfigurationError,
    InvalidCallSidError,
    ResponseFormatError,
    TransportError,
)
from ccm_async._config import MAX_BODY_BYTES
from ccm_async._http import read_httpx_response
from ccm_async.testing import FakeCcm

from .conftest import SAMPLE_SID, CountingBackend, stand_in_client

pytestmark = pytest.mark.anyio


async def test_get_call_returns_the_call(fake: FakeCcm, client: AsyncCcmClient) -> None:
    call = await client.get_call(SAMPLE_SID)
    assert isinstance(call, CallDetails)
    assert call.call_sid == SAMPLE_SID
    [request] = fake.requests
    assert request.method == "GET"
    assert request.path == f"/v2/accounts/{fake.account_sid}/calls/{SAMPLE_SID}"
    assert request.query == ""
    assert request.status == 200


@pytest.mark.parametrize("sid", ["", "a/b", "../x", "a%20b", "a b", "\u00e9", "x" * 65, "a?b"])
async def test_invalid_sid_sends_nothing(fake: FakeCcm, client: AsyncCcmClient, sid: str) -> None:
    with pytest.raises(InvalidCallSidError):
        await client.get_call(sid)
    assert fake.request_count == 0


async def test_generated_calls_are_deterministic() -> None:
    fake = FakeCcm(generate=True)
    async with fake.client() as client:
        first = await client.get_call("sid-1")
        again = await client.get_call("sid-1")
        other = await client.get_call("sid-2")
    assert first == again
    assert first != other
    assert first.call_sid == "sid-1"


async def test_missing_rate_makes_a_share_not_found() -> None:
    fake = FakeCcm(generate=True, missing_rate=0.1)
    found = sum(fake.has_call(f"s{i}") for i in range(2000))
    assert 1700 < found < 1900
    assert not FakeCcm().has_call("s1")


async def test_user_http_client_is_left_open(fake: FakeCcm) -> None:
    http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake))
    async with AsyncCcmClient(
        **fake.credentials, base_url="http://127.0.0.1", http_client=http_client
    ) as client:
        await client.get_call(SAMPLE_SID)
    assert not http_client.is_closed
    await http_client.aclose()


async def test_own_pool_is_closed(own_pool_connections: CountingBackend) -> None:
    fake = FakeCcm(generate=True)
    async with fake.serve() as base_url:
        client = AsyncCcmClient(**fake.credentials, base_url=base_url)
        await client.get_calls(["a", "b", "c"])
        assert own_pool_connections.open > 0
        await client.aclose()
        assert own_pool_connections.open == 0
    with pytest.raises(ClientClosedError, match="closed") as info:
        await client.get_call("abc")
    assert info.value.call_sid == "abc"


async def test_user_event_hooks_still_run(fake: FakeCcm) -> None:
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.url.path)

    http_client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), event_hooks={"request": [hook]}
    )
    async with (
        http_client,
        AsyncCcmClient(
            **fake.credentials, base_url="http://127.0.0.1", http_client=http_client
        ) as client,
    ):
        await client.get_call(SAMPLE_SID)
    assert seen == [f"/v2/accounts/{fake.account_sid}/calls/{SAMPLE_SID}"]


async def test_a_body_an_event_hook_read_first(sample_response: dict[str, Any]) -> None:
    # A logging hook that reads the body, and httpx.MockTransport, both hand over a
    # response already read (and decoded): it is used as it is.
    async def read_it(response: httpx.Response) -> None:
        await response.aread()

    body = gzip.compress(json.dumps(sample_response).encode())

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-encoding": "gzip"})

    for options in ({"event_hooks": {"response": [read_it]}}, {}):
        async with stand_in_client(httpx.MockTransport(answer), http_options=options) as client:
            call = await client.get_call(SAMPLE_SID)
        assert call.call_sid == SAMPLE_SID


async def test_a_body_an_event_hook_streamed_away_is_a_format_error() -> None:
    async def drain(response: httpx.Response) -> None:
        async for _ in response.aiter_raw():
            pass

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(b"{}"))

    hooks = {"event_hooks": {"response": [drain]}}
    async with stand_in_client(httpx.MockTransport(answer), http_options=hooks) as client:
        with pytest.raises(ResponseFormatError, match="event hook"):
            await client.get_call(SAMPLE_SID)


async def test_a_body_read_first_is_still_capped() -> None:
    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * (MAX_BODY_BYTES + 1))

    async with stand_in_client(httpx.MockTransport(answer)) as client:
        with pytest.raises(ResponseFormatError, match="exceeds"):
            await client.get_call(SAMPLE_SID)


async def test_any_failure_of_a_third_party_transport_is_a_transport_error() -> None:
    # httpx's transports raise httpx.RequestError; others may raise anything.
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/broken"):
            raise RuntimeError("the transport broke")
        return httpx.Response(404)

    async with stand_in_client(httpx.MockTransport(answer), retry=None) as client:
        broken, missing = await client.get_calls(["broken", "missing"])
    assert isinstance(broken.error, TransportError)
    assert "RuntimeError: the transport broke" in str(broken.error)
    assert isinstance(broken.error.__cause__, RuntimeError)
    assert isinstance(missing.error, ApiError)


async def redirecting_app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    assert scope["type"] == "http"
    headers = [(b"location", b"https://elsewhere.example/steal"), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 302, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def test_redirects_are_not_followed() -> None:
    # Not even when the user's own http_client would follow them.
    with pytest.raises(ApiError) as info:
        await get_from(redirecting_app, follow_redirects=True)
    assert info.value.http_status == 302


class CountingStream(httpx.AsyncByteStream):
    def __init__(self, chunks: int, size: int) -> None:
        self.chunks = chunks
        self.size = size
        self.pulled = 0

        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            if self.closed:
                return
            self.pulled += 1
            yield b" " * self.size

    async def aclose(self) -> None:
        self.closed = True


async def test_body_over_the_cap_is_refused_before_it_is_read_whole() -> None:
    stream = CountingStream(chunks=1000, size=64 * 1024)
    response = httpx.Response(200, stream=stream)
    with pytest.raises(ResponseFormatError, match="exceeds"):
        await read_httpx_response(response, "abc")
    assert stream.pulled == MAX_BODY_BYTES // (64 * 1024) + 1


async def test_declared_length_over_the_cap_is_refused_unread() -> None:
    stream = CountingStream(chunks=1, size=10)
    response = httpx.Response(
        200, stream=stream, headers={"content-length": str(MAX_BODY_BYTES + 1)}
    )
    with pytest.raises(ResponseFormatError):
        await read_httpx_response(response, "abc")
    assert stream.pulled == 0


async def test_body_at_the_cap_is_read() -> None:
    stream = CountingStream(chunks=16, size=64 * 1024)
    response = httpx.Response(200, stream=stream)
    assert len((await read_httpx_response(response, "abc")).body) == MAX_BODY_BYTES


def encoded_app(encoding: bytes, body: bytes) -> Any:
    async def app(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        headers = [(b"content-encoding", encoding), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def get_from(app: Any, **http_options: Any) -> CallDetails:
    """Look up one call from an ASGI ``app`` standing in for the API (single attempt)."""
    async with stand_in_client(app, http_options=http_options, retry=None) as client:
        return await client.get_call(SAMPLE_SID)


async def test_gzip_body_is_decoded(sample_response: dict[str, Any]) -> None:
    body = gzip.compress(json.dumps(sample_response).encode())
    call = await get_from(encoded_app(b"gzip", body))
    assert call.call_sid == SAMPLE_SID


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        (b"gzip", b"this is not gzip", "undecodable gzip"),
        (b"br", b"whatever", "unexpected content-encoding"),
        (b"gzip", gzip.compress(b" " * (MAX_BODY_BYTES + 10), mtime=0), "exceeds"),
    ],
)
async def test_bad_content_encoding_is_a_format_error(
    encoding: bytes, body: bytes, message: str
) -> None:
    with pytest.raises(ResponseFormatError, match=message):
        await get_from(encoded_app(encoding, body))


async def test_proxies_from_the_environment_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def proxy(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            seen.append((await stream.receive()).split(b"\r\n")[0])
            await stream.send(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")

    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio's
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, proxy)
        async with AsyncCcmClient(api_key="k", api_token="t", account_sid="a", retry=None) as ccm:
            with pytest.raises(TransportError):
                await ccm.get_call("abc")
        group.cancel_scope.cancel()
    assert seen == [b"CONNECT ccm-api.exotel.com:443 HTTP/1.1"]


def test_transport_choices() -> None:
    with pytest.raises(ConfigurationError, match="transport"):
        AsyncCcmClient(api_key="k", api_token="t", account_sid="a", transport="curl")  # type: ignore[arg-type]
