"""The audit: secrets stay in the Authorization header, identifiers cannot steer the
request, redirects are not followed, TLS is verified, http is loopback-only."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import ssl
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import httpx
import pytest
import sniffio
import trustme
from anyio.streams.tls import TLSListener
from hypothesis import given, settings
from hypothesis import strategies as st

from ccm_async import (
    ApiError,
    AsyncCcmClient,
    AuthenticationError,
    CallDetails,
    CallState,
    ConfigurationError,
    InvalidCallSidError,
    RateLimit,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    TransportError,
    WaitTimeoutError,
)
from ccm_async.testing import FakeCcm, Fault

from .conftest import SAMPLE_SID

pytestmark = pytest.mark.anyio

KEY = "audit-key"
TOKEN = "audit-token-0f9e8d7c"
SECRETS = (TOKEN, base64.b64encode(f"{KEY}:{TOKEN}".encode()).decode())
SAMPLE = (Path(__file__).parent / "fixtures" / "sample_response.json").read_bytes()
SID_TEXT = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True) | st.text(max_size=70)


def assert_no_secret(texts: list[str]) -> None:
    assert texts
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def all_about(exc: BaseException) -> Iterator[str]:
    """An exception as a traceback prints it, and every part of its chain."""
    yield "".join(traceback.format_exception(exc))
    link: BaseException | None = exc
    while link is not None:
        yield from (repr(link), str(link), repr(getattr(link, "__dict__", None)))
        link = link.__cause__ or link.__context__


def all_logged(records: list[logging.LogRecord]) -> Iterator[str]:
    formatter = logging.Formatter()
    for record in records:
        yield formatter.format(record)
        yield repr(record.__dict__)


FAULTS = {
    "missing": Fault.not_found(),
    "limited": Fault.rate_limited(0.01),
    "failing": Fault.server_error(),
    "gateway": Fault.html(),
    "malformed": Fault.malformed(),
    "truncated": Fault.truncated(),
    "huge": Fault.oversized(),
    "dropped": Fault.disconnect(),
    "hanging": Fault.hang(),
}


async def test_the_token_appears_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, httpx's and httpcore's
    fake = FakeCcm(api_key=KEY, api_token=TOKEN, generate=True)
    fake.add_call(CallDetails(call_sid="live", call_state=CallState.ACTIVE))
    for sid, fault in FAULTS.items():
        fake.fail(sid, fault)
    fake.fail("refused", Fault.unauthorized())
    texts: list[str] = []
    errors: list[BaseException] = []
    async with fake.serve() as base_url:
        # Over a socket (our own transport) and in-process (through httpx.AsyncClient).
        for client in (
            AsyncCcmClient(**fake.credentials, base_url=base_url, retry=None, timeout=0.5),
            fake.client(retry=RetryPolicy(attempts=2, wait_initial=0.01, timeout=1.0)),
        ):
            async with client:
                results = await client.get_calls([*FAULTS, "found", "not/a/sid"])
                with pytest.raises(AuthenticationError) as refused:
                    await client.get_call("refused")
                with pytest.raises(WaitTimeoutError) as waited:
                    await client.wait_for_terminal("live", timeout=0.05, interval=0.01)
            errors += [refused.value, waited.value]
            errors += [result.error for result in results if result.error is not None]
            texts += [repr(client), str(client), repr(client.stats)]
            texts += [text for result in results for text in (repr(result), str(result))]
    kinds = {type(error) for error in errors}
    assert {RequestTimeoutError, TransportError, InvalidCallSidError, WaitTimeoutError} <= kinds
    for options in (
        {"account_sid": "../other"},
        {"max_concurrency": 0},
        {"base_url": "http://example.com"},
        {"api_token": TOKEN + " "},
        {"region": "eu"},
    ):
        settings: dict[str, Any] = {"api_key": KEY, "api_token": TOKEN, "account_sid": "a"}
        with pytest.raises(ConfigurationError) as bad:
            AsyncCcmClient(**{**settings, **options})
        errors.append(bad.value)
    texts += [text for error in errors for text in all_about(error)]
    texts += list(all_logged(caplog.records))
    texts += [repr(fake), str(fake), repr(RetryPolicy()), repr(RateLimit(requests=1, per=1.0))]
    assert_no_secret(texts)


class Echoing:
    """A server that echoes the request's Authorization header into its answers."""

    def __init__(self) -> None:
        self.kinds = iter(["error", "field", "rest"])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        header = dict(scope["headers"])[b"authorization"].decode()
        kind = next(self.kinds, "error")
        body: dict[str, object]
        if kind == "field":
            data = {"call_sid": "s", "total_duration": header}
            body = {"response": {"code": 200, "status": "success", "data": data}}
            status = 200
        elif kind == "rest":
            body = {"RestException": {"Status": 429, "Message": header, "Code": TOKEN}}
            status = 429
        else:
            error = {"code": 1100, "message": f"bad auth {header}", "description": TOKEN}
            body = {"request_id": TOKEN, "response": {"code": 500, "status": "failure",
                                                      "error_data": error}}  # fmt: skip
            status = 500
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@asynccontextmanager
async def echoing_client() -> AsyncIterator[AsyncCcmClient]:
    """A single-attempt client, one request at a time, of an :class:`Echoing` server."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=Echoing())) as http:
        yield AsyncCcmClient(
            api_key=KEY, api_token=TOKEN, account_sid="a", base_url="http://127.0.0.1",
            http_client=http, retry=None, max_concurrency=1,
        )  # fmt: skip


async def test_a_server_that_echoes_the_credentials_gets_them_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with echoing_client() as client:
        results = await client.get_calls(["s", "t", "u"])
    errors = [result.error for result in results]
    assert [type(error) for error in errors] == [ServerError, ResponseFormatError, RateLimitError]
    assert all("[redacted]" in str(error) for error in errors)
    texts = [text for error in errors if error for text in all_about(error)]
    texts += [repr(result) for result in results] + list(all_logged(caplog.records))
    texts += [repr(pickle.loads(pickle.dumps(result))) for result in results]  # noqa: S301 - our own
    assert_no_secret(texts)


def _json_escaped(text: str, escape: list[bool]) -> str:
    """``text`` as a JSON string's content, the chosen characters as \\uXXXX."""
    return "".join(
        f"\\u{ord(char):04X}" if escaped else json.dumps(char)[1:-1]
        for char, escaped in zip(text, escape, strict=False)
    )


