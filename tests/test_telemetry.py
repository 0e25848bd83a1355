"""Traces and metrics through OpenTelemetry: what a lookup reports, and what never leaves."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, StatusCode

import ccm_async._otel
import ccm_async._telemetry
from ccm_async import (
    AsyncCcmClient,
    CallNotFoundError,
    ConfigurationError,
    RateLimit,
    RetryPolicy,
    ServerError,
    TransportError,
)
from ccm_async.testing import FakeCcm, Fault
from tests.conftest import SAMPLE_SID, stand_in_client, wait_until
from tests.otel_support import Telemetry, recording
from tests.test_security import assert_no_secret, echoing_client

pytestmark = pytest.mark.anyio

OTHER_SID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    with recording() as recorded:
        yield recorded


def _counts(points: list[tuple[dict[str, Any], Any]], key: str) -> dict[Any, Any]:
    return {attributes.get(key): value for attributes, value in points}


@pytest.mark.virtual_clock
async def test_a_retried_lookup_is_traced_as_it_happened(
    fake: FakeCcm, telemetry: Telemetry
) -> None:
    fake.generate = True
    fake.fail(SAMPLE_SID, Fault.server_error(), times=1)
    fake.fail(SAMPLE_SID, Fault.rate_limited(retry_after=2), times=1)
    async with fake.client() as client, anyio.create_task_group() as group:
        group.start_soon(client.get_call, SAMPLE_SID)
        await wait_until(lambda: fake.request_count == 2)  # the 429: the pause begins
        await client.get_call(OTHER_SID)  # waits the pause out

    lookups = {span.attributes["ccm.call_sid"]: span for span in telemetry.lookups()}  # type: ignore[index]
    retried, paused = lookups[SAMPLE_SID], lookups[OTHER_SID]
    assert retried.kind is SpanKind.INTERNAL
    assert dict(retried.attributes or {}) == {
        "ccm.account_sid": fake.account_sid,
        "ccm.call_sid": SAMPLE_SID,
        "ccm.attempts": 3,
        "ccm.outcome": "ok",
    }
    assert retried.status.status_code is StatusCode.UNSET
    backoffs = [dict(event.attributes or {}) for event in retried.events]
    assert [event.name for event in retried.events] == ["ccm.backoff", "ccm.backoff"]
    assert backoffs[0]["ccm.backoff.reason"] == "ServerError"
    assert 0 < backoffs[0]["ccm.wait.seconds"] <= RetryPolicy().wait_initial  # type: ignore[operator]
    assert backoffs[1] == {"ccm.wait.seconds": 2.0, "ccm.backoff.reason": "RateLimitError"}

    [pause] = paused.events
    assert pause.name == "ccm.rate_limit.pause"
    assert 0 < pause.attributes["ccm.wait.seconds"] <= 2.0  # type: ignore[index, operator]
    assert paused.attributes["ccm.attempts"] == 1  # type: ignore[index]

    requests = [span for span in telemetry.requests() if span.parent == retried.context]
    url = f"http://127.0.0.1/v2/accounts/{fake.account_sid}/calls/{SAMPLE_SID}"
    assert [dict(span.attributes or {}) for span in requests] == [
        {
            "http.request.method": "GET",
            "server.address": "127.0.0.1",
            "server.port": 80,
            "url.full": url,
            **resend,
            "http.response.status_code": status,
            **error,
        }
        for status, resend, error in [
            (500, {}, {"error.type": "500"}),
            (429, {"http.request.resend_count": 1}, {"error.type": "429"}),
            (200, {"http.request.resend_count": 2}, {}),
        ]
    ]
    assert all(span.kind is SpanKind.CLIENT for span in requests)
    assert [span.status.status_code for span in requests] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert all(span.context.trace_id == retried.context.trace_id for span in requests)

    points = telemetry.points()
    durations = _counts(points["http.client.request.duration"], "http.response.status_code")
    assert {status: count for status, (count, _) in durations.items()} == {500: 1, 429: 1, 200: 2}
    assert _counts(points["ccm_async.lookups"], "ccm.outcome") == {"ok": 2}
    assert _counts(points["ccm_async.retries"], "") == {None: 2}
    [(reason, (waits, waited))] = _counts(
        points["ccm_async.rate_limit.wait"], "ccm.wait.reason"
    ).items()
    assert (reason, waits) == ("pause", 1)
    assert waited == pause.attributes["ccm.wait.seconds"]  # type: ignore[index]
    assert _counts(points["ccm_async.in_flight"], "server.address") == {"127.0.0.1": 0}
    assert "ccm_async.budget_denials" not in points


@pytest.mark.virtual_clock
async def test_a_wait_for_a_permit_is_an_event_and_a_measure(
    fake: FakeCcm, telemetry: Telemetry
) -> None:
    fake.generate = True
    async with fake.client(rate_limit=RateLimit(requests=1, per=1.0)) as client:
        await client.get_call(SAMPLE_SID)
        await client.get_call(OTHER_SID)
    first, second = telemetry.lookups()
    assert first.events == ()
    [wait] = second.events
    assert wait.name == "ccm.rate_limit.wait"
    waited = dict(wait.attributes or {})
    assert waited == {"ccm.wait.seconds": pytest.approx(1.0, abs=0.05)}
    [(attributes, (count, seconds))] = telemetry.points()["ccm_async.rate_limit.wait"]
    assert (attributes, count, seconds) == (
        {"ccm.wait.reason": "permit"},
        1,
        waited["ccm.wait.seconds"],
    )


async def test_fifty_callers_of_one_sid_make_fifty_lookups_and_one_request(
    fake: FakeCcm, telemetry: Telemetry
) -> None:
    fake.latency = 0.05
    async with fake.client() as client, anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(client.get_call, SAMPLE_SID)
    lookups = telemetry.lookups()
    [request] = telemetry.requests()
    assert len(lookups) == 50
    [owner] = [span for span in lookups if "ccm.shared" not in (span.attributes or {})]
    assert owner.attributes["ccm.attempts"] == 1  # type: ignore[index]
    assert request.parent == owner.context
    for span in lookups:
        if span is not owner:
            assert span.attributes["ccm.shared"] is True  # type: ignore[index]
            assert span.attributes["ccm.attempts"] == 0  # type: ignore[index]
        assert span.attributes["ccm.outcome"] == "ok"  # type: ignore[index]
    points = telemetry.points()
    assert _counts(points["ccm_async.lookups"], "ccm.outcome") == {"ok": 50}
    assert [count for _, (count, _) in points["http.client.request.duration"]] == [1]


async def test_a_cache_hit_is_a_lookup_with_no_request(fake: FakeCcm, telemetry: Telemetry) -> None:
    async with fake.client(cache_size=10) as client:
        await client.get_call(SAMPLE_SID)
        await client.get_call(SAMPLE_SID)
    fetched, cached = telemetry.lookups()
    assert "ccm.cache_hit" not in (fetched.attributes or {})
    assert cached.attributes["ccm.cache_hit"] is True  # type: ignore[index]
    assert cached.attributes["ccm.attempts"] == 0  # type: ignore[index]
    assert len(telemetry.requests()) == 1


async def test_failed_lookups_name_their_outcome(fake: FakeCcm, telemetry: Telemetry) -> None:
    fake.fail(OTHER_SID, Fault.server_error())
    async with fake.client(retry=RetryPolicy(attempts=2, wait_initial=0.001)) as client:
        with pytest.raises(CallNotFoundError):
            await client.get_call("0" * 32)
        with pytest.raises(ServerError) as failed:
            await client.get_call(OTHER_SID)
    missing, broken = telemetry.lookups()
    assert missing.attributes["ccm.outcome"] == "not_found"  # type: ignore[index]
    assert missing.status.status_code is StatusCode.ERROR
    assert broken.attributes["ccm.outcome"] == "ServerError"  # type: ignore[index]
    assert broken.attributes["ccm.attempts"] == 2  # type: ignore[index]
    assert broken.status.description == str(failed.value)
    assert [span.attributes["error.type"] for span in telemetry.requests()] == ["404", "500", "500"]  # type: ignore[index]
    outcomes = _counts(telemetry.points()["ccm_async.lookups"], "ccm.outcome")
    assert outcomes == {"not_found": 1, "ServerError": 1}


async def test_an_invalid_sid_is_a_lookup_without_a_sid(
    client: AsyncCcmClient, telemetry: Telemetry
) -> None:
    with pytest.raises(ValueError, match="call SID"):
        await client.get_call("not a sid")
    [span] = telemetry.lookups()
    assert "ccm.call_sid" not in (span.attributes or {})
    assert span.attributes["ccm.outcome"] == "InvalidCallSidError"  # type: ignore[index]
    assert telemetry.requests() == []


@pytest.mark.virtual_clock
async def test_a_budget_denial_is_counted(fake: FakeCcm, telemetry: Telemetry) -> None:
    fake.fail(SAMPLE_SID, Fault.server_error())
    async with fake.client(retry=RetryPolicy(budget_tokens=2.0)) as client:
        with pytest.raises(ServerError):
            await client.get_call(SAMPLE_SID)
        denials = client.stats.budget_denials
    assert denials == 1
    assert telemetry.points()["ccm_async.budget_denials"] == [({}, denials)]


@pytest.mark.virtual_clock
async def test_a_cancelled_lookup_is_counted_with_its_request_in_flight(
    fake: FakeCcm, telemetry: Telemetry
) -> None:
    fake.fail(SAMPLE_SID, Fault.hang())
    async with fake.client(retry=None) as client:
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(client.get_call, SAMPLE_SID)
                await wait_until(lambda: fake.request_count == 1)
                in_flight = telemetry.points()["ccm_async.in_flight"]
                group.cancel_scope.cancel()
    assert in_flight == [({"server.address": "127.0.0.1", "server.port": 80}, 1)]
    [lookup] = telemetry.lookups()
    [request] = telemetry.requests()
    assert lookup.attributes["ccm.outcome"] == "cancelled"  # type: ignore[index]
    assert request.attributes["error.type"] == "cancelled"  # type: ignore[index]
    assert "http.response.status_code" not in (request.attributes or {})
    assert _counts(telemetry.points()["ccm_async.in_flight"], "server.address") == {"127.0.0.1": -1}


async def test_a_transport_failure_is_the_request_s_error_type(telemetry: Telemetry) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with stand_in_client(httpx.MockTransport(refuse), retry=None) as client:
        with pytest.raises(TransportError):
            await client.get_call(SAMPLE_SID)
    [request] = telemetry.requests()
    assert request.attributes["error.type"] == "TransportError"  # type: ignore[index]
    assert request.status.status_code is StatusCode.ERROR
    durations = telemetry.points()["http.client.request.duration"]
    assert [attributes["error.type"] for attributes, _ in durations] == ["TransportError"]


async def test_a_lookup_is_a_child_of_its_caller_s_span(
    client: AsyncCcmClient, telemetry: Telemetry
) -> None:
    with trace.get_tracer("test").start_as_current_span("handler") as handler:
        await client.get_call(SAMPLE_SID)
        assert trace.get_current_span() is handler
    [lookup] = telemetry.lookups()
    [request] = telemetry.requests()
    assert lookup.parent == handler.get_span_context()
    assert request.parent == lookup.context


@pytest.mark.virtual_clock
async def test_a_broken_span_processor_never_fails_a_lookup(
    fake: FakeCcm,
    telemetry: Telemetry,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ccm_async._otel, "_warned", False)
    fake.generate = True
    fake.fail(SAMPLE_SID, Fault.server_error(), times=1)
    fake.fail("0" * 32, Fault.not_found())
    async with fake.client() as client:
        with trace.get_tracer("test").start_as_current_span("handler") as handler:
            telemetry.recorded.broken = True  # raises as every span starts and ends
            call = await client.get_call(SAMPLE_SID)
            [result] = await client.get_calls([OTHER_SID])
            with pytest.raises(CallNotFoundError):
                await client.get_call("0" * 32)
            assert trace.get_current_span() is handler
            telemetry.recorded.broken = False
    assert call.call_sid == SAMPLE_SID
    assert result.ok
    warnings = [record for record in caplog.records if "telemetry failed" in record.message]
    assert len(warnings) == 1


@pytest.mark.parametrize("how", ["get_calls", "stream_calls"])
async def test_a_batch_s_lookups_start_traces_linked_to_the_caller(
    fake: FakeCcm, telemetry: Telemetry, how: str
) -> None:
    fake.generate = True
    sids = [f"{index:032x}" for index in range(5)]
    async with fake.client() as client:
        with trace.get_tracer("test").start_as_current_span("job") as job:
            if how == "get_calls":
                await client.get_calls(sids)
            else:
                async with client.stream_calls(sids) as results:
                    assert len([result async for result in results]) == 5
        lookups = telemetry.lookups()
        await client.get_calls(sids[:1])  # no caller span: a trace of its own, no link
    job_context = job.get_span_context()
    assert len(lookups) == 5
    assert len({span.context.trace_id for span in lookups}) == 5
    for span in lookups:
        assert span.parent is None
        assert span.context.trace_id != job_context.trace_id
        assert [link.context for link in span.links] == [job_context]
    for request in telemetry.requests():
        assert request.parent in [span.context for span in telemetry.lookups()]
    unlinked = telemetry.lookups()[-1]
    assert (unlinked.parent, unlinked.links) == (None, ())


async def test_no_span_or_metric_holds_the_credentials(telemetry: Telemetry) -> None:
    async with echoing_client() as client:
        results = await client.get_calls(["s", "t", "u"])
    assert all(result.error for result in results)
    assert len(telemetry.requests()) == 3
    descriptions = [span.status.description or "" for span in telemetry.lookups()]
    assert all("[redacted]" in text for text in descriptions)  # the messages, not their quotes
    assert_no_secret([telemetry.dumped()])


async def test_telemetry_false_records_nothing(fake: FakeCcm, telemetry: Telemetry) -> None:
    async with fake.client(telemetry=False) as client:
        await client.get_call(SAMPLE_SID)
    assert telemetry.spans == []
    assert "ccm_async.lookups" not in telemetry.points()


def test_telemetry_must_be_true_or_false(fake: FakeCcm) -> None:
    with pytest.raises(ConfigurationError, match="telemetry must be True or False"):
        fake.client(telemetry="yes")


_WITHOUT_THE_EXTRA = """
import importlib.abc, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if BLOCK:
    sys.meta_path.insert(0, NoOpenTelemetry())

