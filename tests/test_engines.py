"""The same behaviour from every engine, over real sockets on 127.0.0.1.

Each test runs against the default engine (our own pool), a user's
``http_client``, and ``transport="aiohttp"`` (asyncio only), on asyncio and trio.
"""

from __future__ import annotations

import gzip
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pytest
import trio
import trustme

from ccm_async import (
    ApiError,
    AsyncCcmClient,
    CallNotFoundError,
    ConfigurationError,
    RateLimit,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    RetryPolicy,
    TransportError,
)
from ccm_async._config import MAX_BODY_BYTES
from ccm_async.testing import FakeCcm, Fault, instant_backoff

from .conftest import SAMPLE_SID
from .test_security import http_response, http_server

pytestmark = pytest.mark.anyio

Engine = Literal["httpx", "http_client", "aiohttp"]
SAMPLE = (Path(__file__).parent / "fixtures" / "sample_response.json").read_bytes()
CREDENTIALS: dict[str, Any] = {"api_key": "k", "api_token": "t", "account_sid": "a"}


@pytest.fixture(params=["httpx", "http_client", "aiohttp"])
def engine(request: pytest.FixtureRequest, anyio_backend: str) -> Engine:
    """The engine under test: our own pool, a user's http_client, or aiohttp's session."""
    name: Engine = request.param
    if name == "aiohttp":
        pytest.importorskip("aiohttp")
        if anyio_backend != "asyncio":
            pytest.skip("aiohttp runs on asyncio only")
    return name


