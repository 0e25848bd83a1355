"""Bulk and concurrent lookups: get_calls, stream_calls, single-flight, cache, cancellation."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncGenerator

import anyio
import attrs
import httpcore
import httpx
import pytest

from ccm_async import (
    AsyncCcmClient,
    AuthenticationError,
    CallDetails,
    CallNotFoundError,
    CallResult,
    CcmError,
    ConfigurationError,
    InvalidCallSidError,
    ServerError,
    WaitTimeoutError,
)
from ccm_async.testing import FakeCcm, Fault, instant_backoff

from .conftest import CountingBackend, wait_until

pytestmark = pytest.mark.anyio


async def test_get_calls_in_input_order_with_failures() -> None:
    fake = FakeCcm(generate=True, missing_rate=0.02, latency=(0.0, 0.002), seed=3)
    fake.fail_randomly(Fault.server_error(), rate=0.05, max_per_sid=3)
    sids = [f"call-{i}" for i in range(2000)]
    async with fake.client(max_concurrency=16) as client:
        with instant_backoff():
            results = await client.get_calls(sids)
    assert [result.call_sid for result in results] == sids
    missing = {sid for sid in sids if not fake.has_call(sid)}
    assert 15 < len(missing) < 70
    for result in results:
        if result.call_sid in missing:
            assert isinstance(result.error, CallNotFoundError)
            assert not result.ok
        else:
            assert result.ok, result.error
            assert result.unwrap().call_sid == result.call_sid
    assert 1 < fake.max_in_flight <= 16
    assert client.stats.retries > 50


async def test_wrong_credentials_stop_the_batch() -> None:
    fake = FakeCcm(generate=True, latency=0.001)
    sids = [f"call-{i}" for i in range(1000)]
    async with fake.client(api_token="wrong", max_concurrency=8) as client:
        with pytest.raises(AuthenticationError):
            await client.get_calls(sids)
        assert fake.request_count <= 8
        with pytest.raises(AuthenticationError):
            async with client.stream_calls(sids) as results:
                async for _ in results:
                    pass
    assert fake.request_count <= 16


async def test_duplicates_fetched_once_and_invalid_sids_are_results() -> None:
    fake = FakeCcm(generate=True)
    sids = ["a", "b", "a", "../etc", "b", "a", ""]
    async with fake.client() as client:
        results = await client.get_calls(sids)
    assert [r.call_sid for r in results] == sids
    assert results[0] is results[2] is results[5]
    assert isinstance(results[3].error, InvalidCallSidError)
    assert isinstance(results[6].error, InvalidCallSidError)
    with pytest.raises(InvalidCallSidError):
        results[3].unwrap()
    assert fake.request_count == 2


async def test_stream_from_an_async_generator_and_break_early() -> None:
    fake = FakeCcm(generate=True, latency=0.001)
    closed = anyio.Event()
    produced = 0

    async def events() -> AsyncGenerator[str]:
        nonlocal produced
        try:
            for i in range(100_000):
                produced += 1
                yield f"evt-{i}"
        finally:
            closed.set()

    async with fake.client(max_concurrency=4) as client:
        received: list[CallResult] = []
        async with client.stream_calls(events()) as results:
            async for result in results:
                received.append(result)
                if len(received) == 10:
                    break
        assert closed.is_set()
        sent = fake.request_count
        assert produced < 100
        await anyio.sleep(0.05)  # give anything left running a chance to send
        assert fake.request_count == sent
        assert fake.in_flight == 0
        assert all(result.ok for result in received)
        assert (await client.get_call("after")).call_sid == "after"


async def test_stream_yields_one_result_per_item_duplicates_included() -> None:
    fake = FakeCcm(generate=True, latency=0.002)
    sids = ["x", "y", "x", "x", "z", "y"] * 3
    async with (
        fake.client(max_concurrency=8) as client,
        client.stream_calls(iter(sids), concurrency=18) as results,
    ):
        seen = sorted([result.call_sid async for result in results])
    assert seen == sorted(sids)
    assert fake.request_count < len(sids)


async def test_stream_exits_cleanly_on_an_exception_in_the_body() -> None:
    fake = FakeCcm(generate=True, latency=0.001)
    async with fake.client(max_concurrency=4) as client:
        with pytest.raises(KeyError):
            async with client.stream_calls(f"s{i}" for i in range(1000)) as results:
                async for _ in results:
                    raise KeyError("boom")
        assert fake.in_flight == 0
        assert fake.request_count < 20


async def test_stream_concurrency_is_bounded() -> None:
    async with FakeCcm().client() as client:
        with pytest.raises(ConfigurationError):
            async with client.stream_calls(["a"], concurrency=0):
                pass


async def test_one_request_for_many_concurrent_lookups_of_a_sid() -> None:
    fake = FakeCcm(generate=True, latency=0.02)
    got: list[CallDetails] = []

    async def lookup(client: AsyncCcmClient) -> None:
        got.append(await client.get_call("popular"))

    async with fake.client() as client, anyio.create_task_group() as group:
        for _ in range(100):
            group.start_soon(lookup, client)
    assert fake.request_count == 1
    assert len(got) == 100
    assert all(call is got[0] for call in got)


async def test_single_flight_shares_errors() -> None:
    fake = FakeCcm(generate=True, latency=0.02)
    fake.fail("bad", Fault.server_error())
    errors: list[BaseException] = []

    async def lookup(client: AsyncCcmClient) -> None:
        try:
            await client.get_call("bad")
        except ServerError as exc:
            errors.append(exc)

    async with fake.client(retry=None) as client, anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(lookup, client)
    assert fake.request_count == 1
    assert len(errors) == 10
    assert all(error is errors[0] for error in errors)


async def test_cancelling_one_waiter_spares_the_others() -> None:
    fake = FakeCcm(generate=True, latency=0.1)
    got: list[CallDetails] = []

    async def lookup(client: AsyncCcmClient) -> None:
        got.append(await client.get_call("shared"))

    async with fake.client() as client:
        async with anyio.create_task_group() as group:
            with anyio.CancelScope() as first:
                group.start_soon(lookup, client)  # not cancelled
                async with anyio.create_task_group() as doomed:
                    doomed.start_soon(lookup, client)
                    await wait_until(lambda: fake.in_flight == 1)
                    first.cancel()
            group.start_soon(lookup, client)
        assert len(got) == 2
        assert fake.request_count == 1
        # When every waiter leaves, the shared request is cancelled.
        with anyio.move_on_after(0.02):
            await client.get_call("abandoned")
        await wait_until(lambda: fake.in_flight == 0)
        # The abandoned flight is gone: the next lookup of that SID is a new request.
        await client.get_call("abandoned")
        assert fake.requests_for("abandoned") == 2


async def test_a_client_used_without_async_with_still_works() -> None:
    fake = FakeCcm(generate=True)
    client = fake.client()
    try:
        assert (await client.get_call("plain")).call_sid == "plain"
        results = await client.get_calls(["a", "b"])
        assert all(result.ok for result in results)
    finally:
        await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_call("plain")
    with pytest.raises(RuntimeError, match="closed"):
        async with client:
            pass


async def test_terminal_calls_are_cached_lru() -> None:
    fake = FakeCcm()
    for sid in ("t1", "t2", "t3"):
        fake.add_call(CallDetails(call_sid=sid, call_state="terminal"))
    fake.add_call(CallDetails(call_sid="live", call_state="active"))
    async with fake.client(cache_size=2) as client:
        await client.get_call("t1")
        await client.get_call("t1")
        assert fake.requests_for("t1") == 1
        await client.get_call("live")
        await client.get_call("live")
        assert fake.requests_for("live") == 2
        await client.get_call("t2")
        await client.get_call("t1")  # t1 is now the most recently used
        await client.get_call("t3")  # evicts t2
        await client.get_call("t1")
        await client.get_call("t2")
    assert fake.requests_for("t1") == 1
    assert fake.requests_for("t2") == 2
    assert fake.requests_for("t3") == 1


async def test_cache_is_off_by_default() -> None:
    fake = FakeCcm()
    fake.add_call(CallDetails(call_sid="t1", call_state="terminal"))
    async with fake.client() as client:
        await client.get_call("t1")
        await client.get_call("t1")
    assert fake.requests_for("t1") == 2


async def test_wait_for_terminal() -> None:
    fake = FakeCcm()
    fake.add_call(CallDetails(call_sid="c1", call_state="active"))

    async def hang_up_later() -> None:
        await wait_until(lambda: fake.requests_for("c1") >= 2)
        fake.add_call(CallDetails(call_sid="c1", call_state="terminal", call_status="completed"))

    async with fake.client() as client, anyio.create_task_group() as group:
        group.start_soon(hang_up_later)
        call = await client.wait_for_terminal("c1", timeout=10, interval=0.001)
    assert call.is_terminal
    assert fake.requests_for("c1") >= 3


async def test_wait_for_terminal_times_out_naming_the_state() -> None:
    fake = FakeCcm()
    fake.add_call(CallDetails(call_sid="c1", call_state="active"))
    async with fake.client() as client:
        with pytest.raises(WaitTimeoutError) as info:
            await client.wait_for_terminal("c1", timeout=0.05, interval=0.001)
        assert isinstance(info.value, TimeoutError)
        assert info.value.last_state == "active"
        assert "c1" in str(info.value)
        assert "active" in str(info.value)
        with pytest.raises(WaitTimeoutError) as info:
            await client.wait_for_terminal("nowhere", timeout=0.02, interval=0.001)
        assert info.value.last_state is None
        assert "not found" in str(info.value)


def test_call_result_holds_one_of_call_or_error() -> None:
    with pytest.raises(ValueError, match="either"):
        CallResult(call_sid="a")
    with pytest.raises(ValueError, match="either"):
        CallResult(call_sid="a", call=CallDetails(), error=CcmError("x"))


def counting_http_client(backend: CountingBackend, connections: int) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=connections), retries=0
    )
    transport._pool = httpcore.AsyncConnectionPool(
        max_connections=connections, network_backend=backend
    )
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=1.0))


async def test_cancelled_lookups_leave_the_pool_healthy() -> None:
    fake = FakeCcm(generate=True)
    backend = CountingBackend()
    async with fake.serve() as base_url, counting_http_client(backend, 100) as http_client:
        client = AsyncCcmClient(
            **fake.credentials, base_url=base_url, max_concurrency=4, http_client=http_client
        )
        async with client:
            for round_ in range(50):
                sids = [f"r{round_}-{i}" for i in range(200)]
                for sid in sids:
                    fake.fail(sid, Fault.stall())
                async with anyio.create_task_group() as group:
                    group.start_soon(client.get_calls, sids)
                    await wait_until(lambda: fake.in_flight == 4)
                    group.cancel_scope.cancel()
            await wait_until(lambda: fake.in_flight == 0)
            results = await client.get_calls([f"after-{i}" for i in range(1000)])
    assert all(result.ok for result in results)
    assert backend.max_open <= 4


async def test_a_smaller_user_pool_lowers_the_bound() -> None:
    fake = FakeCcm(generate=True, latency=0.002)
    backend = CountingBackend()
    async with (
        fake.serve() as base_url,
        counting_http_client(backend, 2) as http_client,
        AsyncCcmClient(
            **fake.credentials, base_url=base_url, max_concurrency=32, http_client=http_client
        ) as client,
    ):
        assert client.max_concurrency == 2
        results = await client.get_calls([f"s{i}" for i in range(300)])
    assert all(result.ok for result in results)
    assert backend.max_open <= 2


async def stream_count(client: AsyncCcmClient, count: int) -> int:
    seen = 0
    async with client.stream_calls(f"m{i}" for i in range(count)) as results:
        async for result in results:
            seen += result.ok
    return seen


async def test_memory_does_not_grow_with_the_number_of_sids() -> None:
    fake = FakeCcm(generate=True, log_size=10)
    async with fake.client(max_concurrency=8) as client:
        await stream_count(client, 200)  # warm up caches and pools
        gc.collect()
        tracemalloc.start()
        try:
            assert await stream_count(client, 300) == 300
            _, small_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            assert await stream_count(client, 3_000) == 3_000
            _, large_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Ten times the SIDs: the peak stays within a fixed margin, not ten times higher.
    assert large_peak < small_peak + 512 * 1024


@attrs.frozen
class Message:
    """A queue's message, as a consumer receives it: the SID is one of its fields."""

    id: int
    body: dict[str, object]


