"""parse_call_event(): Exotel's webhook bodies, read strictly, and nothing but an
EventFormatError out of a body it cannot read."""

from __future__ import annotations

import copy
import datetime as dt
import encodings.aliases
import json
import pickle
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ccm_async import (
    CallDetails,
    CallEvent,
    CallEventType,
    CallStatus,
    CcmError,
    Direction,
    EventFormatError,
    Leg,
    StatusCallback,
    parse_call_event,
)
from ccm_async._convert import structure_call

from .test_fuzz import json_values

FIXTURES = Path(__file__).parent / "fixtures"
CALL = json.loads((FIXTURES / "sample_response.json").read_text())["response"]["data"]
SID = CALL["call_sid"]
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
LONGEST_MESSAGE = 1000
BOUNDARY = "----ccm-boundary-7MA4YWxk"

CALLBACK: dict[str, Any] = {
    "CallSid": SID,
    "Status": "completed",
    "DateUpdated": "2019-06-12 18:07:31",
    "DateCreated": "2019-06-12 18:06:40",
    "StartTime": "2019-06-12 18:06:43",
    "EndTime": "2019-06-12 18:07:31",
    "RecordingUrl": "https://recordings.example/abc.mp3",
    "EventType": "terminal",
    "ConversationDuration": 41,
    "Direction": "outbound-api",
    "From": "09999999999",
    "To": "08888888888",
    "PhoneNumberSid": "08047112345",
    "CustomField": "order-42",
    "Legs": [
        {"OnCallDuration": 41, "Status": "completed", "AnsweredBy": "HUMAN"},
        {"OnCallDuration": 0, "Status": "no-answer"},
    ],
}
EXPECTED = StatusCallback(
    call_sid=SID,
    status=CallStatus.COMPLETED,
    date_updated=dt.datetime(2019, 6, 12, 18, 7, 31, tzinfo=IST),
    date_created=dt.datetime(2019, 6, 12, 18, 6, 40, tzinfo=IST),
    start_time=dt.datetime(2019, 6, 12, 18, 6, 43, tzinfo=IST),
    end_time=dt.datetime(2019, 6, 12, 18, 7, 31, tzinfo=IST),
    recording_url="https://recordings.example/abc.mp3",
    event_type=CallEventType.TERMINAL,
    conversation_duration=41,
    direction=Direction.OUTBOUND_API,
    from_number="09999999999",
    to_number="08888888888",
    phone_number_sid="08047112345",
    custom_field="order-42",
    legs=(
        Leg(on_call_duration=41, status=CallStatus.COMPLETED, answered_by="HUMAN"),
        Leg(on_call_duration=0, status=CallStatus.NO_ANSWER),
    ),
)
EVENT: dict[str, Any] = {"event_details": {"event_type": "terminal"}, "call_details": CALL}


# -- the encodings --------------------------------------------------------------------


def form_pairs(document: dict[str, Any]) -> list[tuple[str, str]]:
    """A status callback's JSON as Exotel's form fields: legs as Legs[i][Field]."""
    pairs = []
    for key, value in document.items():
        if key == "Legs":
            for index, leg in enumerate(value):
                pairs += [(f"Legs[{index}][{name}]", str(item)) for name, item in leg.items()]
        else:
            pairs.append((key, "" if value is None else str(value)))
    return pairs


def urlencoded(pairs: list[tuple[str, str]], charset: str = "utf-8") -> bytes:
    return urllib.parse.urlencode(pairs, encoding=charset).encode("ascii")


def multipart(
    pairs: list[tuple[str, str]], charset: str = "utf-8", *, part_charset: bool = False
) -> bytes:
    body = b""
    for name, value in pairs:
        body += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n'.encode()
        if part_charset:
            body += f"Content-Type: text/plain; charset={charset}\r\n".encode()
        body += b"\r\n" + value.encode(charset) + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def encoded(document: dict[str, Any], encoding: str) -> tuple[bytes, str]:
    if encoding == "json":
        return json.dumps(document).encode(), "application/json"
    if encoding == "urlencoded":
        return urlencoded(form_pairs(document)), "application/x-www-form-urlencoded"
    return multipart(form_pairs(document)), f"multipart/form-data; boundary={BOUNDARY}"


ENCODINGS = ["json", "urlencoded", "multipart"]


def failure(body: object, content_type: object = None) -> EventFormatError:
    with pytest.raises(EventFormatError) as info:
        parse_call_event(body, content_type)  # type: ignore[arg-type]
    assert_bounded(info.value)
    return info.value


def assert_bounded(error: EventFormatError) -> None:
    message = str(error)
    assert message
    assert len(message) <= LONGEST_MESSAGE
    assert message.isprintable()
    assert error.__cause__ is None  # a parser's exception would hold the whole body


def callback(document: dict[str, Any], encoding: str = "json") -> StatusCallback:
    parsed = parse_call_event(*encoded(document, encoding))
    assert isinstance(parsed, StatusCallback)
    return parsed


def with_field(key: str, value: object) -> dict[str, Any]:
    document = copy.deepcopy(CALLBACK)
    document[key] = value
    return document


# -- both shapes, every encoding --------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_status_callback_in_every_encoding(encoding: str) -> None:
    parsed = callback(CALLBACK, encoding)
    assert parsed == EXPECTED
    assert parsed.is_terminal
    assert type(parsed.status) is CallStatus
    assert type(parsed.legs[0].status) is CallStatus


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_callback_with_only_its_sid_has_the_rest_none(encoding: str) -> None:
    parsed = callback({"CallSid": SID}, encoding)
    assert parsed == StatusCallback(call_sid=SID)
    assert parsed.is_terminal  # the plain callback: sent when the call ends


