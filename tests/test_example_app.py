"""examples/fastapi_app.py under a real uvicorn, in front of FakeCcm on a socket.

The app runs on asyncio (uvicorn's loop, in a thread); the test's own HTTP client
runs on asyncio and on trio.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from ccm_async import AsyncCcmClient, ClientClosedError
from ccm_async.testing import FakeCcm, Fault, instant_backoff
from ccm_async.testing._fake import serve_asgi
from examples import fastapi_app
from examples.fastapi_app import create_app

from .conftest import SAMPLE_SID

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


def environment(fake: FakeCcm, base_url: str) -> dict[str, str]:
    return {
        "EXOTEL_API_KEY": fake.api_key,
        "EXOTEL_API_TOKEN": fake.api_token,
        "EXOTEL_ACCOUNT_SID": fake.account_sid,
        "EXOTEL_CCM_BASE_URL": base_url,
    }


@asynccontextmanager
async def served_app(fake: FakeCcm, **options: Any) -> AsyncIterator[str]:
    """The example app, served in front of ``fake`` (both on sockets); yields its URL.
    ``options`` go to ``create_app``."""
    async with (
        fake.serve() as api_url,
        serve_asgi(
            create_app(environment(fake, api_url), **options), lifespan=True, name="app"
        ) as app_url,
    ):
        yield app_url


@asynccontextmanager
async def app_before(fake: FakeCcm, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the example app served in front of ``fake``."""
    async with served_app(fake, **options) as app_url, httpx.AsyncClient(base_url=app_url) as http:
        yield http


def assert_problem(response: httpx.Response, status: int, **members: object) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body.items() >= members.items()
    return body


