"""Type-checked only (mypy --strict, pyright strict): how users call the public API."""

from __future__ import annotations

import datetime as dt

import httpx

from ccm_async import (
    ApiError,
    AsyncCcmClient,
    CallDetails,
    CallNotFoundError,
    CallState,
    CcmError,
    RateLimitError,
    Region,
)
from ccm_async.testing import FakeCcm, Fault


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