def test_a_call_event_reads_call_details_as_a_lookup_does() -> None:
    event = parse_call_event(json.dumps(EVENT).encode(), "application/json")
    assert isinstance(event, CallEvent)
    assert event.event_type is CallEventType.TERMINAL
    assert event.is_terminal
    assert event.call == structure_call(CALL)
    assert event.call_sid == SID
    assert event.to_dict() == {"event_type": "terminal", "call": event.call.to_dict()}


def test_an_answered_event_is_not_terminal_and_an_unknown_one_is_kept() -> None:
    answered = parse_call_event(json.dumps({**EVENT, "event_details": {"event_type": "answered"}}))
    assert isinstance(answered, CallEvent)
    assert answered.event_type is CallEventType.ANSWERED
    assert not answered.is_terminal
    ringing = parse_call_event(json.dumps({**EVENT, "event_details": {"event_type": "ringing"}}))
    assert isinstance(ringing, CallEvent)
    assert ringing.event_type == "ringing"
    assert type(ringing.event_type) is str
    assert not ringing.is_terminal


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"call_details": CALL}, "$.event_details"),
        ({"event_details": {"event_type": "terminal"}}, "$.call_details"),
        ({**EVENT, "event_details": None}, "$.event_details"),
        ({**EVENT, "event_details": ["terminal"]}, "$.event_details"),
        ({**EVENT, "event_details": {}}, "$.event_details.event_type"),
        ({**EVENT, "event_details": {"event_type": ""}}, "$.event_details.event_type"),
        ({**EVENT, "event_details": {"event_type": "  "}}, "$.event_details.event_type"),
        ({**EVENT, "event_details": {"event_type": 3}}, "$.event_details.event_type"),
        ({**EVENT, "call_details": [CALL]}, "$.call_details"),
        ({**EVENT, "call_details": {**CALL, "call_sid": None}}, "$.call_details.call_sid"),
        ({**EVENT, "call_details": {**CALL, "call_sid": " "}}, "$.call_details.call_sid"),
        ({**EVENT, "call_details": {**CALL, "start_time": 5}}, "$.call_details.start_time"),
        ({**EVENT, "call_details": {**CALL, "total_talk_time": "7s"}}, "total_talk_time"),
        ({**EVENT, "call_details": {**CALL, "recordings": [{"url": []}]}}, "recordings[0].url"),
        (
            {**EVENT, "call_details": {**CALL, "customer_details": "x"}},
            "$.call_details.customer_details",
        ),
    ],
)
def test_a_call_event_s_bad_field_is_named_by_its_path(document: dict[str, Any], path: str) -> None:
    error = failure(json.dumps(document), "application/json")
    assert path in str(error)
    call_sid = document.get("call_details", {})
    expected = call_sid.get("call_sid") if isinstance(call_sid, dict) else None
    assert error.call_sid == (expected if expected and expected.strip() else None)


def test_the_converter_s_message_is_kept_as_it_is() -> None:
    from ccm_async import ResponseFormatError

    bad = {**CALL, "start_time": 5}
    with pytest.raises(ResponseFormatError) as lookup:
        structure_call(bad, path="$.call_details")
    assert str(failure(json.dumps({**EVENT, "call_details": bad}))) == str(lookup.value)


def test_a_call_event_with_a_callsid_too_is_a_call_event() -> None:
    parsed = parse_call_event(json.dumps({**EVENT, "CallSid": "other"}))
    assert isinstance(parsed, CallEvent)


def test_a_form_is_never_a_call_event() -> None:
    form = urlencoded([("event_details", "{}"), ("call_details", "{}")])
    assert "CallSid" in str(failure(form, "application/x-www-form-urlencoded"))


def test_a_document_of_neither_shape() -> None:
    error = failure(b'{"call": {}}', "application/json")
    assert "neither a call event" in str(error)


def test_a_call_event_needs_its_call_sid_when_built_by_hand() -> None:
    with pytest.raises(ValueError, match="call_sid"):
        CallEvent(event_type="terminal", call=CallDetails())


# -- content types and charsets -----------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "APPLICATION/JSON",
        "Application/Json; Charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json;charset=utf-8;foo=bar",
        "application/vnd.exotel+json",
        " application/json ",
    ],
)
def test_json_content_types(content_type: str) -> None:
    assert parse_call_event(json.dumps(CALLBACK).encode(), content_type) == EXPECTED


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-URLEncoded; CHARSET=utf-8",
    ],
)
def test_form_content_types(content_type: str) -> None:
    assert parse_call_event(urlencoded(form_pairs(CALLBACK)), content_type) == EXPECTED


def test_multipart_s_type_and_parameter_names_in_any_case() -> None:
    body = multipart(form_pairs(CALLBACK))
    assert parse_call_event(body, f"MULTIPART/Form-Data; BOUNDARY={BOUNDARY}") == EXPECTED
    assert parse_call_event(body, f'multipart/form-data; boundary="{BOUNDARY}"') == EXPECTED
    # The boundary's value is case-sensitive.
    failure(body, f"multipart/form-data; boundary={BOUNDARY.upper()}")


@pytest.mark.parametrize("charset", ["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"])
def test_json_in_the_charset_its_content_type_names(charset: str) -> None:
    document = with_field("CustomField", "café")
    body = json.dumps(document, ensure_ascii=False).encode(charset)
    parsed = parse_call_event(body, f"application/json; charset={charset}")
    assert isinstance(parsed, StatusCallback)
    assert parsed.custom_field == "café"


@pytest.mark.parametrize("charset", ["utf-8", "utf-16", "utf-16-be", "utf-32-le"])
def test_json_without_a_charset_is_detected(charset: str) -> None:
    body = json.dumps(CALLBACK).encode(charset)
    assert parse_call_event(body, "application/json") == EXPECTED
    if charset == "utf-8":
        assert parse_call_event(body, None) == EXPECTED


