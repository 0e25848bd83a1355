"""Models and the converter: the seed's sample, strict hooks, and the round trip."""

from __future__ import annotations

import copy
import datetime as dt
import enum
import json
import pickle
import re
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccm_async import (
    AgentDetails,
    CallDetails,
    CallNotFoundError,
    CallResult,
    CallState,
    CallStatus,
    CustomerDetails,
    Direction,
    InvalidCallSidError,
    Recording,
    ResponseFormatError,
)
from ccm_async._convert import decode_response, loads, structure_call
from ccm_async._errors import ErrorAnswer, api_error

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


def test_seed_sample_structures_field_by_field(sample_response: dict[str, Any]) -> None:
    body = json.dumps(sample_response).encode()
    call = decode_response(200, body, call_sid="72827ead13a355d334338f53af71157s")

    assert call.call_sid == "72827ead13a355d334338f53af71157s"
    assert call.direction is Direction.OUTBOUND
    assert call.virtual_number == "+91804568XXXX"
    assert call.call_state is CallState.TERMINAL
    assert call.call_status is CallStatus.COMPLETED
    assert call.assigned_agent_details == AgentDetails(
        user_id="12898c52573645739e64864ad308f0a9",
        user_name="Sarthak XXXX",
        contact_uri="+9199531XXXXX",
        group_id=None,
        group_name=None,
        status="completed",
    )
    assert call.customer_details == CustomerDetails(
        contact_name="Sarthak XXXXX", contact_uri="+9199531XXXXX", status="completed"
    )
    assert call.created_time == dt.datetime(2021, 7, 28, 3, 7, 12, tzinfo=IST)
    assert call.updated_time == dt.datetime(2021, 7, 28, 3, 7, 33, tzinfo=IST)
    assert call.start_time == dt.datetime(2021, 7, 28, 3, 7, 18, tzinfo=IST)
    assert call.end_time == dt.datetime(2021, 7, 28, 3, 7, 32, tzinfo=IST)
    for stamp in (call.created_time, call.updated_time, call.start_time, call.end_time):
        assert stamp is not None
        assert stamp.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert call.total_duration is None
    assert call.total_talk_time == 7
    assert call.custom_field == "12130y124b2f142"
    assert call.app_id is None
    assert call.app_name is None
    assert call.digits is None
    assert call.recordings == (
        Recording(
            url="https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/XXXXX/"
            "72827ead13a355d334338fXXXXXX.mp3"
        ),
    )
    assert call.is_terminal


def test_models_are_frozen_and_slotted() -> None:
    call = CallDetails(call_sid="a")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        call.call_sid = "b"  # type: ignore[misc]
    for cls in (CallDetails, AgentDetails, CustomerDetails, Recording):
        assert "__slots__" in vars(cls)
        assert not hasattr(cls(), "__dict__")


def test_unknown_enum_values_stay_strings_and_compare_equal() -> None:
    call = structure_call(
        {"direction": "sideways", "call_state": "paused", "call_status": "no-answer"}
    )
    assert call.direction == "sideways"
    assert type(call.direction) is str
    assert call.call_state == "paused"
    assert not call.is_terminal
    assert call.call_status == "no-answer"
    assert call.call_status is CallStatus.NO_ANSWER


def test_lenient_where_lossless() -> None:
    call = structure_call(
        {
            "total_talk_time": "7",
            "total_duration": 12.0,
            "app_id": 12345,
            "created_time": "2021-07-28 03:07:12+05:30",
            "end_time": "2021-07-28T03:07:12Z",
            "recordings": None,
        }
    )
    assert call.total_talk_time == 7
    assert call.total_duration == 12
    assert call.app_id == "12345"
    assert call.created_time == dt.datetime(2021, 7, 28, 3, 7, 12, tzinfo=IST)
    assert call.end_time == dt.datetime(2021, 7, 28, 3, 7, 12, tzinfo=dt.UTC)
    assert call.recordings == ()


