"""get_call(timeout=...): one lookup's deadline, from the moment it is called."""

from __future__ import annotations

import math

import anyio
import pytest

from ccm_async import (
    AsyncCcmClient,
    CallDetails,
    ConfigurationError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)
from ccm_async.testing import FakeCcm, Fault

from .conftest import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]


async def test_a_slow_answer_fails_at_the_deadline_not_after() -> None:
    fake = FakeCcm(generate=True, latency=5.0)
    async with fake.client() as client:
        started = anyio.current_time()
        with pytest.raises(RequestTimeoutError, match=r"timeout of 1\.5s") as caught:
            await client.get_call("slow", timeout=1.5)
        assert anyio.current_time() - started == pytest.approx(1.5, abs=0.01)
        assert caught.value.deadline_exceeded
        assert caught.value.call_sid == "slow"
        await wait_until(lambda: fake.in_flight == 0)  # nobody else wanted it: cancelled


async def test_a_pause_longer_than_the_time_left_fails_at_once() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("first", Fault.rate_limited(retry_after=10), times=1)
    async with fake.client() as client:
        with pytest.raises(RateLimitError):
            await client.get_call("first", timeout=5)  # Retry-After 10 > 5 s left
        paused_at = anyio.current_time()
        with pytest.raises(RateLimitError) as caught:
            await client.get_call("second", timeout=2)
        assert anyio.current_time() == paused_at  # not a moment waited
        assert caught.value.retry_after == pytest.approx(10, abs=0.01)
        assert fake.requests_for("second") == 0
        # With time enough, the pause is waited out and the lookup goes ahead.
        call = await client.get_call("second", timeout=11)
        assert call.call_sid == "second"
        assert anyio.current_time() - paused_at == pytest.approx(10, abs=0.01)


async def test_queueing_for_a_slot_counts() -> None:
    fake = FakeCcm(generate=True, latency=5.0)
    async with fake.client(max_concurrency=1) as client, anyio.create_task_group() as group:
        group.start_soon(client.get_call, "holds-the-slot")
        await wait_until(lambda: fake.in_flight == 1)
        started = anyio.current_time()
        with pytest.raises(RequestTimeoutError, match="timeout"):
            await client.get_call("queued", timeout=1)
        assert anyio.current_time() - started == pytest.approx(1, abs=0.01)
    assert fake.requests_for("queued") == 0


async def test_a_retry_after_past_the_deadline_is_not_waited() -> None:
    fake = FakeCcm(generate=True, latency=0.1)
    fake.fail("limited", Fault.server_error(http_status=503, retry_after=3), times=1)
    async with fake.client() as client:
        started = anyio.current_time()
        with pytest.raises(ServerError) as caught:
            await client.get_call("limited", timeout=2)
        assert anyio.current_time() - started == pytest.approx(0.1, abs=0.01)
        assert caught.value.http_status == 503
        assert caught.value.retry_after == 3
        assert caught.value.attempts == 1


async def lookups_of_one_sid_with_a_short_timeout(
    client: AsyncCcmClient, fake: FakeCcm, *, impatient_first: bool
) -> tuple[list[CallDetails], list[float]]:
    """A lookup without a timeout and one with 0.5 s share a request taking 2 s."""
    got: list[CallDetails] = []
    gave_up: list[float] = []
    started = anyio.current_time()

    async def patient() -> None:
        got.append(await client.get_call("hot"))

    async def impatient() -> None:
        try:
            await client.get_call("hot", timeout=0.5)
        except RequestTimeoutError:
            gave_up.append(anyio.current_time() - started)

    first, second = (impatient, patient) if impatient_first else (patient, impatient)
    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await wait_until(lambda: fake.in_flight == 1)
        group.start_soon(second)
    return got, gave_up


