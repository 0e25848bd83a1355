"""CcmError.to_problem(): every error as an RFC 9457 answer of a web request."""

from __future__ import annotations

import base64
import http
import json
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccm_async import (
    ApiError,
    AsyncCcmClient,
    AuthenticationError,
    CallNotFoundError,
    CcmError,
    ClientClosedError,
    ConfigurationError,
    ErrorAnswer,
    EventFormatError,
    InvalidCallSidError,
    Problem,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    ServerError,
    TransportError,
    WaitTimeoutError,
)
from ccm_async.testing import FakeCcm, Fault

from .conftest import SAMPLE_SID

ANSWER = ErrorAnswer(http_status=500, code=1100, call_sid="sid-1", request_id="req-1")
ERRORS: dict[type[CcmError], Callable[[], CcmError]] = {
    CcmError: lambda: CcmError("failed"),
    ConfigurationError: lambda: ConfigurationError("bad setting"),
    InvalidCallSidError: lambda: InvalidCallSidError("bad sid", call_sid="a.b"),
    TransportError: lambda: TransportError("refused", call_sid="sid-1"),
    RequestTimeoutError: lambda: RequestTimeoutError("slow", call_sid="sid-1"),
    WaitTimeoutError: lambda: WaitTimeoutError("still active", call_sid="s", last_state="active"),
    ClientClosedError: lambda: ClientClosedError("closed"),
    ResponseFormatError: lambda: ResponseFormatError("not JSON", call_sid="sid-1"),
    EventFormatError: lambda: EventFormatError("no CallSid"),
    ApiError: lambda: ApiError("HTTP 302", ANSWER),
    CallNotFoundError: lambda: CallNotFoundError("HTTP 404", ANSWER),
    AuthenticationError: lambda: AuthenticationError("HTTP 401", ANSWER),
    RateLimitError: lambda: RateLimitError("HTTP 429", ANSWER),
    ServerError: lambda: ServerError("HTTP 500", ANSWER),
}
STATUSES = {
    CcmError: 500,
    ConfigurationError: 500,
    InvalidCallSidError: 422,
    TransportError: 502,
    RequestTimeoutError: 504,
    WaitTimeoutError: 504,
    ClientClosedError: 503,
    ResponseFormatError: 502,
    EventFormatError: 400,
    ApiError: 502,
    CallNotFoundError: 404,
    AuthenticationError: 500,
    RateLimitError: 503,
    ServerError: 502,
}


def assert_problem_document(problem: Problem, error: CcmError) -> None:
    assert problem.headers["content-type"] == "application/problem+json"
    assert problem.body["type"] == "about:blank"
    assert problem.body["status"] == problem.status
    assert problem.body["title"] == http.HTTPStatus(problem.status).phrase
    assert problem.body["detail"] == str(error)
    assert None not in problem.body.values()
    json.dumps(problem.body)


@pytest.mark.parametrize("cls", list(ERRORS), ids=lambda cls: cls.__name__)
def test_each_class_answers_with_its_status(cls: type[CcmError]) -> None:
    error = ERRORS[cls]()
    assert type(error) is cls
    problem = error.to_problem()
    assert problem.status == cls.problem_status == STATUSES[cls]
    assert_problem_document(problem, error)
    assert problem.body.get("call_sid") == error.call_sid
    if isinstance(error, ApiError):
        assert problem.body["code"] == 1100
        assert problem.body["request_id"] == "req-1"
    else:
        assert "code" not in problem.body
        assert "request_id" not in problem.body
    assert "Retry-After" not in problem.headers  # this 429 said nothing of a wait


def test_a_subclass_inherits_its_parent_s_status() -> None:
    class GoneError(CallNotFoundError):
        pass

    assert GoneError("gone", ANSWER).to_problem().status == 404


