"""Voice v3's call details: the same CallDetails as v2, through every public path.

The documented v3 sample parsed field by field, an active v3 call (the epoch
placeholder), v3's renamed fields in error paths, v3's error codes and
Exotel's ``RestException`` bodies, ``api_version=`` and ``EXOTEL_API_VERSION``,
FakeCcm serving both versions from the same calls, and the command's
``--api-version``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from ccm_async import (
    ApiError,
    AsyncCcmClient,
    AuthenticationError,
    CallDetails,
    CallNotFoundError,
    CallState,
    CallStatus,
    ConfigurationError,
    Direction,
    RateLimitError,
    Recording,
    ResponseFormatError,
    ServerError,
)
from ccm_async._convert import structure_call
from ccm_async.testing import FakeCcm
from tests.cli_support import ccm, sids_of

from .conftest import stand_in_client, wait_until

pytestmark = pytest.mark.anyio

V3_SID = "cabfb1dfa8c5e1c7f2c458423b7716b3"
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


@pytest.fixture
def v3_sample() -> dict[str, Any]:
    """The v3 sample response from Exotel's docs, verbatim."""
    path = Path(__file__).parent / "fixtures" / "v3_sample_response.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


class Answering:
    """An ASGI app that gives every request the same answer, and keeps the paths asked."""

    def __init__(
        self, status: int, body: object, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = [(b"content-type", b"application/json"), *headers]
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


async def test_the_v3_sample_is_parsed_field_by_field(v3_sample: dict[str, Any]) -> None:
    app = Answering(200, v3_sample)
    async with stand_in_client(app, api_version="v3") as client:
        assert client.api_version == "v3"
        call = await client.get_call(V3_SID)
    assert app.paths == [f"/v3/accounts/a/calls/{V3_SID}"]
    assert call == CallDetails(
        call_sid=V3_SID,
        direction=Direction.OUTBOUND,
        virtual_number="+911414941199",
        call_state=CallState.TERMINAL,
        call_status=CallStatus.COMPLETED,
        created_time=dt.datetime(2022, 11, 3, 22, 54, 40, tzinfo=IST),
        end_time=dt.datetime(2022, 11, 3, 22, 56, 4, tzinfo=IST),
        total_duration=84,
        total_talk_time=59,
        recordings=(Recording(url=f"https://.../{V3_SID}.mp3"),),
        legs_url=f"/v3/accounts/<account_sid>/calls/{V3_SID}/legs",
    )
    # Fields v3 does not send stay None, never made up from others.
    assert call.start_time is None
    assert call.updated_time is None
    assert call.assigned_agent_details is None
    assert call.customer_details is None
    assert type(call.call_state) is CallState
    assert type(call.call_status) is CallStatus
    assert call.is_terminal


async def test_an_active_v3_call(v3_sample: dict[str, Any]) -> None:
    details = v3_sample["response"]["call_details"]
    details.update(state="active", status=None, end_time="1970-01-01 05:30:00+05:30")
    async with stand_in_client(Answering(200, v3_sample), api_version="v3") as client:
        call = await client.get_call(V3_SID)
    assert call.call_state is CallState.ACTIVE
    assert call.call_status is None
    assert call.end_time is None  # the epoch placeholder
    assert call.created_time == dt.datetime(2022, 11, 3, 22, 54, 40, tzinfo=IST)
    assert not call.is_terminal


@pytest.mark.parametrize(
    "value",
    [
        "completed",
        "from_leg_unanswered",
        "to_leg_unanswered",
        "from_leg_cancelled",
        "to_leg_no_dial",
        "from_leg_no_dial",
    ],
)
def test_v3_status_values_are_known(value: str) -> None:
    call = structure_call({"sid": "s", "status": value}, api_version="v3")
    assert type(call.call_status) is CallStatus
    assert call.call_status == value


def test_an_unknown_v3_value_is_kept_as_its_string() -> None:
    call = structure_call({"sid": "s", "status": "from_leg_busy"}, api_version="v3")
    assert call.call_status == "from_leg_busy"
    assert type(call.call_status) is str


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_the_epoch_is_the_placeholder_for_not_yet_in_either_version(version: str) -> None:
    end = "end_time"
    sid = {"v2": "call_sid", "v3": "sid"}[version]
    epoch = structure_call({sid: "s", end: "1970-01-01T00:00:00Z"}, api_version=version)  # type: ignore[arg-type]
    assert epoch.end_time is None
    later = structure_call({sid: "s", end: "1970-01-01 05:30:01+05:30"}, api_version=version)  # type: ignore[arg-type]
    assert later.end_time == dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC)


