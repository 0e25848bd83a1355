"""Type-checked only (mypy --strict, pyright strict): how users call the public API."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Any, assert_type

import httpx

from ccm_async import (
    ApiError,
    AsyncCcmClient,
    CallDetails,
    CallEvent,
    CallEventType,
    CallNotFoundError,
    CallResult,
    CallState,
    CcmError,
    ClientStats,
    EventFormatError,
    Leg,
    RateLimit,
    RateLimitError,
    Region,
    RetryPolicy,
    StatusCallback,
    WaitTimeoutError,
    parse_call_event,
)
from ccm_async.testing import FakeCcm, Fault, instant_backoff


async def lookups() -> None:
    async with AsyncCcmClient(
        api_key="k", api_token="t", account_sid="a", region=Region.MUMBAI, timeout=5.0
    ) as ccm:
        call: CallDetails = await ccm.get_call("72827ead13a355d334338f53af71157s")
        started: dt.datetime | None = call.start_time
        talk: int | None = call.total_talk_time
        terminal: bool = call.is_terminal or call.call_state == CallState.TERMINAL
        urls: list[str | None] = [recording.url for recording in call.recordings]
        del started, talk, terminal, urls
    async with AsyncCcmClient(api_key="k", api_token="t", account_sid="a", api_version="v3") as v3:
        legs: str | None = (await v3.get_call("x")).legs_url
        version: str = v3.api_version
        del legs, version
    try:
        await AsyncCcmClient.from_env(timeout=httpx.Timeout(3.0)).get_call("x")
    except CallNotFoundError as exc:
        code: int | None = exc.code
        del code
    except RateLimitError as exc:
        wait: float | None = exc.retry_after
        del wait
    except ApiError as exc:
        status: int = exc.http_status
        request_id: str | None = exc.request_id
        del status, request_id
    except CcmError as exc:
        sid: str | None = exc.call_sid
        del sid


async def with_the_fake() -> None:
    fake = FakeCcm(generate=True, latency=(0.001, 0.002))
    paced = FakeCcm(rate_limit=RateLimit(requests=200, per=60.0), rate_limit_headers=True)
    del paced
    fake.fail("abc", Fault.server_error(3042), times=2)
    fake.fail_randomly(Fault.rate_limited(retry_after=1), rate=0.01, max_per_sid=1)
    async with fake.client(max_concurrency=8) as ccm:
        await ccm.get_call("abc")
    async with (
        fake.serve() as base_url,
        AsyncCcmClient(**fake.credentials, base_url=base_url) as ccm,
    ):
        await ccm.get_call("abc")
    count: int = fake.request_count
    del count


async def bulk(sids: list[str], events: AsyncIterator[str]) -> None:
    policy = RetryPolicy(attempts=3, wait_initial=0.1, wait_max=2.0, timeout=10.0)
    async with AsyncCcmClient.from_env(
        retry=policy, rate_limit=RateLimit(requests=200, per=60.0), max_concurrency=64
    ) as ccm:
        results = await ccm.get_calls(sids, concurrency=32)
        assert_type(results, list[CallResult])
        for result in results:
            if result.ok and result.call is not None:
                assert_type(result.call, CallDetails)
            elif result.error is not None:
                assert_type(result.error, CcmError)
        async with ccm.stream_calls(events) as stream:
            async for streamed in stream:
                assert_type(streamed, CallResult)
        with instant_backoff():
            try:
                ended = await ccm.wait_for_terminal("abc", timeout=60.0, interval=2.0)
                assert_type(ended, CallDetails)
            except WaitTimeoutError as exc:
                assert_type(exc.last_state, str | None)
        stats = ccm.stats
        assert_type(stats, ClientStats)
        assert_type(stats.responses, Mapping[int, int])
        assert_type(stats.adaptive_rate, float | None)


def webhook(body: bytes, content_type: str | None) -> str:
    try:
        event = parse_call_event(body, content_type)
    except EventFormatError as exc:
        assert_type(exc.to_problem().status, int)
        return str(exc)
    if isinstance(event, CallEvent):
        assert_type(event.event_type, CallEventType | str)
        assert_type(event.call, CallDetails)
        return event.call_sid
    assert_type(event, StatusCallback)
    legs: tuple[Leg, ...] = event.legs
    ended: dt.datetime | None = event.end_time
    talk: int | None = event.conversation_duration
    del legs, ended, talk
    assert_type(event.to_dict(), dict[str, Any])
    return event.call_sid if event.is_terminal else ""