async def test_a_call_answers_200_with_its_to_dict(fake: FakeCcm) -> None:
    async with fake.client() as client:
        expected = (await client.get_call(SAMPLE_SID)).to_dict()
    async with app_before(fake) as http:
        response = await http.get(f"/calls/{SAMPLE_SID}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(json.dumps(expected))


async def test_a_missing_call_answers_404(fake: FakeCcm) -> None:
    async with app_before(fake) as http:
        response = await http.get("/calls/no-such-call")
    assert_problem(response, 404, call_sid="no-such-call", code=3043)


@pytest.mark.parametrize("sid", ["not.a.sid", "a" * 65, "%E2%80%AEevil%0A", "%00", "%F0%9F%93%9E"])
async def test_an_invalid_sid_answers_422_without_asking_the_api(fake: FakeCcm, sid: str) -> None:
    async with app_before(fake) as http:
        response = await http.get(f"/calls/{sid}")
    body = assert_problem(response, 422)
    assert all(value.isprintable() for value in body.values() if isinstance(value, str))
    assert fake.request_count == 0


async def test_a_persistent_rate_limit_answers_503_with_retry_after(fake: FakeCcm) -> None:
    # Longer than the lookup may wait: it gives up at once with the API's hint.
    fake.fail(SAMPLE_SID, Fault.rate_limited(30))
    async with app_before(fake) as http:
        response = await http.get(f"/calls/{SAMPLE_SID}")
    assert_problem(response, 503, call_sid=SAMPLE_SID)
    assert response.headers["retry-after"] == "30"


@pytest.mark.parametrize(
    "fault", [Fault.server_error(), Fault.html(), Fault.html(503), Fault.malformed()]
)
async def test_a_persistent_failure_answers_502_after_the_retries(
    fake: FakeCcm, fault: Fault
) -> None:
    fake.fail(SAMPLE_SID, fault)
    with instant_backoff():
        async with app_before(fake) as http:
            response = await http.get(f"/calls/{SAMPLE_SID}")
    assert_problem(response, 502, call_sid=SAMPLE_SID)
    assert fake.requests_for(SAMPLE_SID) == (1 if fault == Fault.malformed() else 4)


async def test_a_hanging_api_answers_504_at_the_lookup_s_deadline(fake: FakeCcm) -> None:
    fake.fail(SAMPLE_SID, Fault.hang())
    async with app_before(fake, lookup_timeout=0.2) as http:
        response = await http.get(f"/calls/{SAMPLE_SID}")
    body = assert_problem(response, 504, call_sid=SAMPLE_SID)
    assert "0.2s" in body["detail"]


async def test_refused_credentials_answer_500_and_never_show_the_token() -> None:
    fake = FakeCcm(api_token="the-right-token-3e1f")
    environ_token = "the-wrong-token-9c7a"
    async with (
        fake.serve() as api_url,
        serve_asgi(
            create_app({**environment(fake, api_url), "EXOTEL_API_TOKEN": environ_token}),
            lifespan=True,
            name="app",
        ) as app_url,
        httpx.AsyncClient(base_url=app_url) as http,
    ):
        response = await http.get(f"/calls/{SAMPLE_SID}")
    assert_problem(response, 500, call_sid=SAMPLE_SID, code=1010)
    shown = response.text + repr(response.headers)
    assert environ_token not in shown
    assert "region" in response.json()["detail"]


async def test_an_app_without_settings_fails_to_start() -> None:
    with pytest.raises(RuntimeError, match="failed to start"):
        async with serve_asgi(create_app({}), lifespan=True, name="app"):
            pass  # pragma: no cover - never reached


async def test_the_module_level_app_is_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``uvicorn examples.fastapi_app:app`` serves: the lifespan reads os.environ."""
    for name, value in environment(FakeCcm(), "http://127.0.0.1:1").items():
        monkeypatch.setenv(name, value)
    app = fastapi_app.app
    async with app.router.lifespan_context(app):
        client: AsyncCcmClient = app.state.ccm
        assert client.base_url == "http://127.0.0.1:1"
    with pytest.raises(ClientClosedError):
        await client.get_call(SAMPLE_SID)
    assert fastapi_app.LOOKUP_TIMEOUT == 10.0


# -- under load ----------------------------------------------------------------------

REQUESTS = 2000
IN_FLIGHT = 200
HOT = "hot-call"
# Every n-th request (at offset k) asks for a SID of a kind: what the fake does
# with it, the status the app must answer, and how many requests the fake sees.
KINDS: list[tuple[int, int, str, Fault | None, int | None, int]] = [
    (10, 1, "bad.sid", None, None, 422),
    (10, 2, "missing", Fault.not_found(), None, 404),
    (20, 4, "flaky", Fault.server_error(), 1, 200),  # a 500 first, retried away
    (50, 5, "limited", Fault.rate_limited(1), 1, 200),  # a 429 first, retried
    # A wait longer than the lookup's: it gives up at once with the API's hint.
    (100, 7, "throttled", Fault.rate_limited(30), None, 503),
]
SENDS = {"bad.sid": 0, "missing": 1, "flaky": 2, "limited": 2, "throttled": 1, "call": 1}


def expected_answer(i: int) -> tuple[str, str, int]:
    """Request ``i``'s SID, its kind and the status it must get: a third ask for
    one hot call, each of the others for a SID of its own."""
    if i % 3 == 0:
        return HOT, "hot", 200
    for every, at, kind, _, _, status in KINDS:
        if i % every == at:
            return f"{kind}-{i}", kind, status
    return f"call-{i}", "call", 200


def planned_fake() -> FakeCcm:
    fake = FakeCcm(generate=True, latency=0.02)
    faults = {kind: (fault, times) for _, _, kind, fault, times, _ in KINDS}
    for i in range(REQUESTS):
        sid, kind, _ = expected_answer(i)
        fault, times = faults.get(kind, (None, None))
        if fault is not None:
            fake.fail(sid, fault, times=times)
    return fake


async def test_under_load_every_request_gets_its_own_answer() -> None:
    fake = planned_fake()
    answers: dict[int, httpx.Response] = {}
    # httpx's pool costs O(connections²) per request (encode/httpcore#1035): the
    # load comes from many small clients, or the load would measure itself.
    per_client = 10
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    # Every 429 pauses the whole client for its Retry-After: instantly, here.
    with instant_backoff():
        async with served_app(fake) as app_url, contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=app_url, limits=limits, timeout=30)
                )
                for _ in range(IN_FLIGHT // per_client)
            ]
            todo = iter(range(REQUESTS))

            async def worker(http: httpx.AsyncClient) -> None:
                for i in todo:
                    answers[i] = await http.get(f"/calls/{expected_answer(i)[0]}")

            async with anyio.create_task_group() as group:
                for n in range(IN_FLIGHT):
                    group.start_soon(worker, clients[n % len(clients)])
    assert len(answers) == REQUESTS
    for i, response in answers.items():
        sid, kind, status = expected_answer(i)
        assert response.status_code == status, (sid, response.text)
        if status == 200:
            assert response.json()["call_sid"] == sid
        else:
            assert response.headers["content-type"] == PROBLEM
        if status == 503:
            assert response.headers["retry-after"] == "30"
        if kind != "hot":
            assert fake.requests_for(sid) == SENDS[kind], sid
    hot_asked = sum(1 for i in range(REQUESTS) if i % 3 == 0)
    # Concurrent lookups of one SID share one request.
    assert fake.requests_for(HOT) < hot_asked / 4
    planned = sum(SENDS[expected_answer(i)[1]] for i in range(REQUESTS) if i % 3)
    assert fake.request_count == planned + fake.requests_for(HOT)