@pytest.mark.parametrize("charset", ["utf-16", "utf-32", "utf-8-sig"])
def test_json_with_a_bom_and_no_content_type_is_json(charset: str) -> None:
    body = json.dumps(CALLBACK, indent=2).encode(charset)
    assert parse_call_event(body, None) == EXPECTED
    # Without its opening brace, it is read as a form, and is not one.
    failure(json.dumps([CALLBACK]).encode(charset))


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", None, ""]
)
def test_a_utf8_bom_is_dropped(content_type: str | None) -> None:
    body = b"\xef\xbb\xbf" + json.dumps(CALLBACK).encode()
    assert parse_call_event(body, content_type) == EXPECTED
    assert parse_call_event(body.decode("utf-8"), content_type) == EXPECTED


def test_a_form_in_latin1_by_its_charset() -> None:
    body = urlencoded([("CallSid", SID), ("CustomField", "café")], "latin-1")
    assert b"caf%E9" in body
    parsed = parse_call_event(body, "application/x-www-form-urlencoded; charset=latin-1")
    assert isinstance(parsed, StatusCallback)
    assert parsed.custom_field == "café"
    # Read as UTF-8, %E9 alone is no character.
    assert "charset 'utf-8'" in str(failure(body, "application/x-www-form-urlencoded"))


def test_a_multipart_part_in_its_own_charset() -> None:
    pairs = [("CallSid", SID), ("CustomField", "café")]
    for charset in ("latin-1", "utf-16"):
        body = multipart(pairs, charset, part_charset=True)
        parsed = parse_call_event(body, f"multipart/form-data; boundary={BOUNDARY}")
        assert isinstance(parsed, StatusCallback)
        assert parsed.custom_field == "café"
        assert parsed.call_sid == SID


def test_a_multipart_part_in_base64() -> None:
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=CallSid\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\nYWJj\r\n--{BOUNDARY}--\r\n"
    ).encode()
    parsed = parse_call_event(body, f"multipart/form-data; boundary={BOUNDARY}")
    assert isinstance(parsed, StatusCallback)
    assert parsed.call_sid == "abc"


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ('{"CallSid": "a"}'.encode("utf-16"), "application/json; charset=utf-8", "not text"),
        (b'{"CallSid": "a"}', "application/json; charset=klingon", "unknown charset"),
        (b'{"CallSid": "a"}', "application/json; charset=rot13", "unsupported charset"),
        (b'{"CallSid": "a"}', "application/json; charset=zlib", "unsupported charset"),
        # Pure-Python codecs, slow (punycode is quadratic): Python knows them, we do not.
        (b'{"CallSid": "a"}', "application/json; charset=punycode", "unsupported charset"),
        (b"CallSid=a", "application/x-www-form-urlencoded; charset=utf-7", "unsupported charset"),
        (b"CallSid=a", "application/x-www-form-urlencoded; charset=nope", "unknown charset"),
        (b'{"CallSid": "\xff"}', "application/json", "not text"),
        (b"CallSid=\xff", "application/x-www-form-urlencoded", "not text"),
        (b"CallSid=a", "text/plain", "unsupported content type 'text/plain'"),
        (b"CallSid=a", "text", "malformed content type"),
        (b"CallSid=a", "application/json\r\nX-Evil: 1", "printable text"),
        (b"CallSid=a", "application/jsön", "printable text"),
        (b"CallSid=a", "multipart/form-data", "without a valid boundary"),
        (b"CallSid=a", "multipart/form-data; boundary=", "without a valid boundary"),
        (b"CallSid=a", "multipart/form-data; boundary=" + "b" * 71, "without a valid boundary"),
    ],
)
def test_unreadable_content_types_and_charsets(
    body: bytes, content_type: str, expected: str
) -> None:
    assert expected in str(failure(body, content_type))


def test_a_str_form_s_escapes_by_an_unknown_charset() -> None:
    error = failure("CallSid=a%41", "application/x-www-form-urlencoded; charset=nope")
    assert "unknown charset 'nope'" in str(error)


def test_every_codec_python_knows_gives_an_event_or_the_error() -> None:
    body = json.dumps(CALLBACK).encode()
    for name in sorted(set(encodings.aliases.aliases.values())):
        for content_type in (
            f"application/json; charset={name}",
            f"application/x-www-form-urlencoded; charset={name}",
        ):
            try:
                parsed = parse_call_event(body, content_type)
            except EventFormatError as exc:
                assert_bounded(exc)
            else:
                assert isinstance(parsed, StatusCallback)


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        (json.dumps(CALLBACK), StatusCallback),
        ("  \r\n\t" + json.dumps(EVENT), CallEvent),
        ("\ufeff " + json.dumps(CALLBACK), StatusCallback),
        ("CallSid=abc&Status=completed", StatusCallback),
        ("\ufeffCallSid=abc", StatusCallback),
    ],
)
@pytest.mark.parametrize("content_type", [None, ""])
def test_without_a_content_type_the_body_is_sniffed(
    body: str, shape: type[object], content_type: str | None
) -> None:
    assert isinstance(parse_call_event(body, content_type), shape)
    assert isinstance(parse_call_event(body.encode(), content_type), shape)


def test_a_sniffed_non_json_body_is_read_as_a_form() -> None:
    assert "@ CallSid" in str(failure(b'["CallSid"]', None))


@pytest.mark.parametrize("body_type", [bytes, bytearray, memoryview, str])
def test_every_body_type(body_type: Callable[[bytes], object]) -> None:
    raw = json.dumps(CALLBACK).encode()
    body = raw.decode() if body_type is str else body_type(raw)
    assert parse_call_event(body, "application/json") == EXPECTED  # type: ignore[arg-type]
    form = urlencoded(form_pairs(CALLBACK))
    form_body = form.decode() if body_type is str else body_type(form)
    assert parse_call_event(form_body, None) == EXPECTED  # type: ignore[arg-type]
    multi = multipart(form_pairs(CALLBACK))
    multi_body = multi.decode() if body_type is str else body_type(multi)
    assert parse_call_event(multi_body, f"multipart/form-data; boundary={BOUNDARY}") == EXPECTED  # type: ignore[arg-type]


