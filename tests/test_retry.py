"""Retries, backoff, Retry-After, deadlines, the retry budget and rate limiting."""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import random
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
import tenacity

from ccm_async import (
    ApiError,
    AsyncCcmClient,
    AuthenticationError,
    CallNotFoundError,
    CcmError,
    ConfigurationError,
    ErrorAnswer,
    InvalidCallSidError,
    RateLimit,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    TransportError,
    _retry_after,
)
from ccm_async._config import DEFAULT_TIMEOUT
from ccm_async.testing import FakeCcm, Fault, instant_backoff

from .conftest import most_in_any_window, stand_in_client

pytestmark = pytest.mark.anyio

RETRIED = [
    pytest.param(Fault.server_error(1100), ServerError, id="500-1100"),
    pytest.param(Fault.server_error(3042), ServerError, id="500-3042"),
    pytest.param(Fault.server_error(3046), ServerError, id="500-3046"),
    pytest.param(Fault.server_error(3075), ServerError, id="500-3075"),
    pytest.param(Fault.server_error(1100, http_status=200), ServerError, id="200-envelope-500"),
    pytest.param(Fault.html(502), ServerError, id="html-502"),
    pytest.param(Fault.html(503), ServerError, id="html-503"),
    pytest.param(Fault.html(504), ServerError, id="html-504"),
    pytest.param(Fault.rate_limited(), RateLimitError, id="429"),
    pytest.param(Fault.rate_limited(retry_after=1), RateLimitError, id="429-retry-after"),
]

NOT_RETRIED = [
    pytest.param(Fault.not_found(3044), CallNotFoundError, id="404"),
    pytest.param(Fault.unauthorized(), AuthenticationError, id="401"),
    pytest.param(Fault.malformed(), ResponseFormatError, id="malformed"),
    pytest.param(Fault.truncated(), ResponseFormatError, id="truncated"),
]


async def lookup_all(client: AsyncCcmClient, sids: list[str]) -> dict[str, object]:
    """Run get_call for every SID in a task group (the bulk API comes later)."""
    results: dict[str, object] = {}

    async def one(sid: str) -> None:
        try:
            results[sid] = await client.get_call(sid)
        except CcmError as exc:
            results[sid] = exc

    async with anyio.create_task_group() as group:
        for sid in sids:
            group.start_soon(one, sid)
    return results


@pytest.mark.parametrize(("fault", "cls"), RETRIED)
async def test_retried_errors_recover_when_they_stop(fault: Fault, cls: type[CcmError]) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", fault, times=3)
    async with fake.client() as client:
        with instant_backoff():
            call = await client.get_call("s1")
        assert call.call_sid == "s1"
        assert fake.requests_for("s1") == 4
        assert client.stats.retries == 3
        fake.fail("s2", fault)
        with instant_backoff(), pytest.raises(cls) as info:
            await client.get_call("s2")
    assert info.value.attempts == 4
    assert fake.requests_for("s2") == 4


@pytest.mark.parametrize(("fault", "cls"), NOT_RETRIED)
async def test_non_retried_errors_send_one_request(fault: Fault, cls: type[CcmError]) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", fault)
    async with fake.client() as client:
        with instant_backoff(), pytest.raises(cls) as info:
            await client.get_call("s1")
        assert info.value.attempts == 1
        assert fake.requests_for("s1") == 1
        with pytest.raises(InvalidCallSidError) as invalid:
            await client.get_call("../s1")
        assert invalid.value.attempts == 0
    assert fake.request_count == 1


async def test_other_4xx_is_not_retried() -> None:
    async def bad_request(
        scope: object, receive: object, send: Callable[..., Awaitable[None]]
    ) -> None:
        body = b'{"response": {"status": "failure", "code": 400, "error_data": {"code": 1001}}}'
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async with stand_in_client(bad_request) as client:
        with instant_backoff(), pytest.raises(ApiError) as info:
            await client.get_call("abc")
    assert info.value.code == 1001
    assert client.stats.requests == 1


async def test_attempts_are_respected_and_reported() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.server_error())
    async with fake.client(retry=RetryPolicy(attempts=2)) as client:
        with instant_backoff(), pytest.raises(ServerError) as info:
            await client.get_call("s1")
    assert info.value.attempts == 2
    assert fake.requests_for("s1") == 2
    async with fake.client(retry=None) as client:
        with pytest.raises(ServerError) as info:
            await client.get_call("s1")
    assert info.value.attempts == 1