def test_missing_fields_are_none() -> None:
    assert structure_call({}) == CallDetails()


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        ({"total_talk_time": {"a": 1}}, "$.response.data.total_talk_time", "got dict"),
        ({"total_talk_time": 7.9}, "$.response.data.total_talk_time", "7.9"),
        ({"total_talk_time": True}, "$.response.data.total_talk_time", "got bool"),
        ({"total_duration": "seven"}, "$.response.data.total_duration", "'seven'"),
        ({"call_sid": {"nested": 1}}, "$.response.data.call_sid", "got dict"),
        ({"call_sid": False}, "$.response.data.call_sid", "got bool"),
        ({"direction": 3}, "$.response.data.direction", "got int"),
        ({"created_time": "yesterday"}, "$.response.data.created_time", "'yesterday'"),
        ({"created_time": 1627421832}, "$.response.data.created_time", "got int"),
        ({"start_time": "2021-07-28T03:07:12"}, "$.response.data.start_time", "UTC offset"),
        ({"customer_details": "x"}, "$.response.data.customer_details", "got str"),
        (
            {"assigned_agent_details": {"user_id": [1]}},
            "$.response.data.assigned_agent_details.user_id",
            "got list",
        ),
        ({"recordings": {"url": "x"}}, "$.response.data.recordings", "got dict"),
        ({"recordings": [{"url": 5.5}]}, "$.response.data.recordings[0].url", "got float"),
        ({"recordings": ["x"]}, "$.response.data.recordings[0]", "got str"),
        ({"recordings": [1] * 1001}, "$.response.data.recordings", "more than 1,000"),
    ],
)
def test_wrong_typed_field_names_its_path(data: dict[str, Any], path: str, problem: str) -> None:
    body = json.dumps(_envelope(data)).encode()
    with pytest.raises(ResponseFormatError) as info:
        decode_response(200, body, call_sid="abc")
    assert path in str(info.value)
    assert problem in str(info.value)
    assert info.value.call_sid == "abc"


def test_error_message_never_holds_the_whole_body() -> None:
    secret_like = "S" * 5000
    data = {"custom_field": secret_like, "total_talk_time": [secret_like]}
    with pytest.raises(ResponseFormatError) as info:
        decode_response(200, json.dumps(_envelope(data)).encode(), call_sid="abc")
    assert secret_like not in str(info.value)
    assert len(str(info.value)) < 500