def test_v3_errors_name_the_fields_by_v3_keys() -> None:
    bad = {"sid": 5.5, "state": [], "status": {}, "legs": 7.5, "total_duration": "x"}
    with pytest.raises(ResponseFormatError) as info:
        structure_call(bad, path="$.response.call_details", api_version="v3")
    message = str(info.value)
    for key in ("sid", "state", "status", "legs", "total_duration"):
        assert f"@ $.response.call_details.{key}" in message
    for attribute in ("call_sid", "call_state", "call_status", "legs_url"):
        assert attribute not in message


def test_v2_keys_mean_nothing_to_v3_and_v3_keys_nothing_to_v2() -> None:
    v2_shaped = {"call_sid": "s", "call_state": "terminal", "legs_url": "/x"}
    assert structure_call(v2_shaped, api_version="v3") == CallDetails()
    v3_shaped = {"sid": "s", "state": "terminal", "legs": "/x", "legs_url": "/y"}
    assert structure_call(v3_shaped, api_version="v2") == CallDetails()


@pytest.mark.parametrize(
    ("version", "other"), [("v3", "data"), ("v2", "call_details")], ids=["v3", "v2"]
)
async def test_each_version_reads_its_own_payload_key(
    v3_sample: dict[str, Any], version: str, other: str
) -> None:
    response = v3_sample["response"]
    response[other] = response.pop("call_details")
    async with stand_in_client(Answering(200, v3_sample), api_version=version) as client:
        with pytest.raises(ResponseFormatError, match="successful response without") as info:
            await client.get_call(V3_SID)
    assert info.value.call_sid == V3_SID


def _envelope(http_code: int, code: int, error_code: int | None) -> dict[str, Any]:
    error = {"code": error_code, "message": "nope", "description": "nope"}
    response = {"code": code, "status": "failure", "error_data": error, "data": None}
    return {"request_id": "r1", "http_code": http_code, "response": response}


def _rest_exception(status: object, message: object, code: object) -> dict[str, Any]:
    return {"RestException": {"Status": status, "Message": message, "Code": code}}


RETRY_30 = [(b"retry-after", b"30")]
V3_ERRORS = [
    pytest.param(404, _envelope(404, 404, 10744), (), CallNotFoundError, id="10744"),
    pytest.param(429, _envelope(429, 429, 10724), (), RateLimitError, id="10724"),
    pytest.param(200, _envelope(200, 200, 10724), (), RateLimitError, id="10724-on-200"),
    pytest.param(401, _envelope(401, 401, 1010), (), AuthenticationError, id="1010"),
    pytest.param(200, _envelope(200, 200, 1010), (), AuthenticationError, id="1010-on-200"),
    pytest.param(400, _envelope(400, 400, 1001), (), ApiError, id="400"),
    pytest.param(500, b"<html>oops</html>", (), ServerError, id="html-500"),
    pytest.param(404, b"<html>no</html>", (), ApiError, id="html-404"),
    pytest.param(
        429,
        _rest_exception(
            429, "Rate limit exceeded. Try again in 30 seconds.", "RATE_LIMIT_EXCEEDED"
        ),
        RETRY_30,
        RateLimitError,
        id="rest-exception-429",
    ),
    pytest.param(
        404, _rest_exception(404, "Not found", None), (), CallNotFoundError, id="rest-404"
    ),
    pytest.param(
        200, _rest_exception("429", None, None), (), RateLimitError, id="rest-text-status"
    ),
    pytest.param(200, _rest_exception("soon", None, None), (), ApiError, id="rest-odd-status"),
    pytest.param(502, {"RestException": "down"}, (), ServerError, id="rest-not-an-object"),
]


