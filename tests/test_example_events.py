"""The event receiver of examples/fastapi_app.py: ``POST /exotel/events?key=...``.

Over real HTTP (uvicorn on 127.0.0.1, FakeCcm posting as Exotel would), and
in-process on a virtual clock for what takes time: the fallback to polling when a
call's terminal event is late.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import httpx
import pytest

from ccm_async import CallDetails, CallState, CallStatus, parse_call_event
from ccm_async.testing import FakeCcm, Fault
from ccm_async.testing._fake import serve_asgi
from examples.fastapi_app import MAX_EVENT_BODY, CallWatch, create_app, hide_key

from .conftest import SAMPLE_SID, wait_until
from .test_example_app import assert_problem, environment

pytestmark = pytest.mark.anyio

KEY = "s3cret-events-key"
ACTIVE_SID = "b1a2c3d4e5f60718293a4b5c6d7e8f90"


class Ended:
    """An ``on_ended`` that keeps what it is given, from any thread."""

    def __init__(self) -> None:
        self.calls: list[CallDetails] = []

    async def __call__(self, call: CallDetails) -> None:
        self.calls.append(call)

    @property
    def sids(self) -> list[str | None]:
        return [call.call_sid for call in self.calls]


def active_call(call_sid: str = ACTIVE_SID) -> CallDetails:
    return CallDetails(call_sid=call_sid, call_state=CallState.ACTIVE)


def ended_call(call_sid: str = ACTIVE_SID) -> CallDetails:
    return CallDetails(
        call_sid=call_sid, call_state=CallState.TERMINAL, call_status=CallStatus.COMPLETED
    )


@asynccontextmanager
async def served_receiver(fake: FakeCcm, *, key: str = KEY, **options: Any) -> AsyncIterator[str]:
    """The example app on a socket in front of ``fake`` (on one too); yields its
    events URL with ``key``."""
    async with fake.serve() as api_url:
        environ = {**environment(fake, api_url), "CCM_EVENTS_KEY": KEY}
        app = create_app(environ, **options)
        async with serve_asgi(app, lifespan=True, name="app") as app_url:
            yield f"{app_url}/exotel/events?key={key}"


# -- over HTTP ------------------------------------------------------------------------


async def test_a_terminal_event_is_answered_200_and_ends_the_call_once(fake: FakeCcm) -> None:
    fake.add_call(ended_call())
    ended = Ended()
    async with served_receiver(fake, on_ended=ended) as url:
        for _ in range(3):  # Exotel sends a callback again when it thinks one failed
            response = await fake.post_call_event(url, SAMPLE_SID, event_type="terminal")
            assert response.status_code == 200
        # An event handled after those (it needs a lookup): they were handled by then.
        await fake.post_status_callback(url, ACTIVE_SID)
        await wait_until(lambda: len(ended.calls) == 2)
    assert fake.requests_for(SAMPLE_SID) == 0
    async with fake.client() as ccm:
        assert ended.calls == [await ccm.get_call(SAMPLE_SID), ended_call()]


@pytest.mark.parametrize("form", [True, False], ids=["form", "json"])
@pytest.mark.parametrize("event_type", ["terminal", None], ids=["event", "plain"])
async def test_a_v1_status_callback_ends_the_call_with_its_looked_up_details(
    fake: FakeCcm, form: bool, event_type: str | None
) -> None:
    ended = Ended()
    async with served_receiver(fake, on_ended=ended) as url:
        response = await fake.post_status_callback(
            url, SAMPLE_SID, event_type=event_type, form=form
        )
        assert response.status_code == 200
        await wait_until(lambda: bool(ended.calls))
    assert ended.sids == [SAMPLE_SID]
    assert fake.requests_for(SAMPLE_SID) == 1


async def test_an_answered_event_without_its_terminal_one_falls_back_to_polling(
    fake: FakeCcm,
) -> None:
    fake.add_call(ended_call())
    ended = Ended()
    async with served_receiver(fake, on_ended=ended, terminal_deadline=0) as url:
        response = await fake.post_call_event(url, ACTIVE_SID, event_type="answered")
        assert response.status_code == 200
        await wait_until(lambda: bool(ended.calls))
    assert ended.calls == [ended_call()]
    assert fake.requests_for(ACTIVE_SID) == 1


@pytest.mark.parametrize(
    "key", ["", "s3cret-events-kez", "s3cret", KEY + "x", "é" * 5, "%00"], ids=repr
)
async def test_a_wrong_key_is_refused_with_403(fake: FakeCcm, key: str) -> None:
    ended = Ended()
    async with served_receiver(fake, key=key, on_ended=ended) as url:
        response = await fake.post_call_event(url, SAMPLE_SID)
    assert_problem(response, 403)
    assert ended.calls == []


async def test_without_a_configured_key_every_event_is_refused(fake: FakeCcm) -> None:
    async with fake.serve() as api_url:
        app = create_app(environment(fake, api_url))
        async with serve_asgi(app, lifespan=True, name="app") as app_url:
            for key in ("", "anything"):
                response = await fake.post_call_event(
                    f"{app_url}/exotel/events?key={key}", SAMPLE_SID
                )
                assert_problem(response, 403)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/json"),
        (b"{", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"event_details": {"event_type": "terminal"}}', "application/json"),
        (b"<html>oops</html>", "text/html"),
        (b"Status=completed", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00", None),
    ],
)
async def test_a_malformed_event_is_answered_400(
    fake: FakeCcm, body: bytes, content_type: str | None
) -> None:
    ended = Ended()
    headers = {} if content_type is None else {"content-type": content_type}
    async with served_receiver(fake, on_ended=ended) as url, httpx.AsyncClient() as http:
        response = await http.post(url, content=body, headers=headers)
    assert_problem(response, 400)
    assert ended.calls == []


async def test_a_body_too_large_is_refused_with_413_unread(fake: FakeCcm) -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(MAX_EVENT_BODY // 65536 + 2):
            yield b" " * 65536

    async with served_receiver(fake) as url, httpx.AsyncClient() as http:
        response = await http.post(
            url, content=endless(), headers={"content-type": "application/json"}
        )
    assert_problem(response, 413)


async def test_events_beyond_max_pending_are_answered_503_to_be_sent_again(
    fake: FakeCcm,
) -> None:
    release = threading.Event()

    async def held(call: CallDetails) -> None:
        await anyio.to_thread.run_sync(release.wait)

    try:
        async with served_receiver(fake, on_ended=held, max_pending=1) as url:
            assert (await fake.post_call_event(url, SAMPLE_SID)).status_code == 200
            response = await fake.post_call_event(url, SAMPLE_SID)
            assert_problem(response, 503)
            assert response.headers["retry-after"] == "60"
            release.set()
    finally:
        release.set()


# -- in-process, on a virtual clock -----------------------------------------------------


@asynccontextmanager
async def receiver_in_process(fake: FakeCcm, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The example app in-process, its lifespan run, its client on ``fake`` in-process
    too; yields an HTTP client of the app (for ``fake.post_*(..., http_client=)``)."""
    environ = {
        "EXOTEL_API_KEY": fake.api_key,
        "EXOTEL_API_TOKEN": fake.api_token,
        "EXOTEL_ACCOUNT_SID": fake.account_sid,
        "CCM_EVENTS_KEY": KEY,
    }
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake))
    app = create_app(environ, http_client=api, base_url="http://127.0.0.1", **options)
    async with (
        api,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http,
    ):
        yield http