@pytest.mark.parametrize("impatient_first", [True, False], ids=["impatient-first", "patient-first"])
async def test_a_short_timeout_never_fails_those_sharing_the_request(
    impatient_first: bool,
) -> None:
    fake = FakeCcm(generate=True, latency=2.0)
    async with fake.client() as client:
        got, gave_up = await lookups_of_one_sid_with_a_short_timeout(
            client, fake, impatient_first=impatient_first
        )
    assert [call.call_sid for call in got] == ["hot"]
    assert gave_up == [pytest.approx(0.5, abs=0.01)]
    assert fake.requests_for("hot") == 1  # the shared request went on


async def test_without_async_with_a_waiter_takes_over_from_an_impatient_first_caller() -> None:
    fake = FakeCcm(generate=True, latency=2.0)
    client = fake.client()
    try:
        got, gave_up = await lookups_of_one_sid_with_a_short_timeout(
            client, fake, impatient_first=True
        )
    finally:
        await client.aclose()
    assert [call.call_sid for call in got] == ["hot"]
    assert gave_up == [pytest.approx(0.5, abs=0.01)]
    # The first caller's task ran the request and stopped at its deadline: the
    # other caller sent its own.
    assert fake.requests_for("hot") == 2


@pytest.mark.parametrize("batch", ["get_calls", "stream_calls"])
async def test_bulk_lookups_take_a_timeout_each(batch: str) -> None:
    fake = FakeCcm(generate=True, latency=0.2)
    fake.fail("stuck", Fault.hang())
    sids = [f"s{i}" for i in range(20)] + ["stuck"]
    async with fake.client(max_concurrency=4) as client:
        started = anyio.current_time()
        if batch == "get_calls":
            results = await client.get_calls(sids, timeout=1.0)
        else:
            async with client.stream_calls(sids, timeout=1.0) as stream:
                results = [result async for result in stream]
        elapsed = anyio.current_time() - started
    by_sid = {result.call_sid: result for result in results}
    assert isinstance(by_sid["stuck"].error, RequestTimeoutError)
    assert all(by_sid[sid].ok for sid in sids[:-1])
    # Each lookup's deadline runs from its own start, not the batch's.
    assert elapsed > 1.0


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, 3601, True, "1", [1]])
async def test_a_bad_timeout_is_a_configuration_error_before_any_request(timeout: object) -> None:
    fake = FakeCcm(generate=True)
    async with fake.client() as client:
        with pytest.raises(ConfigurationError, match="timeout must be"):
            await client.get_call("a", timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="timeout must be"):
            await client.get_calls(["a"], timeout=timeout)  # type: ignore[call-overload]
        with pytest.raises(ConfigurationError, match="timeout must be"):
            client.stream_calls(["a"], timeout=timeout)  # type: ignore[call-overload]
    assert fake.request_count == 0


async def sharers_of_a_rate_limited_request(
    client: AsyncCcmClient, fake: FakeCcm, *, join_during_the_pause: bool
) -> tuple[CallDetails, RateLimitError, float]:
    """A patient lookup of a SID whose first answer (after 0.5 s) is a 429 with
    Retry-After 5, and one with a 2 s timeout sharing it: joining before the 429
    comes, or during the wait it starts."""
    fake.fail("hot", Fault.rate_limited(retry_after=5), times=1)
    got: list[CallDetails] = []
    failed: list[tuple[RateLimitError, float]] = []

    async def patient() -> None:
        got.append(await client.get_call("hot"))

    async def impatient() -> None:
        joined = anyio.current_time()
        try:
            await client.get_call("hot", timeout=2)
        except RateLimitError as exc:
            failed.append((exc, anyio.current_time() - joined))

    async with anyio.create_task_group() as group:
        group.start_soon(patient)
        await wait_until(lambda: fake.in_flight == 1)
        if join_during_the_pause:
            await wait_until(lambda: fake.requests_for("hot") == 1 and fake.in_flight == 0)
            await anyio.sleep(1)
        group.start_soon(impatient)
    [call] = got
    [(error, waited)] = failed
    return call, error, waited