@pytest.mark.parametrize(("http_status", "body", "headers", "cls"), V3_ERRORS)
async def test_v3_errors(
    http_status: int, body: object, headers: list[tuple[bytes, bytes]], cls: type[ApiError]
) -> None:
    app = Answering(http_status, body, headers)
    async with stand_in_client(app, api_version="v3", retry=None) as client:
        with pytest.raises(ApiError) as info:
            await client.get_call(V3_SID)
    error = info.value
    assert type(error) is cls
    assert error.http_status == http_status
    assert error.call_sid == V3_SID
    assert len(app.paths) == 1


async def test_a_rest_exception_keeps_its_message_and_retry_after() -> None:
    body = _rest_exception(
        429, "Rate limit exceeded. Try again in 30 seconds.", "RATE_LIMIT_EXCEEDED"
    )
    async with stand_in_client(Answering(429, body, RETRY_30), retry=None) as client:
        with pytest.raises(RateLimitError) as info:
            await client.get_call(V3_SID)
    error = info.value
    assert error.message == "Rate limit exceeded. Try again in 30 seconds. (RATE_LIMIT_EXCEEDED)"
    assert error.retry_after == 30
    assert error.code is None
    assert "not the CCM API's envelope" not in str(error)
    assert "Try again in 30 seconds" in str(error)


async def test_a_huge_rest_exception_message_stays_bounded() -> None:
    body = _rest_exception(503, "x\n" * 150_000, "Y" * 300_000)
    async with stand_in_client(Answering(503, body), retry=None) as client:
        with pytest.raises(ServerError) as info:
            await client.get_call(V3_SID)
    assert info.value.message is not None
    assert len(info.value.message) <= 2000
    assert len(str(info.value)) < 500
    assert "\n" not in str(info.value)


class _EqualToEverything:
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class _Disguised(str):
    __slots__ = ()

    def __format__(self, spec: str) -> str:
        return "../../evil"


class _Unequal:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")

    __hash__ = object.__hash__


def test_the_api_version_is_checked() -> None:
    for bad in ("v4", "V3", "", None, 3, _EqualToEverything(), _Unequal(), b"v2"):
        with pytest.raises(ConfigurationError, match="api_version must be 'v2' or 'v3'"):
            AsyncCcmClient(api_key="k", api_token="t", account_sid="a", api_version=bad)  # type: ignore[arg-type]
    assert AsyncCcmClient(api_key="k", api_token="t", account_sid="a").api_version == "v2"
    disguised = AsyncCcmClient(
        api_key="k",
        api_token="t",
        account_sid="a",
        api_version=_Disguised("v3"),  # type: ignore[arg-type]
    )
    assert type(disguised.api_version).__name__ == "str"
    assert disguised._setup.calls_url == "https://ccm-api.exotel.com/v3/accounts/a/calls/"


def test_from_env_reads_the_api_version() -> None:
    env = {"EXOTEL_API_KEY": "k", "EXOTEL_API_TOKEN": "t", "EXOTEL_ACCOUNT_SID": "a"}
    assert AsyncCcmClient.from_env(env).api_version == "v2"
    assert AsyncCcmClient.from_env({**env, "EXOTEL_API_VERSION": " V3 "}).api_version == "v3"
    chosen = AsyncCcmClient.from_env({**env, "EXOTEL_API_VERSION": "v3"}, api_version="v2")
    assert chosen.api_version == "v2"
    with pytest.raises(ConfigurationError, match="api_version"):
        AsyncCcmClient.from_env({**env, "EXOTEL_API_VERSION": "v1"})


def _as_v3_sends_it(call: CallDetails, account_sid: str) -> CallDetails:
    """A v2 call as a v3 lookup of the same call gives it: v2's own fields left out."""
    return attrs.evolve(
        call,
        start_time=None,
        updated_time=None,
        assigned_agent_details=None,
        customer_details=None,
        legs_url=f"/v3/accounts/{account_sid}/calls/{call.call_sid}/legs",
    )