@settings(max_examples=100, deadline=None)
@given(
    padding=st.integers(min_value=0, max_value=2100),
    escape=st.lists(st.booleans(), min_size=40, max_size=40),
    encoding=st.sampled_from(
        ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]
    ),
)
async def test_credentials_echoed_in_any_json_escape_are_redacted(
    padding: int, escape: list[bool], encoding: str
) -> None:
    """However a server's JSON encoder escapes the echoed header (.NET writes + and =
    as \\u002B and \\u003D), in whichever encoding JSON allows, no part of the
    credentials reaches a message, even where the message's bound (or a text's,
    at 2,000 characters) would cut a redaction short."""
    basic = SECRETS[1]

    def echo(request: httpx.Request) -> httpx.Response:
        quoted = _json_escaped(basic, escape * 2) + " " + _json_escaped(TOKEN, escape)
        message = "x" * padding + " denied " + quoted
        body = '{"response": {"code": 500, "status": "failure", "error_data": '
        body += '{"code": 1100, "message": "' + message + '", '
        body += '"description": "' + message + '"}}}'
        return httpx.Response(500, content=body.encode(encoding))

    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as http:
        client = AsyncCcmClient(
            api_key=KEY, api_token=TOKEN, account_sid="a", base_url="http://127.0.0.1",
            http_client=http, retry=None,
        )  # fmt: skip
        with pytest.raises(ServerError) as failed:
            await client.get_call(SAMPLE_SID)
    texts = list(all_about(failed.value))
    assert_no_secret(texts)
    for secret in SECRETS:
        fragments = {secret[i : i + 12] for i in range(len(secret) - 11)}
        assert not any(fragment in text for fragment in fragments for text in texts)