async def test_transport_errors_are_retried_over_a_socket() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("drop", Fault.disconnect(), times=2)
    fake.fail("slow", Fault.hang(), times=1)
    async with (
        fake.serve() as base_url,
        AsyncCcmClient(**fake.credentials, base_url=base_url, timeout=httpx.Timeout(0.3)) as client,
    ):
        with instant_backoff():
            assert (await client.get_call("drop")).call_sid == "drop"
            assert (await client.get_call("slow")).call_sid == "slow"
        assert client.stats.transport_errors == 3
        assert client.stats.retries == 3


@pytest.mark.virtual_clock
async def test_retry_after_is_waited_exactly(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.rate_limited(retry_after=7), times=1)
    fake.fail("s2", Fault.html(503, retry_after=3), times=1)
    # An HTTP date counts from the wall clock: hold it still, on a whole second.
    now = float(int(time.time()))
    monkeypatch.setattr(_retry_after, "time", types.SimpleNamespace(time=lambda: now))
    when = email.utils.formatdate(now + 30, usegmt=True)
    fake.fail("s3", Fault.rate_limited(retry_after=when), times=1)
    caplog.set_level(logging.WARNING, logger="ccm_async")
    async with fake.client(retry=RetryPolicy(timeout=60)) as client:
        for sid in ("s1", "s2", "s3"):
            await client.get_call(sid)
    arrivals: dict[str, list[float]] = collections.defaultdict(list)
    for request in fake.requests:
        arrivals[str(request.call_sid)].append(request.time)
    waited = {sid: second - first for sid, (first, second) in arrivals.items()}
    assert waited == {"s1": 7.0, "s2": 3.0, "s3": 30.0}
    logged = {record.call_sid: record.wait for record in caplog.records}  # type: ignore[attr-defined]
    assert logged == {"s1": 7.0, "s2": 3.0, "s3": 30.0}


async def test_retry_after_longer_than_allowed_gives_up_at_once() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.rate_limited(retry_after=61))
    fake.fail("s2", Fault.rate_limited(retry_after=5))
    async with fake.client(retry=RetryPolicy(timeout=2.0)) as client:
        with instant_backoff(), pytest.raises(RateLimitError) as info:
            await client.get_call("s1")
        assert info.value.retry_after == 61
        assert info.value.attempts == 1
        with instant_backoff(), pytest.raises(RateLimitError) as info:
            await client.get_call("s2")
        assert info.value.attempts == 1


@pytest.mark.virtual_clock
async def test_backoff_longer_than_the_deadline_gives_up() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.server_error())
    policy = RetryPolicy(wait_initial=10.0, wait_max=10.0, timeout=0.01)
    rng = random.Random(3)
    assert min(policy.backoff(1, rng) for _ in range(100)) > 0.01
    async with fake.client(retry=policy) as client:
        with pytest.raises(ServerError) as info:
            await client.get_call("s1")
    assert info.value.attempts == 1


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(wait_initial=0.5, wait_max=3.0)
    rng = random.Random(1)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        waits = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0.0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling * 0.9
        assert min(waits) < ceiling * 0.1


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "options",
    [
        {"attempts": 0},
        {"attempts": 21},
        {"timeout": 0},
        {"wait_max": -1},
        {"budget_tokens": 1},
        {"attempts": 2.5},
        {"attempts": 3.0},
        {"attempts": True},
        {"attempts": NAN},
        {"attempts": "3"},
        {"wait_initial": True},
        {"wait_initial": NAN},
        {"wait_max": INF},
        {"timeout": False},
        {"timeout": NAN},
        {"timeout": INF},
        {"budget_tokens": True},
        {"budget_tokens": INF},
        {"budget_refill": NAN},
        {"budget_refill": INF},
        {"budget_refill": False},
    ],
)
def test_policy_bounds(options: dict[str, float]) -> None:
    [name] = options
    with pytest.raises(ConfigurationError, match=rf"^RetryPolicy\.{name} must be"):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_policy_attempts_message_names_the_field_and_range() -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(attempts=2.5)  # type: ignore[arg-type]
    assert str(info.value) == "RetryPolicy.attempts must be an integer from 1 to 20"


async def test_lookup_deadline_bounds_a_server_that_never_answers() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("hang", Fault.hang())
    async with (
        fake.serve() as base_url,
        AsyncCcmClient(
            **fake.credentials, base_url=base_url, retry=RetryPolicy(timeout=0.3)
        ) as client,
    ):
        with pytest.raises(RequestTimeoutError) as info:
            await client.get_call("hang")
    assert info.value.deadline_exceeded
    assert info.value.attempts == 1
    assert "deadline" in str(info.value)
    assert client.timeout.read == 10.0


