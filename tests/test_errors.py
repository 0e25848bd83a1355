"""Every error row of the seed's table, and the mapping rules around it."""

from __future__ import annotations

import copy
import email.utils
import inspect
import json
import pickle
from typing import Any

import attrs
import pytest

import ccm_async
from ccm_async import (
    ApiError,
    AsyncCcmClient,
    AuthenticationError,
    CallNotFoundError,
    CcmError,
    ConfigurationError,
    ErrorAnswer,
    EventFormatError,
    InvalidCallSidError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from ccm_async._convert import decode_response
from ccm_async._errors import error_class
from ccm_async._retry import is_retryable
from ccm_async._retry_after import parse_retry_after
from ccm_async.testing import FakeCcm, Fault, instant_backoff

pytestmark = pytest.mark.anyio

SEED_ERRORS = [
    (404, 3043, CallNotFoundError),
    (404, 3044, CallNotFoundError),
    (404, 3045, CallNotFoundError),
    (500, 1100, ServerError),
    (500, 3042, ServerError),
    (500, 3046, ServerError),
    (500, 3075, ServerError),
]


@pytest.mark.parametrize(("http_status", "code", "cls"), SEED_ERRORS)
async def test_seed_error_table(
    fake: FakeCcm, client: AsyncCcmClient, http_status: int, code: int, cls: type[ApiError]
) -> None:
    fault = Fault.not_found(code) if http_status == 404 else Fault.server_error(code)
    fake.fail("abc123", fault)
    with pytest.raises(cls) as info:
        await client.get_call("abc123")
    error = info.value
    assert type(error) is cls
    assert error.http_status == http_status
    assert error.code == code
    assert error.message in ("Call not found / unsupported in this API", "Internal Server Error")
    assert error.description == error.message
    assert error.request_id is not None
    assert len(error.request_id) == 32
    assert error.call_sid == "abc123"
    assert str(code) in str(error)
    assert "abc123" in str(error)


async def test_unknown_sid_is_not_found_3043(client: AsyncCcmClient) -> None:
    with pytest.raises(CallNotFoundError) as info:
        await client.get_call("nosuchcall")
    assert info.value.code == 3043


async def test_wrong_credentials_say_check_the_region(fake: FakeCcm) -> None:
    async with fake.client(api_token="wrong-token") as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_call("abc123")
    assert info.value.http_status == 401
    assert info.value.code == 1010
    assert "region" in str(info.value)
    assert "ccm-api.in.exotel.com" in str(info.value)
    assert "wrong-token" not in str(info.value)


async def test_wrong_account_is_forbidden(fake: FakeCcm) -> None:
    async with fake.client(account_sid="other-account") as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_call("abc123")
    assert info.value.http_status == 403


async def test_rate_limit_carries_retry_after(fake: FakeCcm, client: AsyncCcmClient) -> None:
    fake.fail("a1", Fault.rate_limited(retry_after=7))
    fake.fail("a2", Fault.rate_limited())
    with instant_backoff(), pytest.raises(RateLimitError) as info:
        await client.get_call("a1")
    assert info.value.retry_after == 7.0
    assert info.value.http_status == 429
    with pytest.raises(RateLimitError) as info:
        await client.get_call("a2")
    assert info.value.retry_after is None


async def test_envelope_code_wins_over_http_200(fake: FakeCcm, client: AsyncCcmClient) -> None:
    fake.fail("abc123", Fault.server_error(3042, http_status=200))
    with pytest.raises(ServerError) as info:
        await client.get_call("abc123")
    assert info.value.http_status == 200
    assert info.value.code == 3042
    assert "response code 500" in str(info.value)


def test_failure_status_is_an_error_whatever_the_codes() -> None:
    body = {
        "request_id": "r",
        "response": {
            "status": "failure",
            "code": 200,
            "data": None,
            "error_data": {"code": "1001", "message": "Bad"},
        },
    }
    with pytest.raises(ApiError) as info:
        decode_response(200, json.dumps(body).encode(), call_sid="abc")
    assert type(info.value) is ApiError
    assert info.value.code == 1001
    assert info.value.message == "Bad"
    assert info.value.request_id == "r"


def test_success_envelope_on_an_error_status_is_an_error() -> None:
    body = {"response": {"status": "success", "code": 200, "data": {}}}
    with pytest.raises(ServerError):
        decode_response(503, json.dumps(body).encode(), call_sid="abc")


def test_error_data_of_the_wrong_shape_is_tolerated() -> None:
    body = {"request_id": 5, "response": {"status": "failure", "code": 404, "error_data": [1]}}
    with pytest.raises(CallNotFoundError) as info:
        decode_response(404, json.dumps(body).encode(), call_sid="abc")
    assert (info.value.code, info.value.message, info.value.request_id) == (None, None, None)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_html_gateway_page_is_a_server_error(
    fake: FakeCcm, client: AsyncCcmClient, status: int
) -> None:
    fake.fail("abc123", Fault.html(status, retry_after=3))
    with pytest.raises(ServerError) as info:
        await client.get_call("abc123")
    assert info.value.http_status == status
    assert info.value.code is None
    assert info.value.retry_after == 3.0
    assert "not the CCM API's envelope" in str(info.value)
    assert isinstance(info.value.__cause__, ResponseFormatError)


@pytest.mark.parametrize("status", [301, 400, 401, 404, 418])
def test_foreign_non_5xx_page_is_a_plain_api_error(status: int) -> None:
    with pytest.raises(ApiError) as info:
        decode_response(status, b"<html>nginx</html>", call_sid="abc")
    assert type(info.value) is ApiError
    assert "not the CCM API's envelope" in str(info.value)


def test_foreign_json_404_is_a_plain_api_error() -> None:
    with pytest.raises(ApiError) as info:
        decode_response(404, b'{"detail": "Not Found"}', call_sid="abc")
    assert type(info.value) is ApiError


def test_foreign_429_is_still_rate_limiting() -> None:
    with pytest.raises(RateLimitError):
        decode_response(429, b"slow down", call_sid="abc", retry_after=2.0)


@pytest.mark.parametrize(
    ("fault", "message"),
    [(Fault.malformed(), "not JSON"), (Fault.truncated(), "not JSON")],
)
async def test_bad_bodies_are_format_errors(
    fake: FakeCcm, client: AsyncCcmClient, fault: Fault, message: str
) -> None:
    fake.fail("abc123", fault)
    with pytest.raises(ResponseFormatError, match=message):
        await client.get_call("abc123")


async def test_malformed_stored_call_names_the_field(fake: FakeCcm, client: AsyncCcmClient) -> None:
    fake.add_call({"call_sid": "bad1", "total_talk_time": "seven"})
    with pytest.raises(ResponseFormatError, match=r"\$\.response\.data\.total_talk_time"):
        await client.get_call("bad1")


def test_exception_tree() -> None:
    assert issubclass(ConfigurationError, CcmError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(InvalidCallSidError, ValueError)
    assert issubclass(RequestTimeoutError, TransportError)
    assert issubclass(RequestTimeoutError, TimeoutError)
    assert issubclass(TransportError, CcmError)
    for cls in (CallNotFoundError, AuthenticationError, RateLimitError, ServerError):
        assert issubclass(cls, ApiError)
    assert issubclass(ApiError, CcmError)
    assert ResponseFormatError.__bases__ == (CcmError,)
    assert EventFormatError.__bases__ == (CcmError, ValueError)


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") is None
    assert parse_retry_after("-3") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00") is None
    assert parse_retry_after(date) is not None


ERROR_CLASSES = [
    getattr(ccm_async, name)
    for name in ccm_async.__all__
    if isinstance(getattr(ccm_async, name), type) and issubclass(getattr(ccm_async, name), CcmError)
]
ERROR_FIELDS: dict[str, Any] = {
    "call_sid": "abc123",
    "http_status": 503,
    "code": 3042,
    "message": "Internal Server Error",
    "description": "try later",
    "request_id": "r" * 32,
    "retry_after": 2.5,
    "last_state": "active",
}


def full_error(cls: type[CcmError]) -> CcmError:
    """A ``cls`` with every attribute its constructor takes set, raised from a cause."""
    error: CcmError
    if issubclass(cls, ApiError):
        facts = {field.name for field in attrs.fields(ErrorAnswer)}
        assert facts <= ERROR_FIELDS.keys(), "a new ErrorAnswer field needs a value here"
        error = cls("summary", ErrorAnswer(**{k: ERROR_FIELDS[k] for k in facts}))
    else:
        parameters = inspect.signature(cls).parameters.values()
        accepted = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
        error = cls("summary", **{k: v for k, v in ERROR_FIELDS.items() if k in accepted})
    error.attempts = 3
    if isinstance(error, RequestTimeoutError):
        error.deadline_exceeded = True
    try:
        raise error from OSError("cause")
    except CcmError as raised:
        return raised


def copies(value: object) -> list[object]:
    protocols = range(pickle.HIGHEST_PROTOCOL + 1)
    pickled = [pickle.dumps(value, protocol=p) for p in protocols]
    return [pickle.loads(data) for data in pickled] + [  # noqa: S301 - bytes we just made
        copy.copy(value),
        copy.deepcopy(value),
    ]


def assert_same_error(copied: object, error: CcmError) -> None:
    assert type(copied) is type(error)
    assert isinstance(copied, CcmError)
    assert copied.args == error.args
    assert str(copied) == str(error)
    assert vars(copied) == vars(error)
    for name in [*ERROR_FIELDS, "attempts", "deadline_exceeded"]:
        assert getattr(copied, name, None) == getattr(error, name, None), name


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_errors_survive_pickle_and_copy(cls: type[CcmError]) -> None:
    error = full_error(cls)
    for copied in copies(error):
        assert_same_error(copied, error)


def success_body(**data: object) -> bytes:
    return json.dumps({"response": {"status": "success", "code": 200, "data": data}}).encode()


@pytest.mark.parametrize(
    ("server_sid", "shown"),
    [
        ("other", "'other'"),
        ("ABC123", "'ABC123'"),
        ("s" * 5000, "'" + "s" * 70),
        ("\n\x1b[2J\u202e", "'\\n\\x1b[2J\\u202e'"),
        (123, "'123'"),
    ],
)
def test_a_body_about_another_call_is_a_format_error(server_sid: object, shown: str) -> None:
    with pytest.raises(ResponseFormatError) as info:
        decode_response(200, success_body(call_sid=server_sid), call_sid="abc123")
    message = str(info.value)
    assert "abc123" in message
    assert shown in message
    assert message.isprintable()
    assert len(message) < 300
    assert info.value.call_sid == "abc123"

    # The same body is the call when its SID is the one asked for, null or missing.
    for accepted in ({"call_sid": "abc123"}, {"call_sid": None}, {}):
        call = decode_response(200, success_body(**accepted), call_sid="abc123")
        assert call.call_sid == accepted.get("call_sid")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 7\t", 7.0),
        ("007", 7.0),
        ("9" * 5000, 1e9),
        ("0" * 5000 + "3", 3.0),
        ("1000000001", 1e9),
    ],
)
def test_retry_after_delay_seconds_are_ascii_digits(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "1_0",
        "\u0661\u0660",  # Arabic-Indic digits: int() takes them, RFC 9110 does not
        "\uff15",  # a fullwidth 5
        "1e3",
        "nan",
        "inf",
        "-5",
        "+5",
        "1.5",
        "0x10",
        "1 0",
        "5s",
        "\u00a05",  # no-break space is not HTTP whitespace
    ],
)
def test_retry_after_refuses_what_is_not_delay_seconds(value: str) -> None:
    assert parse_retry_after(value) is None