def test_a_memoryview_of_wide_items_counts_its_bytes() -> None:
    import array

    items = array.array("I", [0]) * (1024 * 1024 // 4 + 1)
    assert "larger than" in str(failure(memoryview(items), "application/json"))
    released = memoryview(b"{}")
    released.release()
    assert "released" in str(failure(released, "application/json"))


@pytest.mark.parametrize("body", [None, 5, 4.2, {"CallSid": SID}, [b"CallSid=a"], object()])
def test_a_body_that_is_no_text_or_bytes(body: object) -> None:
    assert "body must be bytes or str" in str(failure(body, "application/json"))


@pytest.mark.parametrize("content_type", [b"application/json", 5, ["application/json"]])
def test_a_content_type_that_is_no_string(content_type: object) -> None:
    assert "content_type must be a string" in str(failure(b"{}", content_type))


# -- fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_or_blank_call_sid(encoding: str, value: str | None) -> None:
    document = with_field("CallSid", value)
    if value is None and encoding != "json":
        del document["CallSid"]
    path = "$.CallSid" if encoding == "json" else "@ CallSid"
    error = failure(*encoded(document, encoding))
    assert path in str(error)
    assert error.call_sid is None


def test_no_call_sid_at_all() -> None:
    assert "status callback (no CallSid)" in str(failure(b'{"Status": "completed"}'))
    assert "@ CallSid" in str(failure(b"Status=completed", "application/x-www-form-urlencoded"))


JSON_WRONG_TYPES = [
    ("CallSid", ["x"], "$.CallSid"),
    ("CallSid", True, "$.CallSid"),
    ("Status", 3, "$.Status"),
    ("DateUpdated", 1560343051, "$.DateUpdated"),
    ("DateCreated", "yesterday", "$.DateCreated"),
    ("StartTime", "2019-06-12T18:06:43", "$.StartTime"),
    ("EndTime", "2019-02-30 10:00:00", "$.EndTime"),
    ("RecordingUrl", {"url": "x"}, "$.RecordingUrl"),
    ("EventType", ["terminal"], "$.EventType"),
    ("ConversationDuration", "41s", "$.ConversationDuration"),
    ("ConversationDuration", 4.5, "$.ConversationDuration"),
    ("ConversationDuration", True, "$.ConversationDuration"),
    ("ConversationDuration", [41], "$.ConversationDuration"),
    ("Direction", 1, "$.Direction"),
    ("From", 9.5, "$.From"),
    ("To", [], "$.To"),
    ("PhoneNumberSid", {}, "$.PhoneNumberSid"),
    ("CustomField", False, "$.CustomField"),
    ("Legs", "41", "$.Legs"),
    ("Legs", {"0": {}}, "$.Legs"),
    ("Legs", [None], "$.Legs[0]"),
    ("Legs", [{}, "leg"], "$.Legs[1]"),
    ("Legs", [{"OnCallDuration": "long"}], "$.Legs[0].OnCallDuration"),
    ("Legs", [{"OnCallDuration": 1.5}], "$.Legs[0].OnCallDuration"),
    ("Legs", [{}, {"Status": 7}], "$.Legs[1].Status"),
    ("Legs", [{"AnsweredBy": ["HUMAN"]}], "$.Legs[0].AnsweredBy"),
]


@pytest.mark.parametrize(("key", "value", "path"), JSON_WRONG_TYPES)
def test_every_wrong_typed_json_field_is_named_by_its_path(
    key: str, value: object, path: str
) -> None:
    error = failure(json.dumps(with_field(key, value)), "application/json")
    assert str(error).startswith("invalid status callback: ")
    assert str(error).endswith(f"@ {path}")
    assert error.call_sid == (None if key == "CallSid" else SID)


FORM_WRONG_VALUES = [
    ("DateUpdated", "12/06/2019", "DateUpdated"),
    ("StartTime", "2019-06-12 25:00:00", "StartTime"),
    ("ConversationDuration", "forty-one", "ConversationDuration"),
    ("ConversationDuration", "4.5", "ConversationDuration"),
    ("Legs", [{"OnCallDuration": "x"}], "Legs[0][OnCallDuration]"),
    ("Legs", [{}, {"OnCallDuration": "1e3"}], "Legs[1][OnCallDuration]"),
]


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
@pytest.mark.parametrize(("key", "value", "path"), FORM_WRONG_VALUES)
def test_every_wrong_form_field_is_named_by_its_path(
    encoding: str, key: str, value: object, path: str
) -> None:
    document = with_field(key, value)
    if key == "Legs":
        document["Legs"] = [leg or {"Status": "completed"} for leg in document["Legs"]]
    error = failure(*encoded(document, encoding))
    assert str(error).endswith(f"@ {path}")
    assert error.call_sid == SID


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_unknown_values_are_kept_as_plain_strings(encoding: str) -> None:
    document = {
        **CALLBACK,
        "Status": "in-progress",
        "Direction": "sideways",
        "EventType": "ringing",
        "Legs": [{"Status": "on-hold"}],
    }
    parsed = callback(document, encoding)
    for value, text in [
        (parsed.status, "in-progress"),
        (parsed.direction, "sideways"),
        (parsed.event_type, "ringing"),
        (parsed.legs[0].status, "on-hold"),
    ]:
        assert value == text
        assert type(value) is str
    assert not parsed.is_terminal


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_strings_are_none(encoding: str) -> None:
    document: dict[str, Any] = {key: "" for key in CALLBACK if key != "Legs"}
    document["CallSid"] = SID
    document["Legs"] = [{"OnCallDuration": "", "Status": "", "AnsweredBy": ""}]
    parsed = callback(document, encoding)
    assert parsed == StatusCallback(call_sid=SID, legs=(Leg(),))


def test_json_nulls_are_none() -> None:
    document = dict.fromkeys(CALLBACK)
    document["CallSid"] = SID
    assert callback(document) == StatusCallback(call_sid=SID)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-06-12 18:07:31", dt.datetime(2019, 6, 12, 12, 37, 31, tzinfo=dt.UTC)),
        ("2019-06-12 00:00:00", dt.datetime(2019, 6, 11, 18, 30, tzinfo=dt.UTC)),
        ("2019-06-12T12:37:31Z", dt.datetime(2019, 6, 12, 12, 37, 31, tzinfo=dt.UTC)),
        ("2019-06-12T18:07:31+05:30", dt.datetime(2019, 6, 12, 12, 37, 31, tzinfo=dt.UTC)),
        ("2019-06-12 10:07:31-02:30", dt.datetime(2019, 6, 12, 12, 37, 31, tzinfo=dt.UTC)),
    ],
)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_times_are_india_time_or_iso_with_an_offset(
    text: str, expected: dt.datetime, encoding: str
) -> None:
    parsed = callback(with_field("DateUpdated", text), encoding)
    assert parsed.date_updated == expected
    assert parsed.date_updated is not None
    assert parsed.date_updated.utcoffset() is not None
    if " " in text and text.count(":") == 2:
        assert parsed.date_updated.utcoffset() == dt.timedelta(hours=5, minutes=30)