@pytest.mark.virtual_clock
async def test_queueing_for_a_first_slot_does_not_count() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("hang", Fault.hang())
    policy = RetryPolicy(timeout=0.3)
    async with fake.client(max_concurrency=1, retry=policy) as client:
        results = await lookup_all(client, ["hang", "ok"])
    assert isinstance(results["hang"], RequestTimeoutError)
    assert not isinstance(results["ok"], CcmError)


@pytest.mark.virtual_clock
async def test_no_slot_is_held_while_waiting() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("flaky", Fault.html(503, retry_after=1), times=1)
    async with fake.client(max_concurrency=1) as client:
        order: list[str] = []

        async def flaky() -> None:
            await client.get_call("flaky")
            order.append("flaky")

        async def quick() -> None:
            await anyio.wait_all_tasks_blocked()  # "flaky" is in its retry wait
            await client.get_call("quick")
            order.append("quick")

        async with anyio.create_task_group() as group:
            group.start_soon(flaky)
            group.start_soon(quick)
    assert order == ["quick", "flaky"]
    assert [r.call_sid for r in fake.requests] == ["flaky", "quick", "flaky"]


async def test_cancel_during_a_retry_wait_through_a_cancel_scope() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.server_error())
    policy = RetryPolicy(wait_initial=60.0, wait_max=60.0, timeout=300.0)
    async with fake.client(retry=policy) as client:
        with anyio.fail_after(10):  # a guard: the cancellation must not wait out the 60 s
            async with anyio.create_task_group() as group:
                group.start_soon(client.get_call, "s1")
                await anyio.wait_all_tasks_blocked()  # the lookup is in its retry wait
                assert fake.request_count == 1
                group.cancel_scope.cancel()
    assert fake.request_count == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancel_during_a_retry_wait_through_task_cancel() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.server_error())
    policy = RetryPolicy(wait_initial=60.0, wait_max=60.0, timeout=300.0)
    async with fake.client(retry=policy) as client:
        task = asyncio.create_task(client.get_call("s1"))
        await anyio.wait_all_tasks_blocked()  # the lookup is in its retry wait
        assert fake.request_count == 1
        task.cancel()
        with anyio.fail_after(10), pytest.raises(asyncio.CancelledError):
            await task
    assert fake.request_count == 1


async def test_budget_caps_requests_in_a_total_outage() -> None:
    fake = FakeCcm(generate=True)
    fake.fail_randomly(Fault.server_error(), rate=1.0)
    sids = [f"s{i}" for i in range(1000)]
    async with fake.client() as client:
        with instant_backoff():
            results = await lookup_all(client, sids)
    assert all(isinstance(result, ServerError) for result in results.values())
    assert fake.request_count <= 1500
    assert client.stats.budget_denials > 0


async def test_budget_allows_every_retry_at_five_percent() -> None:
    fake = FakeCcm(generate=True, seed=5)
    fake.fail_randomly(Fault.server_error(), rate=0.05, max_per_sid=3)
    sids = [f"s{i}" for i in range(2000)]
    async with fake.client(max_concurrency=64) as client:
        with instant_backoff():
            results = await lookup_all(client, sids)
    assert not any(isinstance(result, CcmError) for result in results.values())
    assert client.stats.retries > 50
    assert client.stats.budget_denials == 0


@pytest.mark.virtual_clock  # each lookup's deadline is then no matter of machine load
async def test_soak_mix_is_fully_retried_and_not_throttled() -> None:
    # The hardening soak's mix: 5% 500s, 1% 429s, 1% dropped (here: gateway) pages.
    fake = FakeCcm(generate=True, seed=11)
    fake.fail_randomly(Fault.server_error(), rate=0.05, max_per_sid=3)
    fake.fail_randomly(Fault.rate_limited(), rate=0.01, max_per_sid=3)
    fake.fail_randomly(Fault.html(502), rate=0.01, max_per_sid=3)
    sids = [f"s{i}" for i in range(4000)]
    async with fake.client(max_concurrency=256) as client:
        with instant_backoff():
            results = await lookup_all(client, sids)
    assert not any(isinstance(result, CcmError) for result in results.values())
    assert client.stats.budget_denials == 0
    assert client.stats.adaptive_rate is None


