"""What callers pass by mistake and what a hostile server sends: nothing freezes, leaks, is lost."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import gc
import gzip
import json
import threading
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import pytest
import trio

from ccm_async import (
    AsyncCcmClient,
    ClientClosedError,
    ConfigurationError,
    InvalidCallSidError,
    ResponseFormatError,
    TransportError,
)
from ccm_async.testing import FakeCcm, Fault

from .conftest import SAMPLE_SID, stand_in_client

pytestmark = pytest.mark.anyio

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ODD_ITEMS: list[object] = [None, 7, 2.5, b"bytes", ["a", "list"], {"a": 1}, object(), True]


# -- inputs callers pass by mistake -----------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_every_item_of_a_stream_gets_one_result(concurrency: int) -> None:
    fake = FakeCcm(generate=True)
    items: list[object] = ["a1", *ODD_ITEMS, "a2", "a1", "", "bad sid"]
    async with fake.client() as client, client.stream_calls(items, concurrency=concurrency) as out:  # type: ignore[arg-type]
        results = [result async for result in out]
    assert len(results) == len(items)
    assert sorted(r.call_sid for r in results if r.ok) == ["a1", "a1", "a2"]
    failed = [r for r in results if not r.ok]
    assert len(failed) == len(ODD_ITEMS) + 2
    assert all(isinstance(r.error, InvalidCallSidError) for r in failed)
    assert fake.request_count == 3


async def test_get_calls_gives_odd_items_their_own_result_in_place() -> None:
    fake = FakeCcm(generate=True)
    items: list[object] = ["a1", *ODD_ITEMS, "a1"]
    async with fake.client() as client:
        results = await client.get_calls(items)  # type: ignore[arg-type]
    assert len(results) == len(items)
    assert results[0].ok
    assert results[-1].ok
    assert results[0].call_sid == results[-1].call_sid == "a1"
    for item, result in zip(ODD_ITEMS, results[1:-1], strict=True):
        assert isinstance(result.error, InvalidCallSidError)
        assert result.call_sid == result.error.call_sid
        assert result.call_sid == repr(item)[:80]
    assert fake.request_count == 1  # the duplicate SID was fetched once


class BrokenSourceError(Exception):
    pass


def failing_source(error: BaseException, after: int) -> Iterator[str]:
    for i in range(after):
        yield f"s{i}"
    raise error


async def failing_async_source(error: BaseException, after: int) -> AsyncIterator[str]:
    for i in range(after):
        yield f"s{i}"
    raise error


@pytest.mark.parametrize("error", [ValueError("bad line"), OSError(5, "disk"), BrokenSourceError()])
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_failing_source_raises_its_own_exception(
    error: Exception, *, is_async: bool
) -> None:
    fake = FakeCcm(generate=True)
    source = failing_async_source(error, 3) if is_async else failing_source(error, 3)
    async with fake.client() as client:
        with pytest.raises(type(error)) as info:
            async with client.stream_calls(source, concurrency=2) as results:
                async for _ in results:
                    pass
        assert info.value is error
        with pytest.raises(type(error)) as info:
            await client.get_calls(failing_source(error, 3))
        assert info.value is error


@pytest.mark.parametrize("entered", [True, False])
async def test_closing_the_client_under_a_batch_raises_one_clear_error(*, entered: bool) -> None:
    fake = FakeCcm(generate=True, latency=0.01)
    client = fake.client()

    async def close_once_started() -> None:
        while fake.request_count < 5:  # noqa: ASYNC110 - waiting on the fake's progress
            await anyio.sleep(0.001)
        await client.aclose()

    async with contextlib.AsyncExitStack() as stack:
        if entered:
            await stack.enter_async_context(client)
        async with anyio.create_task_group() as group:
            group.start_soon(close_once_started)
            with pytest.raises(ClientClosedError, match="closed"):
                await client.get_calls([f"s{i}" for i in range(500)])
            with pytest.raises(ClientClosedError, match="closed"):
                async with client.stream_calls(["a", "b"]) as results:
                    async for _ in results:
                        pass
    assert fake.request_count < 500


class Sid(str, enum.Enum):  # noqa: UP042 - a str-mixin Enum: hashed by its name, shown by it
    FIRST = "first-sid"


class LoudSid(str):
    def __str__(self) -> str:
        return "not the sid"


async def test_str_subclasses_are_the_strings_they_hold() -> None:
    fake = FakeCcm(generate=True)
    items: list[str] = [Sid.FIRST, LoudSid("loud-sid"), "first-sid"]
    async with fake.client() as client:
        results = await client.get_calls(items)
        assert fake.requests_for("first-sid") == 1  # an Enum member and its value: one SID
        async with client.stream_calls(items) as out:
            streamed = [result async for result in out]
    assert [result.call_sid for result in results] == ["first-sid", "loud-sid", "first-sid"]
    assert all(type(result.call_sid) is str and result.ok for result in results)
    assert sorted(result.call_sid for result in streamed) == ["first-sid", "first-sid", "loud-sid"]


class StopEverything(BaseException):
    pass


@pytest.mark.parametrize("error", [SystemExit(3), StopEverything(), GeneratorExit()])
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_source_raising_a_base_exception_raises_it_as_itself(
    error: BaseException, *, is_async: bool
) -> None:
    fake = FakeCcm(generate=True)
    source = failing_async_source(error, 2) if is_async else failing_source(error, 2)
    async with fake.client() as client:
        with pytest.raises(type(error)) as info:
            async with client.stream_calls(source, concurrency=2) as results:
                async for _ in results:
                    pass
    assert info.value is error


async def test_aclose_from_the_task_in_async_with_under_a_batch() -> None:
    fake = FakeCcm(generate=True, latency=0.01)
    caught: list[ClientClosedError] = []

    async def batch(client: AsyncCcmClient) -> None:
        try:
            await client.get_calls([f"s{i}" for i in range(500)])
        except ClientClosedError as exc:
            caught.append(exc)

    async with fake.client() as client, anyio.create_task_group() as group:
        group.start_soon(batch, client)
        while fake.request_count < 5:  # noqa: ASYNC110 - waiting on the fake
            await anyio.sleep(0.001)
        await client.aclose()
    assert [type(exc) for exc in caught] == [ClientClosedError]
    assert fake.request_count < 500


async def test_a_lookup_running_when_the_client_closes_says_which_sid() -> None:
    fake = FakeCcm(generate=True, latency=0.05)
    client = fake.client()  # never entered: the lookup runs in the caller's task
    async with anyio.create_task_group() as group:
        group.start_soon(client.aclose)
        with pytest.raises(ClientClosedError) as info:
            await client.get_call("slow")
    assert info.value.call_sid == "slow"


def test_aiohttp_needs_asyncio() -> None:
    pytest.importorskip("aiohttp")

    async def construct() -> None:
        AsyncCcmClient(api_key="k", api_token="t", account_sid="a", transport="aiohttp")

    with pytest.raises(ConfigurationError, match="asyncio"):
        trio.run(construct)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_aiohttp_made_outside_trio_fails_its_first_lookup_under_trio() -> None:
    pytest.importorskip("aiohttp")
    # Made where no event loop runs (a module-level client), then used under trio.
    client = await anyio.to_thread.run_sync(
        lambda: AsyncCcmClient(api_key="k", api_token="t", account_sid="a", transport="aiohttp")
    )
    with pytest.raises(ConfigurationError, match="asyncio"):
        await client.get_calls(["a", "b", "c"])
    with pytest.raises(ConfigurationError, match="asyncio"):
        await client.get_call("a")
    await client.aclose()


# -- a second event loop ------------------------------------------------------------


@pytest.mark.parametrize("runs", [["asyncio", "asyncio"], ["trio", "trio"], ["asyncio", "trio"]])
def test_a_new_event_loop_gets_fresh_connections(runs: list[str]) -> None:
    fake = FakeCcm(generate=True)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(fake.serve()) as base_url,
    ):
        client = AsyncCcmClient(**fake.credentials, base_url=base_url)

        async def lookups(offset: int) -> int:
            results = await client.get_calls([f"s{offset}-{i}" for i in range(40)])
            return sum(result.ok for result in results)

        for index, backend in enumerate(runs):
            if backend == "asyncio":
                assert asyncio.run(lookups(index)) == 40
            else:
                assert trio.run(lookups, index) == 40
        asyncio.run(client.aclose())
    gc.collect()  # a socket left open would warn here (warnings are errors)
    stats = client.stats
    assert stats.requests == 40 * len(runs)
    assert stats.retries == 0
    assert stats.transport_errors == 0


# -- bodies an error must not keep alive --------------------------------------------


def big_app(answer: Callable[[], tuple[int, list[tuple[bytes, bytes]], bytes]]) -> Any:
    async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        status, headers, body = answer()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _json_body(sample: dict[str, Any], **data: object) -> bytes:
    document = json.loads(json.dumps(sample))
    document["response"]["data"].update(data)
    return json.dumps(document).encode()


def big_answers(sample: dict[str, Any]) -> dict[str, tuple[int, list[tuple[bytes, bytes]], bytes]]:
    padding = "x" * 900_000
    return {
        "not-json": (200, [], b"{" + b"x" * 900_000),
        "not-utf8": (200, [], b"\xff" * 900_000),
        "wrong-type": (200, [], _json_body(sample, custom_field=padding, total_duration=[1])),
        "other-call": (200, [], _json_body(sample, call_sid="SOMEONE_ELSE", custom_field=padding)),
        "over-the-cap": (200, [], b" " * (2 * 1024 * 1024)),
        "gzip-bomb": (
            200,
            [(b"content-encoding", b"gzip")],
            gzip.compress(b" " * (8 * 1024 * 1024)),
        ),
        "html-502": (502, [(b"content-type", b"text/html")], b"<html>" + b"x" * 900_000),
        "huge-error-texts": (404, [], _error_body(padding)),
    }


def _error_body(text: str) -> bytes:
    error = {"code": 3043, "message": text, "description": text}
    response = {"code": 404, "status": "failure", "data": None, "error_data": error}
    return json.dumps({"request_id": text, "http_code": 404, "response": response}).encode()


@pytest.mark.parametrize(
    "kind",
    ["not-json", "not-utf8", "wrong-type", "over-the-cap", "gzip-bomb", "html-502", "other-call"],
)
async def test_errors_do_not_keep_response_bodies_alive(
    kind: str, sample_response: dict[str, Any]
) -> None:
    answer = big_answers(sample_response)[kind]
    async with stand_in_client(big_app(lambda: answer), retry=None) as client:
        await client.get_calls(["warm-up"])
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            results = await client.get_calls([f"s{i}" for i in range(40)])
            raised: list[BaseException] = []
            for i in range(10):
                try:
                    await client.get_call(f"r{i}")
                except Exception as exc:  # kept on purpose, as a log queue would
                    raised.append(exc)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert all(not result.ok for result in results)
    assert len(raised) == 10
    per_error = (after - before) / 50
    assert per_error < 8 * 1024, f"{per_error:.0f} bytes kept per error"


async def test_an_error_from_the_own_pool_keeps_no_body_alive() -> None:
    fake = FakeCcm(generate=True)
    fake.fail_randomly(Fault.oversized(declare_length=False), rate=1.0)
    async with (
        fake.serve() as base_url,
        # One connection at a time: every refused body closes its connection, and a
        # pool grown meanwhile would count as kept.
        AsyncCcmClient(
            **fake.credentials, base_url=base_url, retry=None, max_concurrency=1
        ) as client,
    ):
        await client.get_calls(["warm-up"])
        gc.collect()
        tracemalloc.start(64)
        try:
            before = tracemalloc.take_snapshot()
            results = await client.get_calls([f"s{i}" for i in range(25)])
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    # Refused bodies (a stale connection under load may fail one otherwise).
    assert all(not result.ok for result in results)
    assert any(isinstance(result.error, ResponseFormatError) for result in results)
    # Only what this thread keeps: the fake's server runs in a thread of its own.
    server_thread = tracemalloc.Filter(False, threading.__file__, all_frames=True)
    kept = sum(
        stat.size_diff
        for stat in after.filter_traces([server_thread]).compare_to(
            before.filter_traces([server_thread]), "filename"
        )
    )
    assert kept / 25 < 8 * 1024, f"{kept / 25:.0f} bytes kept per error"


# -- HTTP details ------------------------------------------------------------------


async def test_a_multi_member_gzip_body_is_decoded(sample_response: dict[str, Any]) -> None:
    text = json.dumps(sample_response).encode()
    body = gzip.compress(text[:100]) + gzip.compress(text[100:])
    answer = (200, [(b"content-encoding", b"gzip")], body)
    async with stand_in_client(big_app(lambda: answer), retry=None) as client:
        call = await client.get_call(SAMPLE_SID)
    assert call.call_sid == SAMPLE_SID


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(gzip.compress(b"{}", mtime=0)[:-6], "truncated gzip", id="truncated"),
        pytest.param(
            gzip.compress(b"{}", mtime=0) + b"trailing garbage", "undecodable gzip", id="garbage"
        ),
        pytest.param(
            gzip.compress(b" " * 700_000, mtime=0) * 2, "exceeds", id="members-over-the-cap"
        ),
    ],
)
async def test_a_bad_gzip_body_is_a_format_error(body: bytes, message: str) -> None:
    answer = (200, [(b"content-encoding", b"gzip")], body)
    async with stand_in_client(big_app(lambda: answer), retry=None) as client:
        with pytest.raises(ResponseFormatError, match=message) as info:
            await client.get_call("abc")
    assert info.value.call_sid == "abc"


# -- secrets in what a broken answer raises --------------------------------------


TOKEN = "Zq7-distinctive-token-42"


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[str]:
    """A server on 127.0.0.1 that answers every request with ``answer`` and closes."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await stream.receive()
                await stream.send(answer)

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio's
        yield f"http://127.0.0.1:{port}"
        group.cancel_scope.cancel()


def _chain_text(error: BaseException) -> str:
    texts = []
    link: BaseException | None = error
    while link is not None:
        texts += [repr(link), str(link), repr(link.args)]
        link = link.__cause__ or link.__context__
    return "\n".join(texts)


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"garbage\r\n\r\n",
    ],
)
async def test_a_broken_answer_never_shows_the_token(
    transport: str, answer: bytes, anyio_backend: str
) -> None:
    if transport == "aiohttp":
        pytest.importorskip("aiohttp")
        if anyio_backend != "asyncio":
            pytest.skip("aiohttp runs on asyncio only")
    secret = base64.b64encode(f"k:{TOKEN}".encode()).decode()
    async with (
        raw_server(answer) as base_url,
        AsyncCcmClient(
            api_key="k",
            api_token=TOKEN,
            account_sid="a",
            base_url=base_url,
            retry=None,
            transport=transport,  # type: ignore[arg-type]
        ) as client,
    ):
        (result,) = await client.get_calls(["abc"])
    assert isinstance(result.error, TransportError | ResponseFormatError)
    assert result.error.call_sid == "abc"
    text = _chain_text(result.error)
    assert TOKEN not in text
    assert secret not in text