def sid_of_message(message: Message) -> str:
    return message.body["call_sid"]  # type: ignore[return-value]  # a wrong type is a result


async def test_stream_results_carry_their_message() -> None:
    fake = FakeCcm(generate=True, missing_rate=0.3, seed=5)
    sids: list[object] = [f"call-{i % 40}" for i in range(100)] + ["../x", None, 7]
    messages = [Message(i, {"call_sid": sid}) for i, sid in enumerate(sids)]
    async with (
        fake.client(max_concurrency=8) as client,
        client.stream_calls(iter(messages), sid=sid_of_message) as results,
    ):
        received = [result async for result in results]
    assert sorted(result.item.id for result in received) == list(range(len(messages)))
    for result in received:
        sid = result.item.body["call_sid"]
        if not isinstance(sid, str) or sid == "../x":
            assert isinstance(result.error, InvalidCallSidError)
        elif fake.has_call(sid):
            assert result.unwrap().call_sid == sid == result.call_sid
        else:
            assert isinstance(result.error, CallNotFoundError)
            assert result.call_sid == sid


async def test_get_calls_gives_each_position_its_own_item() -> None:
    fake = FakeCcm(generate=True)
    messages = [Message(i, {"call_sid": sid}) for i, sid in enumerate(["a", "b", "a", "a", 5])]
    async with fake.client() as client:
        results = await client.get_calls(messages, sid=sid_of_message)
    assert [result.item for result in results] == messages
    assert [result.call_sid for result in results] == ["a", "b", "a", "a", "5"]
    assert results[0].call is results[2].call is results[3].call
    assert isinstance(results[4].error, InvalidCallSidError)
    assert fake.request_count == 2
    assert "Message" not in repr(results[0])  # a large message does not fill the repr