async def test_both_versions_give_the_same_calls_through_every_public_path() -> None:
    found = sids_of(FakeCcm(generate=True, missing_rate=0.2), 6, found=True)
    [missing] = sids_of(FakeCcm(generate=True, missing_rate=0.2), 1, found=False)
    results: dict[str, list[Any]] = {}
    for version in ("v2", "v3"):
        fake = FakeCcm(generate=True, missing_rate=0.2)  # the same calls for both
        async with fake.client(api_version=version) as client:
            one = await client.get_call(found[0])
            many = await client.get_calls([*found[:3], missing])
            async with client.stream_calls(found[3:]) as stream:
                streamed = sorted([r async for r in stream], key=lambda r: r.call_sid)
            ended = await _wait_for_terminal(client, fake)
        results[version] = [one, many, streamed, ended]
        assert {r.path.split("/")[1] for r in fake.requests} == {version}
    v2_one, v2_many, v2_streamed, v2_ended = results["v2"]
    v3_one, v3_many, v3_streamed, v3_ended = results["v3"]
    account = FakeCcm().account_sid
    assert v3_one == _as_v3_sends_it(v2_one, account)
    assert [r.call_sid for r in v3_many] == [*found[:3], missing]
    pairs = zip(v2_many[:3] + v2_streamed, v3_many[:3] + v3_streamed, strict=True)
    for v2_result, v3_result in pairs:
        assert v3_result.call == _as_v3_sends_it(v2_result.call, account)
    for version, result in (("v2", v2_many[3]), ("v3", v3_many[3])):
        assert isinstance(result.error, CallNotFoundError)
        assert result.error.code == {"v2": 3043, "v3": 10744}[version]
    assert v2_ended.is_terminal
    assert v3_ended == _as_v3_sends_it(v2_ended, account)


async def _wait_for_terminal(client: AsyncCcmClient, fake: FakeCcm) -> CallDetails:
    """``wait_for_terminal`` on a call that ends after two lookups saw it active."""
    fake.add_call(CallDetails(call_sid="ringing", call_state="active"))

    async def hang_up_later() -> None:
        await wait_until(lambda: fake.requests_for("ringing") >= 2)
        fake.add_call(CallDetails(call_sid="ringing", call_state="terminal"))

    async with anyio.create_task_group() as group:
        group.start_soon(hang_up_later)
        call = await client.wait_for_terminal("ringing", timeout=10, interval=0.001)
    return call  # noqa: RET504 - past the group: mypy reads its exit as able to swallow


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_command_asks_the_version_it_is_given(
    served: tuple[FakeCcm, dict[str, str]], tmp_path: Path
) -> None:
    fake, env = served
    [sid] = sids_of(fake, 1, found=True)
    [missing] = sids_of(fake, 1, found=False)
    by_flag = await ccm(env, "get", "--api-version", "v3", sid)
    by_env = await ccm({**env, "EXOTEL_API_VERSION": "v3"}, "get", sid)
    overridden = await ccm({**env, "EXOTEL_API_VERSION": "v3"}, "get", "--api-version", "v2", sid)
    for done in (by_flag, by_env):
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout)
        assert record["legs_url"] == f"/v3/accounts/{fake.account_sid}/calls/{sid}/legs"
        assert record["start_time"] is None
    assert json.loads(overridden.stdout)["legs_url"] is None
    assert [r.path.split("/")[1] for r in fake.requests] == ["v3", "v3", "v2"]
    fetched = await ccm(env, "fetch", "--api-version", "v3", sid, missing, cwd=tmp_path)
    assert fetched.returncode == 1
    assert json.loads(fetched.stdout)["call_sid"] == sid
    errors = (tmp_path / "ccm-async-errors.tsv").read_text()
    assert errors.startswith(f"{missing}\tHTTP 404 code 10744\t")
    bad = await ccm({**env, "EXOTEL_API_VERSION": "v9"}, "get", sid)
    assert bad.returncode == 2
    assert "api_version must be 'v2' or 'v3'" in bad.stderr.decode()