@pytest.mark.virtual_clock
async def test_adapts_to_an_unknown_rate_limit() -> None:
    fake = FakeCcm(generate=True, rate_limit=RateLimit(requests=20, per=1.0))
    sids = [f"s{i}" for i in range(600)]
    async with fake.client() as client:
        results = await lookup_all(client, sids)
    assert not any(isinstance(result, CcmError) for result in results.values())
    statuses = [request.status for request in fake.requests]
    assert len(statuses) == fake.request_count
    assert statuses.count(429) <= 0.10 * len(statuses)
    assert client.stats.adaptive_rate is not None


@pytest.mark.virtual_clock
async def test_configured_rate_limit_is_a_sliding_window() -> None:
    fake = FakeCcm(generate=True)
    async with fake.client(rate_limit=RateLimit(requests=10, per=0.5)) as client:
        await lookup_all(client, [f"s{i}" for i in range(35)])
    arrivals = [request.time for request in fake.requests]
    assert len(arrivals) == 35
    assert most_in_any_window(arrivals, per=0.5) == 10
    assert max(arrivals) - min(arrivals) == 1.5  # 10 at 0, 0.5 and 1.0 s, and 5 at 1.5 s
    assert client.stats.rate_limit_waits >= 25


@pytest.mark.virtual_clock
async def test_retry_after_on_429_pauses_the_whole_client() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.rate_limited(retry_after=1), times=1)
    async with fake.client(retry=None) as client:
        with pytest.raises(RateLimitError):
            await client.get_call("s1")
        await client.get_call("s2")
        assert client.stats.rate_limit_waits == 1
        with instant_backoff():
            fake.fail("s3", Fault.rate_limited(retry_after=30), times=1)
            with pytest.raises(RateLimitError):
                await client.get_call("s3")
            await client.get_call("s4")
        assert client.stats.rate_limit_waits == 1


def a_day_ahead(header: str) -> str:
    if header == "seconds":
        return "86400"
    return email.utils.formatdate(time.time() + 86_400, usegmt=True)


@pytest.mark.virtual_clock
@pytest.mark.parametrize("header", ["seconds", "http-date"])
async def test_a_day_long_pause_fails_later_lookups_at_once(header: str) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("first", Fault.rate_limited(retry_after=a_day_ahead(header)), times=1)
    async with fake.client() as client:
        with pytest.raises(RateLimitError):
            await client.get_call("first")
        start = anyio.current_time()
        results = await client.get_calls([f"s{i}" for i in range(100)])
        assert anyio.current_time() == start
    assert fake.request_count == 1
    for result in results:
        error = result.error
        assert isinstance(error, RateLimitError)
        assert error.http_status == 429
        assert error.call_sid == result.call_sid
        assert error.attempts == 0
        assert error.retry_after is not None
        assert 86_390 < error.retry_after <= 86_400


@pytest.mark.virtual_clock
async def test_a_pause_past_the_deadline_fails_a_new_lookup_at_once() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("first", Fault.rate_limited(retry_after=30), times=1)
    async with fake.client(retry=RetryPolicy(timeout=5)) as client:
        with pytest.raises(RateLimitError):
            await client.get_call("first")
        start = anyio.current_time()
        with pytest.raises(RateLimitError) as info:
            await client.get_call("next")
        assert anyio.current_time() == start
    assert info.value.retry_after == 30
    assert info.value.attempts == 0
    assert info.value.call_sid == "next"
    assert fake.requests_for("next") == 0


@pytest.mark.virtual_clock
async def test_a_retry_never_waits_for_a_permit_past_its_deadline() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("retried", Fault.server_error(), times=1)
    limit = RateLimit(requests=2, per=60)
    async with fake.client(rate_limit=limit, retry=RetryPolicy(timeout=5)) as client:
        await client.get_call("first")
        start = anyio.current_time()
        with pytest.raises(RequestTimeoutError) as info:
            await client.get_call("retried")  # its retry finds the window full
        assert anyio.current_time() - start == pytest.approx(5)
        assert info.value.deadline_exceeded
        assert info.value.attempts == 1
        # A first attempt queues for its permit (the client's own bound), as for a slot.
        start = anyio.current_time()
        assert (await client.get_call("queued")).call_sid == "queued"
        assert anyio.current_time() - start == pytest.approx(55, abs=0.5)
    assert fake.requests_for("retried") == 1


@pytest.mark.virtual_clock
async def test_a_pause_holds_back_lookups_already_holding_a_slot() -> None:
    fake = FakeCcm(generate=True, latency=0.1)
    fake.fail("first", Fault.rate_limited(retry_after=2), times=1)
    sids = ["first", *(f"s{i}" for i in range(9))]
    # One slot, ten lookups: each gets the slot while the pause runs.
    async with fake.client(max_concurrency=1) as client:
        results = await client.get_calls(sids, concurrency=10)
    assert all(result.ok for result in results)
    rejected, *later = fake.requests
    assert rejected.status == 429
    assert len(later) == 10
    pause_end = rejected.time + 0.1 + 2.0  # the 429 was answered 0.1 s after it arrived
    assert min(request.time for request in later) == pytest.approx(pause_end)