def test_an_error_without_a_sid_or_code_leaves_them_out() -> None:
    problem = ServerError("HTTP 502", ErrorAnswer(http_status=502)).to_problem()
    assert set(problem.body) == {"type", "title", "status", "detail"}


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (0.0, "1"),
        (0.2, "1"),
        (1.0, "1"),
        (1.5, "2"),
        (30.0, "30"),
        (-5.0, "1"),
        (1e9, "1000000000"),
    ],
)
def test_a_rate_limit_says_when_to_come_back_in_whole_seconds_rounded_up(
    retry_after: float, header: str
) -> None:
    error = RateLimitError("HTTP 429", ErrorAnswer(http_status=429, retry_after=retry_after))
    assert error.to_problem().headers["Retry-After"] == header
    assert error.to_problem(status=429).headers["Retry-After"] == header


@pytest.mark.parametrize("retry_after", [None, float("inf"), float("nan")])
def test_a_rate_limit_without_a_usable_wait_has_no_retry_after(retry_after: float | None) -> None:
    error = RateLimitError("HTTP 429", ErrorAnswer(http_status=429, retry_after=retry_after))
    assert dict(error.to_problem().headers) == {"content-type": "application/problem+json"}


@pytest.mark.parametrize("status", [400, 409, 429, 500, 599])
def test_status_overrides_the_class_s(status: int) -> None:
    problem = CallNotFoundError("HTTP 404", ANSWER).to_problem(status=status)
    assert problem.status == problem.body["status"] == status
    phrase = {599: "Server Error"}.get(status) or http.HTTPStatus(status).phrase
    assert problem.body["title"] == phrase


def test_an_unnamed_client_error_status_gets_a_generic_title() -> None:
    assert CcmError("x").to_problem(status=499).body["title"] == "Client Error"


@pytest.mark.parametrize("status", [0, 200, 399, 600, -404, True, 404.0, "404", b"404", [404]])
def test_a_status_outside_the_error_range_is_a_configuration_error(status: Any) -> None:
    with pytest.raises(ConfigurationError, match="400 to 599"):
        CcmError("x").to_problem(status=status)


def test_a_problem_is_frozen() -> None:
    problem = CcmError("x").to_problem()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        problem.status = 200  # type: ignore[misc]


TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=3000)


@settings(max_examples=300, deadline=None)
@given(message=TEXT, repeat=st.sampled_from([1, 1000]), sid=TEXT, request_id=TEXT | st.none())
def test_any_message_makes_a_bounded_one_line_json_document(
    message: str, repeat: int, sid: str, request_id: str | None
) -> None:
    answer = ErrorAnswer(http_status=500, call_sid=sid, request_id=request_id, message=message)
    for error in (ServerError(message * repeat, answer), CcmError(message * repeat, call_sid=sid)):
        body = error.to_problem().body
        json.dumps(body)
        # What a web framework sends: UTF-8, lone surrogates included (escaped).
        sent = json.dumps(body, ensure_ascii=False).encode()
        assert len(body["detail"]) <= 1000
        for value in body.values():
            if isinstance(value, str):
                assert value.isprintable()
                assert len(value) <= 1000
        # Every character printable: JSON escapes none but '"' and '\\'.
        assert len(sent.decode()) < 2 * (1000 + 200 + 200) + 100


def test_a_huge_message_is_cut_to_the_detail_s_bound() -> None:
    problem = ServerError("x" * 10_000_000, ANSWER).to_problem()
    assert problem.body["detail"] == "x" * 997 + "..."


# -- from real lookups ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [
        (Fault.not_found(), 404, None),
        (Fault.unauthorized(), 500, None),
        (Fault.rate_limited(30), 503, "30"),
        (Fault.rate_limited(), 503, None),
        (Fault.server_error(), 502, None),
        (Fault.html(), 502, None),
        (Fault.html(404), 502, None),
        (Fault.malformed(), 502, None),
    ],
    ids=[
        "missing",
        "refused",
        "limited",
        "limited-no-hint",
        "failing",
        "gateway",
        "proxy-404",
        "malformed",
    ],
)
async def test_what_a_lookup_raises_answers_as_the_table_says(
    fake: FakeCcm, fault: Fault, status: int, retry_after: str | None
) -> None:
    fake.fail(SAMPLE_SID, fault)
    async with fake.client(retry=None) as client:
        with pytest.raises(CcmError) as failed:
            await client.get_call(SAMPLE_SID)
    problem = failed.value.to_problem()
    assert problem.status == status
    assert problem.headers.get("Retry-After") == retry_after
    assert problem.body["call_sid"] == SAMPLE_SID
    assert_problem_document(problem, failed.value)