def test_the_zero_time_is_none() -> None:
    assert callback(with_field("EndTime", "0000-00-00 00:00:00")).end_time is None


@pytest.mark.parametrize(
    "text",
    [
        "2019-06-12T18:07:31",
        "2019-06-12 18:07",
        "१९-06-12 18:07:31",
        "2019-13-01 00:00:00",
        " 2019-06-12 18:07:31",
    ],
)
def test_a_time_without_a_form_it_can_be_read_in(text: str) -> None:
    assert str(failure(json.dumps(with_field("StartTime", text)))).endswith("@ $.StartTime")


@pytest.mark.parametrize(
    ("value", "expected"), [("41", 41), (" 41 ", 41), ("+3", 3), (41.0, 41), ("0", 0)]
)
def test_integers_as_strings_or_whole_numbers(value: object, expected: int) -> None:
    assert callback(with_field("ConversationDuration", value)).conversation_duration == expected
    legs = [{"OnCallDuration": value}]
    assert callback(with_field("Legs", legs)).legs[0].on_call_duration == expected


def test_strings_may_come_as_integers() -> None:
    parsed = callback({"CallSid": 12345, "From": 9999999999, "PhoneNumberSid": 8047112345})
    assert parsed.call_sid == "12345"
    assert parsed.from_number == "9999999999"
    assert parsed.phone_number_sid == "8047112345"


def test_unknown_keys_are_ignored() -> None:
    document = {**CALLBACK, "Extra": {"deep": [1, 2]}, "Legs": [{**CALLBACK["Legs"][0], "X": []}]}
    assert callback(document).legs[0] == EXPECTED.legs[0]
    pairs = [*form_pairs(CALLBACK), ("Extra", "1"), ("Legs[0][Extra]", "x"), ("flowid", "")]
    assert parse_call_event(urlencoded(pairs), None) == EXPECTED


# -- legs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_legs_in_every_encoding(encoding: str) -> None:
    legs = [{"OnCallDuration": index, "Status": "completed"} for index in range(100)]
    parsed = callback(with_field("Legs", legs), encoding)
    assert [leg.on_call_duration for leg in parsed.legs] == list(range(100))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_more_than_100_legs(encoding: str) -> None:
    legs = [{"Status": "completed"} for _ in range(101)]
    assert "more than 100 legs" in str(failure(*encoded(with_field("Legs", legs), encoding)))


def test_a_form_s_legs_are_numbered_from_0_without_gaps() -> None:
    # Legs out of order are put in order by their index.
    pairs = [("CallSid", SID), ("Legs[1][Status]", "busy"), ("Legs[0][Status]", "completed")]
    parsed = parse_call_event(urlencoded(pairs), None)
    assert isinstance(parsed, StatusCallback)
    assert [leg.status for leg in parsed.legs] == ["completed", "busy"]
    gap = [("CallSid", SID), ("Legs[0][Status]", "completed"), ("Legs[2][Status]", "busy")]
    error = failure(urlencoded(gap), None)
    assert str(error).endswith("required field missing @ Legs[1]")
    assert error.call_sid == SID
    assert str(failure(urlencoded([("CallSid", SID), ("Legs[1][Status]", "x")]))).endswith(
        "@ Legs[0]"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Legs[00][Status]", "malformed leg field 'Legs[00][Status]'"),
        ("Legs[-1][Status]", "malformed leg field"),
        ("Legs[a][Status]", "malformed leg field"),
        ("Legs[0][Status][x]", "malformed leg field"),
        ("Legs[0]", "malformed leg field"),
        ("Legs[0][]", "malformed leg field"),
        ("Legs[9999999][Status]", "malformed leg field"),
        ("Legs[100][Status]", "more than 100 legs @ Legs[100][Status]"),
        ("Legs[999999][Status]", "more than 100 legs"),
        ("Legs", "expected Legs[i][Field] fields @ Legs"),
    ],
)
@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_malformed_leg_fields(name: str, expected: str, encoding: str) -> None:
    pairs = [("CallSid", SID), (name, "completed")]
    body = urlencoded(pairs) if encoding == "urlencoded" else multipart(pairs)
    content_type = (
        "application/x-www-form-urlencoded"
        if encoding == "urlencoded"
        else f"multipart/form-data; boundary={BOUNDARY}"
    )
    error = failure(body, content_type)
    assert expected in str(error)
    assert error.call_sid == SID