def test_many_problems_are_summarised() -> None:
    data = {
        name: {"x": 1}
        for name in (
            "call_sid",
            "digits",
            "app_id",
            "app_name",
            "custom_field",
            "virtual_number",
            "total_duration",
        )
    }
    with pytest.raises(ResponseFormatError, match="and 2 more"):
        structure_call(data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{'call_sid': nope", "not JSON"),
        (b'{"response": {"status": "success", "da', "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"1" * 5000, "not JSON"),
        (b"[1, 2, 3]", "not the API's envelope"),
        (b'{"response": "ok"}', "not the API's envelope"),
        (b'{"response": {"code": 200}}', "not the API's envelope"),
        (b'{"response": {"status": "success", "code": 200, "data": null}}', "without data"),
        (b'{"response": {"status": "success", "code": 200, "data": [1]}}', "got list"),
    ],
)
def test_bodies_that_are_not_the_api_s(body: bytes, message: str) -> None:
    with pytest.raises(ResponseFormatError, match=message):
        decode_response(200, body, call_sid="abc")


def test_loads_accepts_json() -> None:
    assert loads(b'{"a": [1]}') == {"a": [1]}


def _envelope(data: object) -> dict[str, Any]:
    return {
        "request_id": "r1",
        "method": "GET",
        "http_code": 200,
        "metadata": None,
        "response": {"code": 200, "error_data": None, "status": "success", "data": data},
    }


_text = st.none() | st.text(max_size=30)
# Offsets to the second: Python's ISO 8601 writes and reads them.
_offsets = st.integers(min_value=-14 * 3600, max_value=14 * 3600).map(
    lambda seconds: dt.timezone(dt.timedelta(seconds=seconds))
)
_stamps = st.none() | st.datetimes(
    min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=_offsets
)


def _open_set(enum_cls: type[enum.StrEnum]) -> st.SearchStrategy[Any]:
    return st.none() | st.sampled_from(list(enum_cls)) | st.text(max_size=20)


_calls = st.builds(
    CallDetails,
    call_sid=_text,
    direction=_open_set(Direction),
    virtual_number=_text,
    call_state=_open_set(CallState),
    call_status=_open_set(CallStatus),
    assigned_agent_details=st.none()
    | st.builds(
        AgentDetails,
        **dict.fromkeys(
            ("user_id", "user_name", "contact_uri", "group_id", "group_name", "status"), _text
        ),
    ),
    customer_details=st.none()
    | st.builds(CustomerDetails, **dict.fromkeys(("contact_name", "contact_uri", "status"), _text)),
    created_time=_stamps,
    updated_time=_stamps,
    start_time=_stamps,
    end_time=_stamps,
    total_duration=st.none() | st.integers(min_value=0, max_value=10**9),
    total_talk_time=st.none() | st.integers(min_value=0, max_value=10**9),
    custom_field=_text,
    app_id=_text,
    app_name=_text,
    digits=_text,
    recordings=st.lists(st.builds(Recording, url=_text), max_size=3).map(tuple),
    legs_url=_text,
)


@given(_calls)
def test_round_trip_through_json(call: CallDetails) -> None:
    data = call.to_dict()
    wire = json.loads(json.dumps(data))
    assert wire == data  # nothing json.dumps would change: plain strings, lists, ints
    again = CallDetails.from_dict(wire)
    assert again == call
    for name in ("created_time", "updated_time", "start_time", "end_time"):
        assert (
            getattr(again, name) is None
            or getattr(again, name).utcoffset() == getattr(call, name).utcoffset()
        )


def test_to_dict_is_the_api_shape(sample_response: dict[str, Any]) -> None:
    data = sample_response["response"]["data"]
    # The v2 shape, and v3's legs_url (null: v2 sends none).
    as_dict = structure_call(data).to_dict()
    assert as_dict == {**data, "legs_url": None}
    assert type(as_dict["call_state"]) is str  # an enum's value, not the member
    assert type(as_dict["recordings"]) is list


def round_trips(value: object) -> list[object]:
    protocols = range(pickle.HIGHEST_PROTOCOL + 1)
    pickled = [pickle.dumps(value, protocol=p) for p in protocols]
    return [pickle.loads(data) for data in pickled] + [  # noqa: S301 - bytes we just made
        copy.copy(value),
        copy.deepcopy(value),
    ]


def test_call_results_survive_pickle_and_copy(sample_response: dict[str, Any]) -> None:
    found = CallResult(call_sid="s1", call=structure_call(sample_response["response"]["data"]))
    for copied in round_trips(found):
        assert copied == found
    answer = ErrorAnswer(http_status=404, code=3043, message="gone", request_id="r1", call_sid="s2")
    error = api_error(answer, status=404)
    error.attempts = 2
    failed = CallResult(call_sid="s2", error=error)
    for copied in round_trips(failed):
        assert isinstance(copied, CallResult)
        assert (copied.call_sid, copied.call) == ("s2", None)
        # Exceptions compare by identity: compare what they carry.
        assert type(copied.error) is CallNotFoundError
        assert str(copied.error) == str(error)
        assert vars(copied.error) == vars(error)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (None, "expected an object"),
        (["call_sid", "x"], "expected an object"),
        ({"call_sid": True}, "@ $.call_sid"),
        (
            {"start_time": "2021-07-28T03:07:12"},
            "without a UTC offset: '2021-07-28T03:07:12' @ $.start_time",
        ),
        ({"start_time": "yesterday"}, "@ $.start_time"),
        ({"total_talk_time": 7.5}, "@ $.total_talk_time"),
        ({"recordings": [{"url": ["x"]}]}, "@ $.recordings[0].url"),
        ({"assigned_agent_details": "agent"}, "@ $.assigned_agent_details"),
    ],
)
def test_from_dict_is_strict_and_names_the_path(data: object, problem: str) -> None:
    with pytest.raises(ResponseFormatError, match=re.escape(problem)):
        CallDetails.from_dict(data)  # type: ignore[arg-type]


def test_from_dict_reads_legs_url_and_ignores_unknown_keys() -> None:
    call = CallDetails.from_dict({"call_sid": "s", "legs_url": "/legs", "new_field": {"a": 1}})
    assert call == CallDetails(call_sid="s", legs_url="/legs")


def test_call_result_to_dict(sample_response: dict[str, Any]) -> None:
    call = structure_call(sample_response["response"]["data"])
    found = CallResult(call_sid="s1", call=call, item={"not": "serialised"})
    assert found.to_dict() == {"call_sid": "s1", "call": call.to_dict()}
    error = CallNotFoundError(
        "call not found [call_sid=s2]",
        ErrorAnswer(http_status=404, code=3043, request_id="r-1", call_sid="s2"),
    )
    error.attempts = 1
    failed = CallResult(call_sid="s2", error=error).to_dict()
    assert (
        json.loads(json.dumps(failed))
        == failed
        == {
            "call_sid": "s2",
            "error": {
                "class": "CallNotFoundError",
                "message": "call not found [call_sid=s2]",
                "code": 3043,
                "http_status": 404,
                "request_id": "r-1",
                "attempts": 1,
            },
        }
    )
    invalid = CallResult(call_sid="../x", error=InvalidCallSidError("bad", call_sid="../x"))
    assert invalid.to_dict()["error"] == {
        "class": "InvalidCallSidError",
        "message": "bad",
        "code": None,
        "http_status": None,
        "request_id": None,
        "attempts": 0,
    }