async def test_without_sid_the_item_is_the_sid_as_given() -> None:
    fake = FakeCcm(generate=True)
    items: list[object] = ["a", "a", 42]
    async with fake.client() as client:
        gathered = await client.get_calls(items)  # type: ignore[arg-type]  # a caller's mistake
        async with client.stream_calls(items) as results:  # type: ignore[arg-type]
            streamed = [result async for result in results]
    assert [result.item for result in gathered] == items
    assert sorted(map(repr, (result.item for result in streamed))) == sorted(map(repr, items))


@pytest.mark.parametrize("batch", ["get_calls", "stream_calls"])
async def test_a_failing_sid_function_stops_the_batch_as_itself(batch: str) -> None:
    fake = FakeCcm(generate=True)
    messages = [Message(i, {"call_sid": f"s{i}"}) for i in range(50)] + [Message(50, {})]
    async with fake.client(max_concurrency=4) as client:
        with pytest.raises(KeyError, match="call_sid"):
            if batch == "get_calls":
                await client.get_calls(messages, sid=sid_of_message)
            else:
                async with client.stream_calls(messages, sid=sid_of_message) as results:
                    async for _ in results:
                        pass
        assert fake.in_flight == 0


@pytest.mark.virtual_clock
async def test_single_flight_without_async_with() -> None:
    fake = FakeCcm(generate=True, latency=0.05)
    client = fake.client()  # a module-level client, as a web app keeps one
    try:
        async with anyio.create_task_group() as group:
            got = [group.start_soon(client.get_call, "popular") for _ in range(50)]
        assert len(got) == 50
        assert fake.request_count == 1
    finally:
        await client.aclose()