@pytest.mark.parametrize(
    "pairs",
    [
        [("CallSid", SID), ("CallSid", "other")],
        [("CallSid", SID), ("Status", "completed"), ("Status", "failed")],
        [("CallSid", SID), ("Legs[0][Status]", "completed"), ("Legs[0][Status]", "busy")],
    ],
)
def test_a_form_field_given_twice_is_an_error(pairs: list[tuple[str, str]]) -> None:
    for body, content_type in [
        (urlencoded(pairs), "application/x-www-form-urlencoded"),
        (multipart(pairs), f"multipart/form-data; boundary={BOUNDARY}"),
    ]:
        assert "given twice @ " in str(failure(body, content_type))


def test_an_unread_form_field_given_twice_is_ignored() -> None:
    parsed = parse_call_event(urlencoded([("CallSid", SID), ("x", "1"), ("x", "2")]), None)
    assert parsed == StatusCallback(call_sid=SID)


@pytest.mark.parametrize(
    "body",
    [
        '{"CallSid": "a", "CallSid": "b"}',
        '{"CallSid": "a", "Legs": [{"Status": "x", "Status": "y"}]}',
        '{"event_details": {"event_type": "terminal", "event_type": "answered"}}',
    ],
)
def test_a_json_key_given_twice_is_an_error(body: str) -> None:
    assert "given twice in one object" in str(failure(body, "application/json"))


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body_type", [bytes, bytearray, memoryview, str])
def test_a_body_over_1_mib(body_type: Callable[[bytes], object]) -> None:
    raw = json.dumps({"CallSid": SID, "CustomField": "x" * (1024 * 1024)}).encode()
    body = raw.decode() if body_type is str else body_type(raw)
    assert "larger than 1,048,576 bytes" in str(failure(body, "application/json"))


def test_a_str_body_is_measured_in_utf_8() -> None:
    # 300,000 characters, 1.2 MB as they were sent.
    body = f"CallSid={SID}&CustomField=" + "😀" * 300_000
    assert "larger than 1,048,576 bytes (1,200," in str(failure(body, None))
    fits = f"CallSid={SID}&CustomField=" + "😀" * 250_000
    parsed = parse_call_event(fits, None)
    assert isinstance(parsed, StatusCallback)
    assert parsed.custom_field == "😀" * 250_000


def test_at_most_1000_recordings() -> None:
    recordings = [{"url": f"https://example.com/{index}.mp3"} for index in range(1000)]
    event = copy.deepcopy(EVENT)
    event["call_details"]["recordings"] = recordings
    parsed = parse_call_event(json.dumps(event))
    assert isinstance(parsed, CallEvent)
    assert len(parsed.call.recordings) == 1000
    # Counted before each is read: 500,000 bad ones (1 MiB) fail as fast as one more.
    event["call_details"]["recordings"] = [1] * 500_000
    error = failure(json.dumps(event, separators=(",", ":")))
    assert "more than 1,000 recordings (500,000) @ $.call_details.recordings" in str(error)


@pytest.mark.parametrize(
    "sid", ["a b", "x\nWARNING:root:forged", "../../calls", "é", "a" * 65, "a;b"]
)
def test_a_call_sid_that_cannot_be_one_is_refused(sid: str) -> None:
    for document, path in ((with_field("CallSid", sid), "CallSid"), (event_of(sid), "call_sid")):
        message = str(failure(json.dumps(document)))
        assert "is not a call SID" in message
        assert message.endswith(path)
        assert "\n" not in message
    failure(urlencoded([("CallSid", sid)]))


def event_of(sid: str) -> dict[str, Any]:
    event = copy.deepcopy(EVENT)
    event["call_details"]["call_sid"] = sid
    return event


def test_a_body_of_exactly_1_mib_is_read() -> None:
    head = json.dumps({"CallSid": SID, "CustomField": ""}).encode()
    body = head[:-2] + b"x" * (1024 * 1024 - len(head)) + head[-2:]
    assert len(body) == 1024 * 1024
    parsed = parse_call_event(body, "application/json")
    assert isinstance(parsed, StatusCallback)


def test_at_most_1000_form_fields() -> None:
    pairs = [("CallSid", SID)] + [(f"f{index}", "") for index in range(999)]
    assert parse_call_event(urlencoded(pairs), None) == StatusCallback(call_sid=SID)
    more = [*pairs, ("f999", "")]
    assert "more than 1,000 form fields" in str(failure(urlencoded(more), None))
    assert "more than 1,000 form fields" in str(failure("&" * 5000, None))


def test_at_most_1000_multipart_parts() -> None:
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    pairs = [("CallSid", SID)] + [(f"f{index}", "") for index in range(999)]
    assert parse_call_event(multipart(pairs), content_type) == StatusCallback(call_sid=SID)
    more = [*pairs, ("f999", "")]
    assert "more than 1,000 form fields" in str(failure(multipart(more), content_type))


@pytest.mark.parametrize("opener", ["[", '{"a":', '{"CallSid": "a", "x": ['])
def test_json_nested_too_deeply(opener: str) -> None:
    body = opener * 200_000
    assert "nested too deeply" in str(failure(body[: 1024 * 1024], "application/json"))


def test_a_nested_multipart_part() -> None:
    inner = "inner-boundary"
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=CallSid\r\n"
        f"Content-Type: multipart/mixed; boundary={inner}\r\n\r\n"
        f"--{inner}\r\nContent-Type: text/plain\r\n\r\nabc\r\n--{inner}--\r\n"
        f"--{BOUNDARY}--\r\n"
    ).encode()
    assert "nested" in str(failure(body, f"multipart/form-data; boundary={BOUNDARY}"))