URL = f"/exotel/events?key={KEY}"


@pytest.mark.virtual_clock
async def test_a_late_terminal_event_is_polled_for_only_after_the_deadline(
    fake: FakeCcm,
) -> None:
    fake.add_call(active_call())
    ended = Ended()
    async with receiver_in_process(fake, on_ended=ended, terminal_deadline=600) as http:
        started = anyio.current_time()
        await fake.post_call_event(URL, ACTIVE_SID, event_type="answered", http_client=http)
        await anyio.sleep(599)
        assert fake.requests_for(ACTIVE_SID) == 0
        await anyio.sleep(1.5)
        assert fake.requests_for(ACTIVE_SID) == 1  # polling: the call is still active
        fake.add_call(ended_call())
        await wait_until(lambda: bool(ended.calls))
    assert ended.calls == [ended_call()]
    first_poll = fake.requests[0].time
    assert 600 <= first_poll - started < 601


@pytest.mark.virtual_clock
async def test_a_terminal_event_in_time_needs_no_lookup(fake: FakeCcm) -> None:
    fake.add_call(active_call())
    ended = Ended()
    async with receiver_in_process(fake, on_ended=ended, terminal_deadline=600) as http:
        await fake.post_call_event(URL, ACTIVE_SID, event_type="answered", http_client=http)
        await anyio.sleep(300)
        fake.add_call(ended_call())
        await fake.post_call_event(URL, ACTIVE_SID, event_type="terminal", http_client=http)
        await anyio.sleep(3600)
    assert ended.calls == [ended_call()]
    assert fake.request_count == 0