async def lookups_under_a_cancelled_first_caller(
    client: AsyncCcmClient, fake: FakeCcm, sid: str
) -> list[CallDetails]:
    """The first caller is cancelled while its request is out and three others wait."""
    got: list[CallDetails] = []

    async def lookup() -> None:
        got.append(await client.get_call(sid))

    async with anyio.create_task_group() as group, anyio.create_task_group() as first:
        first.start_soon(lookup)
        await wait_until(lambda: fake.in_flight == 1)
        for _ in range(3):
            group.start_soon(lookup)
        await anyio.wait_all_tasks_blocked()
        first.cancel_scope.cancel()
    return got


@pytest.mark.virtual_clock
@pytest.mark.parametrize("entered", [True, False], ids=["async-with", "module-level"])
async def test_cancelling_the_first_caller_never_fails_the_others(entered: bool) -> None:
    fake = FakeCcm(generate=True, latency=1.0)
    client = fake.client()
    try:
        if entered:
            await client.__aenter__()
        got = await lookups_under_a_cancelled_first_caller(client, fake, "hot")
        assert len(got) == 3
        assert all(call is got[0] and call.call_sid == "hot" for call in got)
        # Inside the block the first request answered them all; without it a waiter
        # took over with a request of its own.
        assert fake.requests_for("hot") == (1 if entered else 2)
    finally:
        if entered:
            await client.__aexit__(None, None, None)
        else:
            await client.aclose()
    await wait_until(lambda: fake.in_flight == 0)


@pytest.mark.virtual_clock
async def test_module_level_flights_share_errors_and_let_waiters_leave_at_once() -> None:
    fake = FakeCcm(generate=True, latency=1.0)
    fake.fail("bad", Fault.server_error())
    client = fake.client(retry=None)
    errors: list[ServerError] = []
    left_at: list[float] = []

    async def lookup() -> None:
        try:
            await client.get_call("bad")
        except ServerError as exc:
            errors.append(exc)

    async def impatient() -> None:
        with anyio.move_on_after(0.25):
            await client.get_call("bad")
        left_at.append(anyio.current_time())

    try:
        started = anyio.current_time()
        async with anyio.create_task_group() as group:
            group.start_soon(lookup)
            await wait_until(lambda: fake.in_flight == 1)
            group.start_soon(impatient)
            for _ in range(4):
                group.start_soon(lookup)
        assert fake.request_count == 1
        assert len(errors) == 5
        assert all(error is errors[0] for error in errors)
        # A waiter's leaving does not wait for a request its first caller runs.
        assert left_at[0] - started < 0.5
        await client.get_call("after")
        assert fake.requests_for("after") == 1
    finally:
        await client.aclose()