import anyio
from ccm_async.testing import FakeCcm

async def main():
    fake = FakeCcm(generate=True)
    async with fake.client(**OPTIONS) as client:
        call = await client.get_call("a" * 32)
    print(call.call_sid, any(name.startswith("opentelemetry") for name in sys.modules))

anyio.run(main)
"""


@pytest.mark.parametrize(
    ("block", "options"),
    [(True, {}), (False, {"telemetry": False})],
    ids=["extra-missing", "telemetry-off"],
)
def test_without_the_extra_or_turned_off_nothing_is_imported(
    block: bool, options: dict[str, Any]
) -> None:
    script = f"BLOCK = {block}\nOPTIONS = {options!r}\n" + textwrap.dedent(_WITHOUT_THE_EXTRA)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["a" * 32, "False"]


def test_a_broken_install_is_not_taken_for_a_missing_extra(
    fake: FakeCcm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ccm_async._otel", None)
    with pytest.raises(ModuleNotFoundError, match=r"ccm_async\._otel"):
        fake.client()


def test_an_api_too_old_for_the_instruments_leaves_telemetry_off(
    fake: FakeCcm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def old_meter(*args: object, **kwargs: object) -> object:
        raise TypeError("create_histogram() got an unexpected keyword argument")

    monkeypatch.setattr(metrics, "get_meter", old_meter)
    client = fake.client()
    assert type(client._setup.telemetry) is ccm_async._telemetry.Telemetry  # the silent one
    assert "telemetry is off" in caplog.text


async def test_a_batch_under_an_unsampled_trace_records_nothing(
    fake: FakeCcm, telemetry: Telemetry
) -> None:
    fake.generate = True
    unsampled = trace.SpanContext(
        trace_id=0x1234, span_id=0x5678, is_remote=False, trace_flags=trace.TraceFlags(0)
    )
    async with fake.client() as client:
        with trace.use_span(trace.NonRecordingSpan(unsampled)):
            results = await client.get_calls([SAMPLE_SID, OTHER_SID])
    assert all(result.ok for result in results)
    assert telemetry.spans == []  # the application's sampling decision holds
    assert _counts(telemetry.points()["ccm_async.lookups"], "ccm.outcome") == {"ok": 2}


@pytest.mark.virtual_clock
async def test_a_shared_request_outliving_its_first_caller_records_no_event_on_an_ended_span(
    fake: FakeCcm, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    fake.latency = 1.0
    fake.fail(SAMPLE_SID, Fault.server_error(), times=2)
    async with fake.client() as client, anyio.create_task_group() as group:
        first = anyio.CancelScope()

        async def first_caller() -> None:
            with first:
                await client.get_call(SAMPLE_SID)

        group.start_soon(first_caller)
        await wait_until(lambda: fake.request_count == 1)
        async with anyio.create_task_group() as others:
            others.start_soon(client.get_call, SAMPLE_SID)
            await anyio.sleep(0.1)
            first.cancel()
    assert fake.requests_for(SAMPLE_SID) == 3
    owner, joined = sorted(telemetry.lookups(), key=lambda span: span.start_time or 0)
    assert owner.attributes["ccm.outcome"] == "cancelled"  # type: ignore[index]
    assert joined.attributes["ccm.outcome"] == "ok"  # type: ignore[index]
    assert joined.attributes["ccm.shared"] is True  # type: ignore[index]
    assert all(span.parent == owner.context for span in telemetry.requests())
    assert "ended span" not in caplog.text
