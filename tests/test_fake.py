"""FakeCcm itself: what users rely on when testing their own code with it."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import httpx
import pytest

from ccm_async import CallDetails, RateLimit, RateLimitError, ServerError
from ccm_async._config import Credentials
from ccm_async.testing import FakeCcm, Fault

pytestmark = pytest.mark.anyio


async def test_fail_times_then_recover() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.server_error(3046), times=2)
    async with fake.client(retry=None) as client:
        for _ in range(2):
            with pytest.raises(ServerError):
                await client.get_call("s1")
        assert (await client.get_call("s1")).call_sid == "s1"
    assert fake.requests_for("s1") == 3
    assert [request.status for request in fake.requests] == [500, 500, 200]


async def test_random_faults_respect_the_cap_per_sid() -> None:
    fake = FakeCcm(generate=True, seed=7)
    fake.fail_randomly(Fault.server_error(), rate=0.5, max_per_sid=2)
    fake.fail_randomly(Fault.html(503), rate=0.5, max_per_sid=2)
    failures = {f"s{i}": 0 for i in range(50)}
    async with fake.client(retry=None) as client:
        for sid in failures:
            while True:
                try:
                    await client.get_call(sid)
                    break
                except ServerError:
                    failures[sid] += 1
    assert max(failures.values()) == 2
    assert sum(failures.values()) > 25
    fake.clear_faults()
    async with fake.client(retry=None) as client:
        await client.get_call("s0")


async def test_same_seed_same_faults() -> None:
    async def statuses(seed: int) -> list[int]:
        fake = FakeCcm(generate=True, seed=seed)
        fake.fail_randomly(Fault.server_error(), rate=0.3)
        async with fake.client(retry=None) as client:
            for i in range(40):
                with contextlib.suppress(ServerError):
                    await client.get_call(f"s{i}")
        return [request.status for request in fake.requests]

    assert await statuses(1) == await statuses(1)
    assert await statuses(1) != await statuses(2)


async def test_latency_range_and_log_bound() -> None:
    fake = FakeCcm(generate=True, latency=(0.0, 0.001), log_size=5)
    async with fake.client(retry=None) as client:
        for i in range(8):
            await client.get_call(f"s{i}")
    assert fake.request_count == 8
    assert [request.call_sid for request in fake.requests] == [f"s{i}" for i in range(3, 8)]
    assert fake.max_in_flight == 1
    assert fake.in_flight == 0


async def test_in_flight_is_counted() -> None:
    fake = FakeCcm(generate=True, latency=0.05)
    async with fake.client() as client, anyio.create_task_group() as group:
        for i in range(5):
            group.start_soon(client.get_call, f"s{i}")
    assert fake.max_in_flight == 5


async def test_added_calls_are_served_as_given() -> None:
    fake = FakeCcm()
    call = CallDetails(call_sid="given", call_state="terminal", total_talk_time=3)
    fake.add_call(call)
    assert fake.has_call("given")
    assert "calls=1" in repr(fake)
    async with fake.client(retry=None) as client:
        assert await client.get_call("given") == call
    with pytest.raises(ValueError, match="call_sid"):
        fake.add_call({"call_state": "active"})


async def _raw(fake: FakeCcm, method: str, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://fake"
    ) as http:
        return await http.request(method, path, headers=headers)


async def test_routes_methods_and_auth() -> None:
    fake = FakeCcm(generate=True)
    async with fake.client(retry=None) as client:
        await client.get_call("ok")
    authorization = Credentials(**fake.credentials).authorization()
    wrong_path = await _raw(fake, "GET", "/v1/other", authorization=authorization)
    assert wrong_path.status_code == 404
    assert wrong_path.json()["response"]["error_data"]["code"] == 1000
    post = await _raw(fake, "POST", f"/v2/accounts/{fake.account_sid}/calls/x")
    assert post.status_code == 405
    no_auth = await _raw(fake, "GET", f"/v2/accounts/{fake.account_sid}/calls/x")
    assert no_auth.status_code == 401
    assert fake.requests[-1].call_sid == "x"


async def test_lifespan_and_other_scopes() -> None:
    fake = FakeCcm()
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await fake({"type": "lifespan"}, receive, send)
    await fake({"type": "websocket"}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert fake.request_count == 0


async def test_rate_limit_retry_after_is_whole_seconds_the_client_reads() -> None:
    fake = FakeCcm(
        generate=True, rate_limit=RateLimit(requests=1, per=0.2), rate_limit_retry_after=True
    )
    async with fake.client(retry=None) as client:
        await client.get_call("s1")
        with pytest.raises(RateLimitError) as info:
            await client.get_call("s2")
    assert info.value.retry_after == 1.0