def one_part(headers: str, value: str = "abc") -> str:
    return f"--{BOUNDARY}\r\n{headers}\r\n\r\n{value}\r\n--{BOUNDARY}--\r\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=CallSid\r\n\r\nabc\r\n",
            "malformed multipart",
        ),
        ("CallSid=abc", "malformed multipart"),
        ("", "malformed multipart"),
        (f"--{BOUNDARY}--\r\n", "malformed multipart"),
        (
            one_part("Content-Type: text/plain"),
            "not form-data",
        ),
        (
            one_part("Content-Disposition: attachment; name=CallSid"),
            "not form-data",
        ),
        (
            one_part("Content-Disposition: form-data"),
            "without a name",
        ),
        (
            one_part('Content-Disposition: form-data; name=""'),
            "without a name",
        ),
        (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=CallSid\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\nYWJ\r\n--{BOUNDARY}--\r\n",
            "cannot be decoded",
        ),
        (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=CallSid\r\n"
            f"Content-Type: text/plain; charset=nope\r\n\r\nabc\r\n--{BOUNDARY}--\r\n",
            "unknown charset",
        ),
    ],
)
def test_malformed_multipart(body: str, expected: str) -> None:
    error = failure(body.encode(), f"multipart/form-data; boundary={BOUNDARY}")
    assert expected in str(error)


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Disposition: form-data; name=CallSid",
        "Content-Disposition: form-data; name=CallSid\r\nContent-Type: text/plain",
    ],
)
def test_a_part_s_header_of_many_parameters_is_refused_unparsed(headers: str) -> None:
    # Parsed, 1 MiB of parameters took 5 s: email's parameter parsing is quadratic.
    body = one_part(headers + "; a=b" * 200_000).encode()
    started = time.perf_counter()
    error = failure(body, f"multipart/form-data; boundary={BOUNDARY}")
    assert time.perf_counter() - started < 2
    assert "over 1,000 characters" in str(error)


def test_a_content_type_over_1000_characters() -> None:
    assert "printable text" in str(failure(b"{}", "application/json; a=b" + "; a=b" * 200))


def test_a_multipart_name_in_rfc2231_form() -> None:
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name*=utf-8''CallSid\r\n\r\nabc\r\n"
        f"--{BOUNDARY}--\r\n"
    ).encode()
    parsed = parse_call_event(body, f"multipart/form-data; boundary*=utf-8''{BOUNDARY}")
    assert parsed == StatusCallback(call_sid="abc")


def test_an_unread_multipart_part_is_not_decoded() -> None:
    pairs = [("CallSid", SID)]
    body = multipart(pairs)[: -len(f"--{BOUNDARY}--\r\n")] + (
        one_part("Content-Disposition: form-data; name=file; filename=a.bin", "")
        .encode()
        .replace(b"\r\n\r\n", b"\r\n\r\n\xff\xfe\x00binary", 1)
    )
    assert parse_call_event(body, f"multipart/form-data; boundary={BOUNDARY}") == StatusCallback(
        call_sid=SID
    )


# -- the error -----------------------------------------------------------------------------


def test_the_error_is_a_value_error_answered_with_400() -> None:
    error = failure(json.dumps(with_field("ConversationDuration", "x")))
    assert isinstance(error, ValueError)
    assert isinstance(error, CcmError)
    problem = error.to_problem()
    assert problem.status == 400
    assert problem.body["call_sid"] == SID
    copied = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copied) is EventFormatError
    assert str(copied) == str(error)
    assert copied.call_sid == SID


def test_a_call_sid_that_cannot_be_one_is_not_the_error_s() -> None:
    error = failure(json.dumps({"CallSid": "a b/../c", "ConversationDuration": "x"}))
    assert error.call_sid is None


TOKEN = "tok_" + "S3cr3t" * 60

TOKEN_BODIES = [
    (json.dumps(with_field("StartTime", TOKEN)), "application/json"),
    (json.dumps(with_field("ConversationDuration", TOKEN)), "application/json"),
    (json.dumps(with_field("CallSid", TOKEN) | {"Status": 5}), "application/json"),
    (
        json.dumps({TOKEN: 1, "x": 2, TOKEN[:-1] + "!": 3}).replace('"x"', json.dumps(TOKEN)),
        "application/json",
    ),
    (
        json.dumps(
            {
                "event_details": {"event_type": "terminal"},
                "call_details": {"call_sid": TOKEN, "start_time": TOKEN},
            }
        ),
        "application/json",
    ),
    (
        json.dumps(
            {
                "event_details": {"event_type": "terminal"},
                "call_details": {"call_sid": "a", "total_talk_time": TOKEN},
            }
        ),
        "application/json",
    ),
    ("x", f"application/{TOKEN}"),
    ("x", f"text/plain; charset={TOKEN}"),
    ("x", f"application/json; charset={TOKEN}"),
    ("x", f"multipart/form-data; boundary={TOKEN}"),
    (urlencoded([("CallSid", SID), (f"Legs[{TOKEN}]", "x")]), "application/x-www-form-urlencoded"),
    (urlencoded([("CallSid", SID), ("EndTime", TOKEN)]), "application/x-www-form-urlencoded"),
    (urlencoded([("CallSid", SID), ("Legs[0][OnCallDuration]", TOKEN)]), None),
    (
        multipart([("CallSid", SID), ("Legs[0][OnCallDuration]", TOKEN)]),
        f"multipart/form-data; boundary={BOUNDARY}",
    ),
    (
        multipart([("CallSid", SID), (f"Legs[{TOKEN}]", "1")]),
        f"multipart/form-data; boundary={BOUNDARY}",
    ),
    (TOKEN, None),
    ("{" + TOKEN, None),
]


@pytest.mark.parametrize(("body", "content_type"), TOKEN_BODIES)
def test_a_token_in_a_body_is_never_echoed_whole(
    body: str | bytes, content_type: str | None
) -> None:
    error = failure(body, content_type)
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)
    assert TOKEN not in json.dumps(error.to_problem().body)


# -- round trips and to_dict ----------------------------------------------------------------