@pytest.mark.anyio
async def test_an_invalid_sid_and_a_closed_client_answer_422_and_503(fake: FakeCcm) -> None:
    client = fake.client(retry=None)
    with pytest.raises(InvalidCallSidError) as invalid:
        await client.get_call("not/a\nsid")
    assert invalid.value.to_problem().status == 422
    assert invalid.value.to_problem().body["call_sid"] == "not/a\\nsid"
    await client.aclose()
    with pytest.raises(ClientClosedError) as closed:
        await client.get_call(SAMPLE_SID)
    assert closed.value.to_problem().status == 503


# -- the token -----------------------------------------------------------------------

KEY = "problem-key"
TOKEN = "problem-token-5a4b3c2d/+="
BASIC = base64.b64encode(f"{KEY}:{TOKEN}".encode()).decode()


def encodings(text: str) -> list[str]:
    """``text`` as a server's JSON encoder may write it inside a string."""
    return [
        text,
        json.dumps(text)[1:-1],
        text.replace("/", "\\/"),
        "".join(f"\\u{ord(char):04x}" for char in text),
        "".join(f"\\u{ord(char):04X}" if char in "+=/" else char for char in text),
    ]


def echoed_bodies(authorization: str) -> list[tuple[int, str]]:
    """Error answers that echo the credentials in every encoding and every field."""
    bodies = []
    for secret in (TOKEN, BASIC, authorization):
        for form in encodings(secret):
            error = f'{{"code": 1100, "message": "denied {form}", "description": "{form}"}}'
            envelope = f'{{"request_id": "{form}", "response": {{"code": 500, '
            envelope += f'"status": "failure", "error_data": {error}}}}}'
            bodies.append((500, envelope))
            bodies.append((401, envelope.replace("1100", "1010")))
            bodies.append((429, f'{{"RestException": {{"Status": 429, "Message": "{form}"}}}}'))
            bodies.append((502, f"<html>bad gateway {form}</html>"))
    return bodies


@pytest.mark.anyio
async def test_the_token_never_reaches_a_problem_even_when_a_server_echoes_it() -> None:
    answered: list[tuple[int, str]] = []

    def echo(request: httpx.Request) -> httpx.Response:
        bodies = echoed_bodies(request.headers["authorization"])
        status, body = bodies[len(answered) % len(bodies)]
        answered.append((status, body))
        return httpx.Response(status, content=body.encode())

    problems: list[Problem] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as http_client:
        client = AsyncCcmClient(
            api_key=KEY, api_token=TOKEN, account_sid="a", base_url="http://127.0.0.1",
            http_client=http_client, retry=None, max_concurrency=1,
        )  # fmt: skip
        for _ in echoed_bodies("Basic " + BASIC):
            with pytest.raises(CcmError) as failed:
                await client.get_call(SAMPLE_SID)
            problems.append(failed.value.to_problem())
    assert len(answered) == len(problems)
    # The envelopes' texts are quoted, redacted; the HTML pages' are not quoted at all.
    quoting = [problem for problem in problems if "[redacted]" in json.dumps(problem.body)]
    assert len(quoting) == len(problems) * 3 // 4
    assert {problem.status for problem in problems} == {500, 502, 503}
    for problem in problems:
        shown = json.dumps(problem.body) + json.dumps(dict(problem.headers))
        decoded = json.dumps(problem.body, ensure_ascii=False)
        for text in (shown, decoded):
            for secret in (TOKEN, BASIC, TOKEN.replace("/", "\\/")):
                assert secret not in text
                assert secret[:12] not in text