NOW = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Sun, 06 Nov 1994 08:50:07 GMT", 30.0),
        ("Sunday, 06-Nov-94 08:50:07 GMT", 30.0),  # RFC 850
        ("Sun Nov  6 08:50:07 1994", 30.0),  # asctime, which is GMT
        ("Wed Nov 16 08:49:37 1994", 864_000.0),
        ("Sat, 05 Nov 1994 08:49:37 GMT", 0.0),  # in the past
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("Sun, 06 Nov 1994 08:49:60 GMT", 23.0),  # a leap second
        ("Fri, 31 Dec 9999 23:59:59 GMT", 1e9),
    ],
)
def test_retry_after_http_dates(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:50:07",  # IMF-fixdate needs GMT
        "Sun, 06 Nov 1994 08:50:07 +0000",
        "Sun, 06 Nov 1994 08:50:07 -0000",
        "Sun, 06 Nov 1994 08:50:07 PST",
        "sun, 06 nov 1994 08:50:07 gmt",  # HTTP-date is case-sensitive
        "Sun, 6 Nov 1994 08:50:07 GMT",
        "Sun, 31 Feb 1994 08:50:07 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:50:61 GMT",
        "Sun, \u0660\u0666 Nov 1994 08:50:07 GMT",
        "Sun Nov 6 08:50:07 1994",
        "Sunday, 06-Nov-1994 08:50:07 GMT",
        "1994-11-06T08:50:07Z",
    ],
)
def test_retry_after_refuses_what_is_not_an_http_date(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_rfc850_two_digit_years_are_at_most_50_years_ahead() -> None:
    in_2025 = 1_750_000_000.0  # June 2025
    # 2070 is 45 years ahead (a Monday); 2080 would be 55 ahead, so "80" is 1980 (past).
    assert parse_retry_after("Monday, 06-Jan-70 00:00:00 GMT", now=in_2025) == 1e9
    assert parse_retry_after("Sunday, 06-Jan-80 00:00:00 GMT", now=in_2025) == 0.0


@pytest.mark.parametrize("status", [600, 700, 999])
def test_a_status_of_600_or_more_is_a_plain_api_error(status: int) -> None:
    assert error_class(status) is ApiError
    envelopes = [{"status": "failure"}, {"status": "failure", "code": 500}, {"code": 503}]
    bodies = [b"<html>oops</html>"] + [
        json.dumps({"response": envelope}).encode() for envelope in envelopes
    ]
    for body in bodies:  # no envelope code makes an impossible HTTP status a 5xx
        with pytest.raises(ApiError) as info:
            decode_response(status, body, call_sid="abc")
        assert type(info.value) is ApiError
        assert info.value.http_status == status
        assert not is_retryable(info.value)
    assert error_class(599) is ServerError
    assert error_class(99) is error_class(-1) is ApiError


@pytest.mark.parametrize("code", [600, 999, 99])
def test_an_envelope_code_outside_4xx_5xx_leaves_the_http_status_to_decide(code: int) -> None:
    body = {"response": {"status": "failure", "code": code, "error_data": {"code": 1}}}
    with pytest.raises(ApiError) as info:
        decode_response(503, json.dumps(body).encode(), call_sid="abc")
    assert type(info.value) is ServerError
    with pytest.raises(ApiError) as info:
        decode_response(600, json.dumps(body).encode(), call_sid="abc")
    assert type(info.value) is ApiError