@pytest.mark.virtual_clock
async def test_a_call_that_never_ends_is_given_up_on_and_the_receiver_goes_on(
    fake: FakeCcm, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_call(active_call())
    ended = Ended()
    async with receiver_in_process(fake, on_ended=ended, terminal_deadline=60) as http:
        await fake.post_call_event(URL, ACTIVE_SID, event_type="answered", http_client=http)
        await anyio.sleep(60 + 4 * 3600 + 1)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(ACTIVE_SID in warning for warning in warnings)
        await fake.post_call_event(URL, SAMPLE_SID, http_client=http)
        await wait_until(lambda: bool(ended.calls))
    assert ended.sids == [SAMPLE_SID]


@pytest.mark.virtual_clock
async def test_a_retried_callback_ends_a_call_once_until_it_is_forgotten(fake: FakeCcm) -> None:
    sids = [f"call{i:028d}" for i in range(3)]
    for sid in sids:
        fake.add_call(ended_call(sid))
    ended = Ended()
    async with receiver_in_process(fake, on_ended=ended, max_pending=2) as http:
        for sid in [*sids, sids[2], sids[0]]:
            await fake.post_call_event(URL, sid, http_client=http)
            await anyio.sleep(1)
    # The receiver remembers the last max_pending ends: the first was forgotten.
    assert ended.sids == [*sids, sids[0]]


@pytest.mark.virtual_clock
async def test_an_on_ended_that_fails_is_logged_and_the_app_goes_on(
    fake: FakeCcm, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_call(ended_call())
    ended = Ended()

    async def failing(call: CallDetails) -> None:
        if call.call_sid == SAMPLE_SID:
            raise RuntimeError("the app's own bug")
        await ended(call)

    async with receiver_in_process(fake, on_ended=failing) as http:
        assert (await fake.post_call_event(URL, SAMPLE_SID, http_client=http)).status_code == 200
        await anyio.sleep(1)
        response = await fake.post_call_event(URL, ACTIVE_SID, http_client=http)
        assert response.status_code == 200
        await wait_until(lambda: bool(ended.calls))
        assert (await http.get(f"/calls/{ACTIVE_SID}")).status_code == 200
    assert ended.calls == [ended_call()]
    failures = [r for r in caplog.records if "on_ended failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert SAMPLE_SID in failures[0].getMessage()


@pytest.mark.virtual_clock
async def test_a_v1_end_that_ccm_does_not_have_yet_is_polled_for(fake: FakeCcm) -> None:
    fake.add_call(active_call())
    ended = Ended()
    async with receiver_in_process(fake, on_ended=ended) as http:
        callback = {"CallSid": ACTIVE_SID, "Status": "completed"}
        assert (await http.post(URL, data=callback)).status_code == 200
        await anyio.sleep(30)
        assert ended.calls == []  # the call is still active at CCM: never an active call
        fake.add_call(ended_call())
        await wait_until(lambda: bool(ended.calls))
        # CCM's own terminal event, after: the call has ended once already.
        await fake.post_call_event(URL, ACTIVE_SID, event_type="terminal", http_client=http)
        await anyio.sleep(1)
    assert ended.calls == [ended_call()]


@pytest.mark.virtual_clock
async def test_an_end_whose_lookups_fail_is_polled_for_until_they_succeed(
    fake: FakeCcm, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_call(ended_call())
    fake.fail(ACTIVE_SID, Fault.server_error(), times=3)
    ended = Ended()
    async with receiver_in_process(fake, on_ended=ended, retry=None) as http:
        callback = {"CallSid": ACTIVE_SID, "Status": "completed"}
        assert (await http.post(URL, data=callback)).status_code == 200
        await anyio.sleep(150)  # two waits of a minute after failed polls
        await wait_until(lambda: bool(ended.calls))
    assert ended.calls == [ended_call()]
    assert fake.requests_for(ACTIVE_SID) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("polling again in a minute" in warning for warning in warnings) == 2


@pytest.mark.virtual_clock
@pytest.mark.parametrize("sid", ["x\nWARNING:root:forged", "../calls", "a" * 65])
async def test_an_event_for_a_sid_that_cannot_be_one_is_answered_400(
    fake: FakeCcm, sid: str, caplog: pytest.LogCaptureFixture
) -> None:
    ended = Ended()
    async with receiver_in_process(fake, on_ended=ended) as http:
        response = await http.post(URL, data={"CallSid": sid, "Status": "completed"})
        await anyio.sleep(1)
    assert_problem(response, 400)
    assert "is not a call SID" in response.json()["detail"]
    assert ended.calls == []
    assert fake.request_count == 0
    assert not any("\n" in record.getMessage() for record in caplog.records)


@pytest.mark.virtual_clock
async def test_a_lone_surrogate_from_the_api_is_answered_as_escaped_json(fake: FakeCcm) -> None:
    half_an_emoji = "😀".encode("utf-16-be")[:2].decode("utf-16-be", "surrogatepass")
    fake.add_call(attrs.evolve(ended_call(), custom_field=half_an_emoji))
    async with receiver_in_process(fake) as http:
        response = await http.get(f"/calls/{ACTIVE_SID}")
    assert response.status_code == 200
    assert response.content.isascii()
    assert b"\\ud83d" in response.content
    assert response.json()["custom_field"] == half_an_emoji


async def test_the_events_key_is_hidden_from_the_access_log(fake: FakeCcm) -> None:
    access_log = logging.getLogger("uvicorn.access")
    async with receiver_in_process(fake):
        assert hide_key in access_log.filters
        # As uvicorn logs a request: its path with the query.
        record = logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("127.0.0.1:5000", "POST", f"/exotel/events?x=1&key={KEY}&y=2", "1.1", 200),
            None,
        )
        assert access_log.filter(record)
    assert hide_key not in access_log.filters
    message = record.getMessage()
    assert KEY not in message
    assert "/exotel/events?x=1&key=***&y=2 HTTP/1.1" in message


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    fake: FakeCcm,
) -> None:
    async with served_receiver(fake) as url:
        address = httpx.URL(url)
        assert address.port is not None
        async with await anyio.connect_tcp("127.0.0.1", address.port) as stream:
            target = address.raw_path.decode()
            await stream.send(
                f"POST {target} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                f"content-type: application/json\r\ncontent-length: {MAX_EVENT_BODY + 1}\r\n"
                "\r\n".encode()
            )
            with anyio.fail_after(10):  # a guard: the answer comes with no body sent
                answer = await stream.receive()
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_a_watch_that_is_not_running_accepts_nothing(fake: FakeCcm) -> None:
    async with fake.client() as ccm:
        watch = CallWatch(ccm)
        event = parse_call_event(f"CallSid={SAMPLE_SID}")
        assert not watch.accept(event)
        async with watch:
            assert watch.accept(event)
        assert not watch.accept(event)