@settings(max_examples=200, deadline=None)
@given(account_sid=SID_TEXT, call_sid=SID_TEXT)
async def test_identifiers_cannot_steer_the_request(account_sid: str, call_sid: str) -> None:
    """Either the SID is refused before anything is sent, or the request is exactly
    ``GET /v2/accounts/{account}/calls/{call}`` on the configured host: no other path,
    no query, no extra header."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        asked = request.url.path.rsplit("/", 1)[-1].encode()
        return httpx.Response(200, content=SAMPLE.replace(SAMPLE_SID.encode(), asked))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http_client:
        try:
            client = AsyncCcmClient(
                api_key=KEY,
                api_token=TOKEN,
                account_sid=account_sid,
                base_url="https://ccm.test",
                http_client=http_client,
                retry=None,
            )
            await client.get_call(call_sid)
        except (ConfigurationError, InvalidCallSidError):
            assert not sent
            return
    [request] = sent
    assert request.method == "GET"
    assert request.url.scheme == "https"
    assert request.url.host == "ccm.test"
    assert request.url.raw_path == f"/v2/accounts/{account_sid}/calls/{call_sid}".encode()
    assert request.url.query == b""
    assert sorted(request.headers) == [
        "accept",
        "accept-encoding",
        "authorization",
        "connection",
        "content-type",
        "host",
        "user-agent",
    ]


@asynccontextmanager
async def http_server(
    answer: bytes, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server on 127.0.0.1 answering every request with ``answer``; yields its base URL
    and the request heads it received."""
    listener: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - not Django
    if tls is not None:
        listener = TLSListener(listener, tls, standard_compatible=False)
    heads: list[bytes] = []

    async def serve(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    head += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return  # a client that gave up
            heads.append(head)
            await stream.send(answer)

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", heads
        group.cancel_scope.cancel()


def http_response(status: str, body: bytes = b"", *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", "connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


Stack = Literal["httpx", "aiohttp", "http_client"]


def stacks() -> list[Stack]:
    """The HTTP stacks a client can use on the running backend (aiohttp is asyncio-only)."""
    if sniffio.current_async_library() == "asyncio":
        return ["httpx", "aiohttp", "http_client"]
    return ["httpx", "http_client"]


@asynccontextmanager
async def client_on(
    stack: Stack, base_url: str, **http_options: Any
) -> AsyncIterator[AsyncCcmClient]:
    credentials: dict[str, Any] = {
        "api_key": KEY,
        "api_token": TOKEN,
        "account_sid": "a",
        "base_url": base_url,
    }
    if stack == "http_client":
        async with httpx.AsyncClient(**http_options) as http_client:
            yield AsyncCcmClient(**credentials, http_client=http_client, retry=None)
    else:
        async with AsyncCcmClient(**credentials, transport=stack, retry=None) as client:
            yield client


async def test_redirects_are_never_followed_with_credentials() -> None:
    async with http_server(http_response("200 OK")) as (elsewhere, stolen):
        redirect = http_response("302 Found", b"", f"location: {elsewhere}/steal")
        async with http_server(redirect) as (base_url, heads):
            for stack in stacks():
                # Not even through an http_client of the user's that follows redirects.
                async with client_on(stack, base_url, follow_redirects=True) as client:
                    with pytest.raises(ApiError) as info:
                        await client.get_call("abc")
                assert info.value.http_status == 302, stack
    assert len(heads) == len(stacks())
    assert stolen == []


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


async def test_tls_is_verified_unless_an_http_client_says_otherwise(
    certificate_authority: trustme.CA,
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_context)
    answer = http_response("200 OK", SAMPLE, "content-type: application/json")
    async with http_server(answer, tls=server_context) as (base_url, heads):
        # The server's certificate is for this host, but from a CA nobody trusts.
        for stack in stacks()[:-1]:
            async with client_on(stack, base_url) as client:
                with pytest.raises(TransportError, match=r"(?i)certificate"):
                    await client.get_call(SAMPLE_SID)
        assert heads == []
        trusting = ssl.create_default_context()
        certificate_authority.configure_trust(trusting)
        async with client_on("http_client", base_url, verify=trusting) as client:
            call = await client.get_call(SAMPLE_SID)
    assert call.call_sid == SAMPLE_SID
    assert len(heads) == 1


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3", "http://ccm-api.exotel.com", "http://localhost.example.com"]
)
def test_plain_http_is_for_loopback_only(url: str) -> None:
    with pytest.raises(ConfigurationError, match="https"):
        AsyncCcmClient(api_key=KEY, api_token=TOKEN, account_sid="a", base_url=url)