async def test_logs_each_attempt_and_each_retry(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCcm(generate=True)
    fake.fail("s1", Fault.server_error(), times=1)
    caplog.set_level(logging.DEBUG, logger="ccm_async")
    async with fake.client() as client:
        with instant_backoff():
            await client.get_call("s1")
        stats = client.stats
    attempts = [r for r in caplog.records if r.levelno == logging.DEBUG]
    retries = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [(r.call_sid, r.attempt, r.status) for r in attempts] == [  # type: ignore[attr-defined]
        ("s1", 1, 500),
        ("s1", 2, 200),
    ]
    assert len(retries) == 1
    assert "ServerError" in retries[0].getMessage()
    assert stats.requests == 2
    assert stats.retries == 1
    assert dict(stats.responses) == {500: 1, 200: 1}
    with pytest.raises(TypeError):
        stats.responses[200] = 5  # type: ignore[index]


async def test_timeouts_default_and_override() -> None:
    async with AsyncCcmClient(api_key="k", api_token="t", account_sid="a") as client:
        assert client.timeout == DEFAULT_TIMEOUT
        assert client.timeout.connect == 5.0
    async with AsyncCcmClient(api_key="k", api_token="t", account_sid="a", timeout=2.5) as client:
        assert client.timeout == httpx.Timeout(2.5)


def test_transport_error_is_retryable_class() -> None:
    from ccm_async._retry import is_retryable

    assert is_retryable(TransportError("x"))
    deadline = RequestTimeoutError("x")
    deadline.deadline_exceeded = True
    assert not is_retryable(deadline)
    assert not is_retryable(asyncio.CancelledError())


def _failed_state(lookup: object, error: BaseException) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(tenacity.AsyncRetrying(), None, (lookup,), {})
    state.set_exception((type(error), error, None))
    return state


@pytest.mark.parametrize("order", ["stop-first", "wait-first"])
@pytest.mark.parametrize(
    ("error", "policy", "budget_left", "expected"),
    [
        pytest.param(
            RateLimitError("x", ErrorAnswer(http_status=429, retry_after=2.0)),
            {},
            500,
            2.0,
            id="retry-after",
        ),
        pytest.param(
            RateLimitError("x", ErrorAnswer(http_status=429, retry_after=90.0)),
            {},
            500,
            None,
            id="too-long",
        ),
        pytest.param(
            ServerError("x", ErrorAnswer(http_status=500)),
            {"attempts": 1},
            500,
            None,
            id="no-attempts-left",
        ),
        pytest.param(
            ServerError("x", ErrorAnswer(http_status=500)), {}, 100, None, id="budget-denies"
        ),
        pytest.param(
            ServerError("x", ErrorAnswer(http_status=500)), {}, 500, "backoff", id="backoff"
        ),
    ],
)
async def test_retry_decisions_do_not_depend_on_tenacitys_call_order(
    order: str, error: BaseException, policy: dict[str, Any], budget_left: float, expected: object
) -> None:
    from ccm_async._retry import Deadline, Lookup, RetryBudget
    from ccm_async._telemetry import LookupTrace

    budget = RetryBudget(500, 0.1)
    for _ in range(int(500 - budget_left)):
        budget.record_failure()
    denials: list[None] = []
    lookup = Lookup(
        "abc",
        RetryPolicy(**policy),
        budget,
        lambda: denials.append(None),
        LookupTrace(),
        callers=Deadline(),
    )
    lookup.start()
    lookup.attempts = 1
    state = _failed_state(lookup, error)
    if order == "stop-first":
        stopped, waited = lookup.stop(state), lookup.wait(state)
    else:
        waited, stopped = lookup.wait(state), lookup.stop(state)
    # Asked again (as tenacity may), in the other order: the same answers.
    assert (lookup.wait(state), lookup.stop(state)) == (waited, stopped)
    assert stopped is (expected is None)
    if expected is None:
        assert waited == 0.0
    elif expected == "backoff":
        assert 0.0 <= waited <= RetryPolicy().wait_initial
    else:
        assert waited == expected
    assert len(denials) == (1 if budget_left <= 250 else 0)  # counted once, however asked