@pytest.mark.parametrize("entered", [True, False], ids=["async-with", "module-level"])
@pytest.mark.parametrize("join_during_the_pause", [False, True], ids=["before", "during"])
async def test_a_sharer_the_wait_would_outlast_fails_at_once_with_its_cause(
    entered: bool, join_during_the_pause: bool
) -> None:
    fake = FakeCcm(generate=True, latency=0.5)
    client = fake.client()
    try:
        if entered:
            async with client:
                call, error, waited = await sharers_of_a_rate_limited_request(
                    client, fake, join_during_the_pause=join_during_the_pause
                )
        else:
            call, error, waited = await sharers_of_a_rate_limited_request(
                client, fake, join_during_the_pause=join_during_the_pause
            )
    finally:
        await client.aclose()
    assert call.call_sid == "hot"
    # Failed when the 5 s wait began (as the 429 came, or as it joined it), not at 2 s.
    assert waited == pytest.approx(0 if join_during_the_pause else 0.5, abs=0.01)
    assert error.retry_after == 5
    assert error.call_sid == "hot"
    assert error.attempts == 1
    assert fake.requests_for("hot") == 2  # the patient lookup's retry, shared by nobody else


async def test_a_pause_that_would_end_just_at_the_deadline_is_not_waited() -> None:
    fake = FakeCcm(generate=True)
    fake.fail("first", Fault.rate_limited(retry_after=10), times=1)
    async with fake.client() as client:
        with pytest.raises(RateLimitError):
            await client.get_call("first", timeout=5)
        paused_at = anyio.current_time()
        with pytest.raises(RateLimitError) as caught:
            await client.get_call("second", timeout=10)  # no time left to send after it
        assert anyio.current_time() == paused_at
        assert caught.value.retry_after == pytest.approx(10, abs=0.01)
    assert fake.requests_for("second") == 0


async def test_a_client_not_entered_says_once_that_a_shared_request_may_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeCcm(generate=True, latency=1.0)

    async def concurrent_lookups(client: AsyncCcmClient, sid: str) -> None:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(client.get_call, sid)

    def warnings() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if "send the request again" in r.getMessage()
        ]

    module_level = fake.client()
    try:
        await module_level.get_call("alone")
        assert warnings() == []  # nothing shared, nothing to say
        await concurrent_lookups(module_level, "hot")
        await concurrent_lookups(module_level, "warm")
    finally:
        await module_level.aclose()
    [warning] = warnings()
    assert "async with" in warning
    async with fake.client() as entered:
        await concurrent_lookups(entered, "cool")
    assert len(warnings()) == 1
    assert fake.requests_for("hot") == fake.requests_for("cool") == 1


async def test_a_first_caller_let_go_by_a_pause_hands_the_lookup_over_to_the_patient() -> None:
    # Not entered: the impatient first caller runs the request in its own task.
    fake = FakeCcm(generate=True, latency=0.5)
    fake.fail("hot", Fault.rate_limited(retry_after=5), times=1)
    client = fake.client()
    got: list[CallDetails] = []
    failed: list[float] = []

    async def impatient() -> None:
        with pytest.raises(RateLimitError) as caught:
            await client.get_call("hot", timeout=2)
        assert caught.value.retry_after == 5
        failed.append(anyio.current_time())

    async def patient() -> None:
        got.append(await client.get_call("hot"))

    try:
        started = anyio.current_time()
        async with anyio.create_task_group() as group:
            group.start_soon(impatient)
            await wait_until(lambda: fake.in_flight == 1)
            group.start_soon(patient)
    finally:
        await client.aclose()
    assert [moment - started for moment in failed] == [pytest.approx(0.5, abs=0.01)]
    assert [call.call_sid for call in got] == ["hot"]
    # The patient caller's own lookup waited out the client's pause, then sent.
    assert anyio.current_time() - started == pytest.approx(6.0, abs=0.05)
    assert fake.requests_for("hot") == 2