def test_to_dict_is_json_ready() -> None:
    data = EXPECTED.to_dict()
    assert data["call_sid"] == SID
    assert data["date_updated"] == "2019-06-12T18:07:31+05:30"
    assert data["status"] == "completed"
    assert type(data["status"]) is str
    assert type(data["direction"]) is str
    assert type(data["event_type"]) is str
    assert data["legs"] == [
        {"on_call_duration": 41, "status": "completed", "answered_by": "HUMAN"},
        {"on_call_duration": 0, "status": "no-answer", "answered_by": None},
    ]
    assert json.loads(json.dumps(data)) == data
    assert list(data) == [field.name for field in attrs.fields(StatusCallback)]


text_fields = st.text(min_size=1, max_size=40)


@given(text=text_fields, encoding=st.sampled_from(ENCODINGS))
@settings(max_examples=150, deadline=None)
def test_any_unicode_string_field_comes_back_as_it_was(text: str, encoding: str) -> None:
    document = {
        "CallSid": SID,
        "CustomField": text,
        "From": text,
        "RecordingUrl": text,
        "Legs": [{"AnsweredBy": text}],
    }
    parsed = callback(document, encoding)
    assert parsed.custom_field == parsed.from_number == parsed.recording_url == text
    assert parsed.legs[0].answered_by == text
    assert json.loads(json.dumps(parsed.to_dict()))["custom_field"] == text


# -- fuzz ---------------------------------------------------------------------------------


content_types = st.sampled_from(
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-16",
        "application/json; charset=latin-1",
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=cp1252",
        f"multipart/form-data; boundary={BOUNDARY}",
        "multipart/form-data; boundary=a",
        "text/html",
    ]
) | st.text(max_size=60)
field_names = st.sampled_from(
    [
        "CallSid",
        "Status",
        "StartTime",
        "EndTime",
        "ConversationDuration",
        "Direction",
        "EventType",
        "Legs",
    ]
    + [
        f"Legs[{i}][{k}]"
        for i in (0, 1, 2, 99, 100)
        for k in ("OnCallDuration", "Status", "AnsweredBy")
    ]
) | st.text(max_size=12)
field_values = st.sampled_from(
    ["", "41", "completed", "2019-06-12 18:07:31", "terminal", SID]
) | st.text(max_size=12)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with any of its parts replaced by arbitrary JSON, nulled or dropped."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(json_values)
    if choice == 1:
        return None
    if isinstance(value, dict):
        return {key: draw(mutated(item)) for key, item in value.items() if draw(st.integers(0, 11))}
    if isinstance(value, list):
        return [draw(mutated(item)) for item in value]
    return value


def check_outcome(body: object, content_type: object) -> None:
    try:
        parsed = parse_call_event(body, content_type)  # type: ignore[arg-type]
    except EventFormatError as exc:
        assert_bounded(exc)
        return
    assert isinstance(parsed, CallEvent | StatusCallback)
    json.dumps(parsed.to_dict())
    assert parsed.call_sid.strip()


@given(body=st.binary(max_size=300), content_type=content_types)
@settings(max_examples=300, deadline=None)
@example(body=b"\xff\xfe{\x00}\x00", content_type="application/json")
@example(body=b"CallSid=a&Legs[0][Status]=x", content_type="multipart/form-data; boundary=a")
def test_fuzz_random_bytes(body: bytes, content_type: str | None) -> None:
    check_outcome(body, content_type)


@given(value=json_values, content_type=st.sampled_from([None, "application/json"]))
@settings(max_examples=300, deadline=None)
def test_fuzz_random_json_values(value: Any, content_type: str | None) -> None:
    check_outcome(json.dumps(value), content_type)
    check_outcome(json.dumps(value).encode("utf-16"), "application/json; charset=utf-16")


@given(pairs=st.lists(st.tuples(field_names, field_values), max_size=12), multi=st.booleans())
@settings(max_examples=300, deadline=None)
def test_fuzz_random_form_pairs(pairs: list[tuple[str, str]], multi: bool) -> None:
    if multi:
        safe = [
            (name.replace('"', "").replace("\r", "").replace("\n", ""), value)
            for name, value in pairs
        ]
        check_outcome(multipart(safe), f"multipart/form-data; boundary={BOUNDARY}")
    else:
        check_outcome(urlencoded(pairs), "application/x-www-form-urlencoded")
        check_outcome("&".join(f"{name}={value}" for name, value in pairs), None)


@given(
    document=st.sampled_from([CALLBACK, EVENT]).map(copy.deepcopy).flatmap(mutated),
    encoding=st.sampled_from(ENCODINGS),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_valid_payloads(document: Any, encoding: str) -> None:
    if encoding == "json" or not isinstance(document, dict):
        check_outcome(json.dumps(document), "application/json")
        return
    pairs = [
        (key, json.dumps(value) if isinstance(value, dict | list) else str(value))
        for key, value in document.items()
        if key != "Legs"
    ]
    legs = document.get("Legs")
    if isinstance(legs, list):
        pairs += [
            (f"Legs[{index}][{key}]", str(value))
            for index, leg in enumerate(legs)
            if isinstance(leg, dict)
            for key, value in leg.items()
        ]
    pairs = [(name.replace('"', ""), value) for name, value in pairs]
    if encoding == "urlencoded":
        check_outcome(urlencoded(pairs), "application/x-www-form-urlencoded")
    else:
        check_outcome(multipart(pairs), f"multipart/form-data; boundary={BOUNDARY}")


@given(cut=st.integers(0, 2000), encoding=st.sampled_from(ENCODINGS), flip=st.integers(0, 255))
@settings(max_examples=200, deadline=None)
def test_fuzz_truncated_and_flipped_payloads(cut: int, encoding: str, flip: int) -> None:
    body, content_type = encoded(CALLBACK, encoding)
    truncated = body[: cut % (len(body) + 1)]
    check_outcome(truncated, content_type)
    if body:
        position = cut % len(body)
        flipped = body[:position] + bytes([body[position] ^ flip]) + body[position + 1 :]
        check_outcome(flipped, content_type)