@asynccontextmanager
async def client_on(
    engine: Engine,
    base_url: str,
    *,
    timeout: float = 5.0,
    verify: ssl.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[AsyncCcmClient]:
    """A client of ``engine`` for ``base_url`` (a user's http_client gets the timeout)."""
    options.setdefault("retry", None)
    if engine == "http_client":
        http_options: dict[str, Any] = {"timeout": timeout}
        if verify is not None:
            http_options["verify"] = verify
        async with httpx.AsyncClient(**http_options) as http_client:
            yield AsyncCcmClient(**options, base_url=base_url, http_client=http_client)
        return
    async with AsyncCcmClient(
        **options, base_url=base_url, transport=engine, timeout=timeout
    ) as client:
        yield client


@asynccontextmanager
async def fake_client(
    engine: Engine, fake: FakeCcm, **options: Any
) -> AsyncIterator[AsyncCcmClient]:
    async with (
        fake.serve() as base_url,
        client_on(engine, base_url, **fake.credentials, **options) as client,
    ):
        yield client


async def test_a_lookup(engine: Engine) -> None:
    fake = FakeCcm(generate=True)
    async with fake_client(engine, fake) as client:
        call = await client.get_call("a1")
        results = await client.get_calls([f"s{i}" for i in range(50)])
    assert call.call_sid == "a1"
    assert [result.call_sid for result in results if result.ok] == [f"s{i}" for i in range(50)]
    assert fake.request_count == 51
    assert fake.requests[0].path == "/v2/accounts/fake-account/calls/a1"


async def test_not_found(engine: Engine) -> None:
    async with fake_client(engine, FakeCcm()) as client:
        with pytest.raises(CallNotFoundError) as info:
            await client.get_call("nope")
    assert info.value.http_status == 404
    assert info.value.code == 3043


async def test_a_500_is_retried(engine: Engine) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("flaky", Fault.server_error(), times=2)
    with instant_backoff():
        async with fake_client(engine, fake, retry=RetryPolicy(attempts=3)) as client:
            call = await client.get_call("flaky")
    assert call.call_sid == "flaky"
    assert fake.requests_for("flaky") == 3


async def test_a_dropped_connection_is_a_transport_error_then_success(engine: Engine) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("gone", Fault.disconnect(), times=1)
    async with fake_client(engine, fake) as client:
        with pytest.raises(TransportError) as info:
            await client.get_call("gone")
        assert info.value.__cause__ is not None
        assert (await client.get_call("gone")).call_sid == "gone"
    assert not isinstance(info.value, RequestTimeoutError)
    assert info.value.call_sid == "gone"
    assert fake.requests_for("gone") == 2


async def test_a_hang_is_a_timeout_within_the_timeout(engine: Engine) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("stuck", Fault.hang())
    fake.fail("slow-body", Fault.stall())
    async with fake_client(engine, fake, timeout=0.3) as client:
        for sid in ("stuck", "slow-body"):
            started = anyio.current_time()
            with pytest.raises(RequestTimeoutError) as info:
                await client.get_call(sid)
            assert 0.25 < anyio.current_time() - started < 3, sid
            assert info.value.call_sid == sid
            assert info.value.__cause__ is not None
        assert (await client.get_call("fine")).call_sid == "fine"


@pytest.mark.parametrize(
    "answer",
    [
        b"\x00\xff\x13garbage\xfe" * 50,  # not HTTP at all
        SAMPLE,  # a body with no status line or headers (HTTP/0.9)
        b"HTTP/1.1 200 OK\r\nX-Junk: " + b"\x1b[2J<html>" * 400 + b"\r\n\r\n",  # a bad header
    ],
    ids=["garbage", "bare-body", "bad-header"],
)
async def test_a_stack_failure_is_one_short_printable_line(engine: Engine, answer: bytes) -> None:
    # A stack's message may quote what the server sent (aiohttp's does): it goes
    # into logs, so it is bounded and made printable like any server text.
    async with (
        http_server(answer) as (base_url, _),
        client_on(engine, base_url, **CREDENTIALS) as client,
    ):
        with pytest.raises((TransportError, ResponseFormatError)) as info:
            await client.get_call(SAMPLE_SID)
    message = str(info.value)
    assert len(message) <= 400, message
    assert message.isprintable(), message
    assert info.value.call_sid == SAMPLE_SID


@pytest.mark.parametrize("declare_length", [True, False])
async def test_an_oversized_body_is_refused(engine: Engine, declare_length: bool) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("huge", Fault.oversized(8 * 1024 * 1024, declare_length=declare_length))
    async with fake_client(engine, fake) as client:
        started = anyio.current_time()
        with pytest.raises(ResponseFormatError, match="exceeds"):
            await client.get_call("huge")
        assert anyio.current_time() - started < 5
        # The connection given up on is not reused; the next lookup gets a fresh one.
        assert (await client.get_call("after")).call_sid == "after"


async def test_a_gzip_body_is_decoded(engine: Engine) -> None:
    body = gzip.compress(SAMPLE)
    answer = http_response(
        "200 OK", body, "content-type: application/json", "content-encoding: gzip"
    )
    async with (
        http_server(answer) as (base_url, heads),
        client_on(engine, base_url, **CREDENTIALS) as client,
    ):
        call = await client.get_call(SAMPLE_SID)
    assert call.call_sid == SAMPLE_SID
    assert b"accept-encoding: gzip" in heads[0].lower()


async def test_a_redirect_is_not_followed(engine: Engine) -> None:
    async with http_server(http_response("200 OK", SAMPLE)) as (elsewhere, stolen):
        redirect = http_response("302 Found", b"", f"location: {elsewhere}/steal")
        async with (
            http_server(redirect) as (base_url, heads),
            client_on(engine, base_url, **CREDENTIALS) as client,
        ):
            with pytest.raises(ApiError) as info:
                await client.get_call(SAMPLE_SID)
    assert info.value.http_status == 302
    assert len(heads) == 1
    assert stolen == []


async def test_retry_after_is_read(engine: Engine) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("busy", Fault.rate_limited(retry_after=7))
    fake.fail("busy-date", Fault.rate_limited(retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    # instant_backoff: the client's pause after a 429 is not waited here.
    with instant_backoff():
        async with fake_client(engine, fake) as client:
            with pytest.raises(RateLimitError) as info:
                await client.get_call("busy")
            with pytest.raises(RateLimitError) as dated:
                await client.get_call("busy-date")
    assert info.value.retry_after == 7.0
    assert dated.value.retry_after == 0.0  # a date in the past: no wait


async def test_rate_limit_headers_are_read(engine: Engine) -> None:
    fake = FakeCcm(
        generate=True, rate_limit=RateLimit(requests=4, per=0.4), rate_limit_headers=True
    )
    async with fake_client(engine, fake, max_concurrency=1) as client:
        results = await client.get_calls([f"s{i}" for i in range(10)])
        waits = client.stats.rate_limit_waits
    assert all(result.ok for result in results)
    assert {request.status for request in fake.requests} == {200}  # paced: no 429
    assert waits > 0


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


async def test_an_untrusted_certificate_is_refused(
    engine: Engine, anyio_backend: str, certificate_authority: trustme.CA
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_context)
    answer = http_response("200 OK", SAMPLE, "content-type: application/json")
    # The certificate is for this host, but from a CA nobody trusts.
    async with (
        http_server(answer, tls=server_context) as (base_url, heads),
        client_on(engine, base_url, **CREDENTIALS) as client,
    ):
        with pytest.raises(TransportError) as info:
            await client.get_call(SAMPLE_SID)
    assert heads == []
    if engine == "http_client" and anyio_backend == "trio":
        return  # httpx's ConnectError under trio says nothing, and chains no SSL error
    assert "certificate" in str(info.value).lower()


# -- aiohttp only ---------------------------------------------------------------------


def test_aiohttp_needs_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    with pytest.raises(ConfigurationError, match=r"ccm-async\[aiohttp\]"):
        AsyncCcmClient(**CREDENTIALS, transport="aiohttp")


def test_aiohttp_refused_when_built_under_trio() -> None:
    pytest.importorskip("aiohttp")

    async def construct() -> None:
        AsyncCcmClient(**CREDENTIALS, transport="aiohttp")

    with pytest.raises(ConfigurationError, match="asyncio"):
        trio.run(construct)


def test_aiohttp_timeouts_map_from_httpx() -> None:
    pytest.importorskip("aiohttp")
    from ccm_async._aiohttp import client_timeout

    mapped = client_timeout(httpx.Timeout(10.0, connect=2.0, pool=3.0))
    assert (mapped.total, mapped.connect, mapped.sock_connect, mapped.sock_read) == (
        None,
        5.0,
        2.0,
        10.0,
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aiohttp_session_is_ours_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("aiohttp")
    # No proxy from the environment, no cookies kept, no decoding but ours.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    answer = http_response(
        "200 OK", SAMPLE, "content-type: application/json", "set-cookie: session=abc; Path=/"
    )
    async with (
        http_server(answer) as (base_url, heads),
        client_on("aiohttp", base_url, **CREDENTIALS, max_concurrency=7) as client,
    ):
        await client.get_call(SAMPLE_SID)
        await client.get_call(SAMPLE_SID)
        from ccm_async._aiohttp import AiohttpEngine

        engine = client._setup.engine
        assert isinstance(engine, AiohttpEngine)
        session = (await engine._sessions.get()).session
        assert session.connector is not None
        assert session.connector.limit == 7
        assert session.auto_decompress is False
        assert session.trust_env is False
    assert len(heads) == 2
    assert all(b"cookie" not in head.lower() for head in heads)
    assert heads[0].startswith(f"GET /v2/accounts/a/calls/{SAMPLE_SID} HTTP/1.1".encode())


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aiohttp_many_lookups_within_the_bound() -> None:
    pytest.importorskip("aiohttp")
    fake = FakeCcm(generate=True)
    async with fake_client("aiohttp", fake, max_concurrency=4) as client:
        results = await client.get_calls([f"s{i}" for i in range(200)])
    assert all(result.ok for result in results)
    # One request per lookup: aiohttp retries nothing behind our back.
    assert fake.request_count == 200
    assert {request.status for request in fake.requests} == {200}
    assert fake.max_in_flight <= 4


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("size", [MAX_BODY_BYTES, MAX_BODY_BYTES + 1])
async def test_aiohttp_a_body_already_in_is_capped_too(size: int) -> None:
    pytest.importorskip("aiohttp")
    import asyncio
    from types import SimpleNamespace
    from unittest import mock

    import aiohttp

    from ccm_async._aiohttp import _read_body

    # No Content-Length, and all of the body arrived before it was read.
    content = aiohttp.StreamReader(mock.Mock(), 2**16, loop=asyncio.get_running_loop())
    content.feed_data(b" " * size)
    content.feed_eof()
    response: Any = SimpleNamespace(headers={}, content=content)
    if size > MAX_BODY_BYTES:
        with pytest.raises(ResponseFormatError, match="exceeds"):
            await _read_body(response, "abc")
    else:
        assert len(await _read_body(response, "abc")) == size
