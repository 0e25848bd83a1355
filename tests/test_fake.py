"""FakeCcm itself: what users rely on when testing their own code with it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from ccm_async import (
    CallDetails,
    CallEvent,
    RateLimit,
    RateLimitError,
    ServerError,
    StatusCallback,
    parse_call_event,
)
from ccm_async._config import Credentials
from ccm_async.testing import FakeCcm, Fault

pytestmark = pytest.mark.anyio

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


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


async def test_both_versions_are_served_from_the_same_calls() -> None:
    fake = FakeCcm()
    fake.add_call(CallDetails(call_sid="ringing", call_state="active", direction="inbound"))
    fake.add_call({"call_sid": "odd", "call_state": 5, "start_time": "2024-01-01T10:00:00+05:30"})
    authorization = Credentials(**fake.credentials).authorization()
    base = f"/accounts/{fake.account_sid}/calls"
    v2 = (await _raw(fake, "GET", f"/v2{base}/ringing", authorization=authorization)).json()
    v3 = (await _raw(fake, "GET", f"/v3{base}/ringing", authorization=authorization)).json()
    assert "legs_url" not in v2["response"]["data"]
    assert v2["response"]["data"]["call_sid"] == "ringing"
    details = v3["response"]["call_details"]
    assert "data" not in v3["response"]
    assert details["sid"] == "ringing"
    assert details["state"] == "active"
    assert details["status"] is None
    assert details["end_time"] == "1970-01-01 05:30:00+05:30"
    assert details["legs"] == f"/v3{base}/ringing/legs"
    assert details["direction"] == "inbound"
    assert not {"call_sid", "call_state", "call_status", "start_time", "updated_time"} & set(
        details
    )
    odd = (await _raw(fake, "GET", f"/v3{base}/odd", authorization=authorization)).json()
    assert odd["response"]["call_details"]["state"] == 5  # served as malformed as given
    assert "start_time" not in odd["response"]["call_details"]
    missing = await _raw(fake, "GET", f"/v3{base}/nowhere", authorization=authorization)
    assert missing.status_code == 404
    assert missing.json()["response"]["error_data"]["code"] == 10744
    v4 = await _raw(fake, "GET", f"/v4{base}/ringing", authorization=authorization)
    assert v4.status_code == 404


async def test_rate_limit_headers_and_their_429() -> None:
    limit = RateLimit(requests=2, per=30.0)
    fake = FakeCcm(generate=True, rate_limit=limit, rate_limit_headers=True)
    authorization = Credentials(**fake.credentials).authorization()
    path = f"/v3/accounts/{fake.account_sid}/calls/s1"
    answers = [await _raw(fake, "GET", path, authorization=authorization) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert [answer.headers["x-ratelimit-remaining"] for answer in answers] == ["1", "0", "0"]
    assert {answer.headers["x-ratelimit-limit"] for answer in answers} == {"2"}
    for answer in answers:
        assert 29 <= float(answer.headers["x-ratelimit-reset"]) <= 30.001  # seconds to it
    limited = answers[-1]
    assert limited.headers["retry-after"] == "30"
    exception = limited.json()["RestException"]
    assert exception["Status"] == 429
    assert exception["Code"] == "RATE_LIMIT_EXCEEDED"
    assert (
        exception["Message"]
        == f"Rate limit exceeded. Try again in {limited.headers['retry-after']} seconds."
    )


async def posted_by(post: Callable[[httpx.AsyncClient], Awaitable[object]]) -> httpx.Request:
    """The request ``post`` makes through the client it is given."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        await post(http)
    (request,) = seen
    return request


async def test_a_status_callback_of_a_malformed_call_posts_its_values_as_they_are() -> None:
    fake = FakeCcm()
    fake.add_call({"call_sid": "odd", "start_time": "yesterday", "recordings": "none"})
    request = await posted_by(
        lambda http: fake.post_status_callback("http://127.0.0.1/e", "odd", http_client=http)
    )
    form = dict(urllib.parse.parse_qsl(request.content.decode(), keep_blank_values=True))
    assert form["CallSid"] == "odd"
    assert form["StartTime"] == "yesterday"
    assert form["RecordingUrl"] == form["Status"] == form["DateUpdated"] == ""
    assert form["Legs[0][Status]"] == ""


async def test_a_call_event_posts_the_call_as_served_in_india_time_for_v1(
    fake: FakeCcm, sample_response: dict[str, Any]
) -> None:
    data = sample_response["response"]["data"]
    request = await posted_by(
        lambda http: fake.post_call_event("http://127.0.0.1/e", data["call_sid"], http_client=http)
    )
    assert json.loads(request.content) == {
        "event_details": {"event_type": "terminal"},
        "call_details": data,
    }
    request = await posted_by(
        lambda http: fake.post_status_callback(
            "http://127.0.0.1/e", data["call_sid"], form=False, http_client=http
        )
    )
    start = dt.datetime.fromisoformat(data["start_time"]).astimezone(IST)
    assert json.loads(request.content)["StartTime"] == start.strftime("%Y-%m-%d %H:%M:%S")
    with pytest.raises(ValueError, match="no call"):
        await fake.post_call_event("http://127.0.0.1/e", "not-served")


@pytest.mark.parametrize(
    ("served", "read_back"),
    [
        # v1's times are whole seconds, in India.
        ("2024-05-01T10:00:00.750000+00:00", dt.datetime(2024, 5, 1, 15, 30, tzinfo=IST)),
        # v3's "not yet" is v1's zeros, read as None both ways.
        ("1970-01-01T00:00:00+00:00", None),
        ("0999-05-01T10:00:00+00:00", dt.datetime(999, 5, 1, 15, 30, tzinfo=IST)),
        # Past year 9999 in India: posted as served, read as served.
        (
            "9999-12-31T23:00:00-05:00",
            dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        ),
    ],
)
@pytest.mark.parametrize("form", [True, False], ids=["form", "json"])
async def test_a_status_callback_s_times_read_back_as_v1_has_them(
    served: str, read_back: dt.datetime | None, form: bool
) -> None:
    fake = FakeCcm()
    fake.add_call({"call_sid": "odd", "call_state": "terminal", "end_time": served})
    request = await posted_by(
        lambda http: fake.post_status_callback(
            "http://127.0.0.1/e", "odd", form=form, http_client=http
        )
    )
    parsed = parse_call_event(request.content, request.headers["content-type"])
    assert isinstance(parsed, StatusCallback)
    assert parsed.end_time == read_back


async def test_a_lone_surrogate_is_posted_escaped_and_read_back() -> None:
    half_an_emoji = "😀".encode("utf-16-be")[:2].decode("utf-16-be", "surrogatepass")
    fake = FakeCcm()
    fake.add_call({"call_sid": "odd", "call_state": "terminal", "custom_field": half_an_emoji})
    for post in (
        lambda http: fake.post_call_event("http://127.0.0.1/e", "odd", http_client=http),
        lambda http: fake.post_status_callback(
            "http://127.0.0.1/e", "odd", form=False, http_client=http
        ),
    ):
        request = await posted_by(post)
        assert request.content.isascii()
        parsed = parse_call_event(request.content, request.headers["content-type"])
        fields = parsed.call if isinstance(parsed, CallEvent) else parsed
        assert fields.custom_field == half_an_emoji
