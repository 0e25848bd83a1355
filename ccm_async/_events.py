"""Exotel's call events: the body of a webhook request, parsed.

Two shapes reach a webhook, told apart by their keys:

* A **call event** (CCM's event webhook): a JSON object with ``event_details``
  (its ``event_type``, ``answered`` or ``terminal``) and ``call_details``, the call
  in Get Call Details v2's shape, read by the same strict converter as a lookup's
  ``response.data`` (a wrong-typed field is named as ``$.call_details.start_time``).
  It becomes a :class:`CallEvent`.
* A **status callback** (Exotel v1's ``StatusCallback``): CamelCase fields
  (``CallSid``, ``Status``, ``DateUpdated``, ``Legs``...), as JSON or as a form,
  urlencoded or multipart (a field is named as ``$.Legs[0].Status`` in JSON,
  ``Legs[0][Status]`` in a form). It becomes a :class:`StatusCallback`.

What is tolerated, and what is not:

* The content type picks the parser: ``application/json`` (and ``application/*+json``),
  ``application/x-www-form-urlencoded`` and ``multipart/form-data``, names and
  parameters in any case. A ``charset`` parameter is honoured (JSON without one:
  UTF-8, UTF-16 or UTF-32 as detected; a form: UTF-8); a leading BOM is dropped.
  Without a content type, a body whose first character (after a BOM and spaces)
  is ``{`` is JSON, any other a urlencoded form.
* Keys this library does not read are ignored; a key it reads given twice (in a
  form, or in one JSON object) is an error, never a guess at which one counts.
* In a status callback, an empty string is None; integers may come as numbers or
  as strings of digits, and strings as integers (``_convert``'s rules for the API).
  Times are ``YYYY-MM-DD HH:mm:ss`` in India time (read as +05:30) or ISO 8601
  with an offset; ``0000-00-00 00:00:00`` (no time yet) is None.
* A status, direction or event type this library does not know is kept as the
  plain string, as in :class:`CallDetails`.
* A form's legs are ``Legs[i][Field]``, ``i`` from 0 without gaps (a gap is an
  error: a leg lost on the way is not silently renumbered).
* Limits: 1 MiB of body, 100 legs, 1,000 form fields (or multipart parts), the
  JSON parser's nesting depth.

Anything else is an :class:`EventFormatError`: one bounded line naming the path of
what was wrong, never the body.
"""

# Annotations are evaluated here, as in _models: the classes are shown as ccm_async.X.
import codecs
import datetime as dt
import enum
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any, Final, NoReturn, cast

import attrs

from ccm_async._config import MAX_BODY_BYTES, validate_call_sid
from ccm_async._convert import (
    known_or_str,
    structure_call,
    structure_datetime,
    structure_int,
    structure_str,
)
from ccm_async._errors import (
    CcmError,
    EventFormatError,
    ResponseFormatError,
    one_line,
    shown,
)
from ccm_async._models import CallDetails, CallStatus, Direction

__all__ = ["CallEvent", "CallEventType", "Leg", "StatusCallback", "parse_call_event"]

MAX_LEGS: Final = 100
MAX_FORM_FIELDS: Final = 1000
IST: Final = dt.timezone(dt.timedelta(hours=5, minutes=30))
_MESSAGE_LIMIT: Final = 1000
_HEADER_LIMIT: Final = 1000
# The charsets a body is read in: codecs that loop in C, in time linear in the
# body. Others are refused, whatever Python knows: punycode, a pure-Python codec,
# took two minutes on 1 MiB.
_CHARSETS: Final = re.compile(
    r"utf-(8|16|32)(-sig|-le|-be)?|ascii|iso8859-[0-9]+|cp125[0-8]|koi8-[ru]"
    r"|shift_jis|euc_jp|euc_kr|gb2312|gbk|gb18030|big5|cp932|cp949|cp950"
)
# UTF-32's little-endian BOM begins with UTF-16's.
_UNICODE_BOMS: Final = (
    codecs.BOM_UTF8,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
    codecs.BOM_UTF32_BE,
)

_JSON: Final = "application/json"
_FORM: Final = "application/x-www-form-urlencoded"
_MULTIPART: Final = "multipart/form-data"
_TCHARS: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE: Final = re.compile(rf"{_TCHARS}/{_TCHARS}")
_HEADER_TEXT: Final = re.compile(rf"[\t\x20-\x7e]{{1,{_HEADER_LIMIT}}}")
_BOUNDARY: Final = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")
_INDIA_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
# What a SID may be, as get_call has it: a SID an event gives is one to look up.
_NOT_A_SID: Final = "'{}' is not a call SID (1-64 letters, digits, '_' and '-')"
_NO_TIME: Final = "0000-00-00 00:00:00"
_LEG_KEY: Final = re.compile(r"Legs\[(0|[1-9][0-9]{0,5})\]\[([A-Za-z]{1,40})\]")


class CallEventType(enum.StrEnum):
    """Known values of a call event's ``event_type`` (and a status callback's ``EventType``)."""

    ANSWERED = "answered"
    TERMINAL = "terminal"


def _jsonable(_: object, __: object, value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.StrEnum):
        return value.value
    return value


@attrs.frozen(kw_only=True)
class Leg:
    """One leg of a status callback's call (``Legs``): its talk time in seconds
    (``OnCallDuration``), its ``Status`` and who answered (``AnsweredBy``)."""

    on_call_duration: int | None = None
    status: CallStatus | str | None = None
    answered_by: str | None = None


@attrs.frozen(kw_only=True)
class CallEvent:
    """A CCM call event: what happened (``event_type``) and the call as it is then,
    in the shape Get Call Details returns (``call``, whose ``call_sid`` is set)."""

    event_type: CallEventType | str
    call: CallDetails

    def __attrs_post_init__(self) -> None:
        if not self.call.call_sid:
            raise ValueError("a CallEvent's call has a call_sid")

    @property
    def call_sid(self) -> str:
        """The SID of the call the event is about."""
        return cast("str", self.call.call_sid)

    @property
    def is_terminal(self) -> bool:
        """True for the event sent when the call ended: its details no longer change."""
        return self.event_type == CallEventType.TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: ``event_type`` as a plain string and ``call`` as
        :meth:`CallDetails.to_dict` gives it. ``json.dumps(event.to_dict())`` always works."""
        return {"event_type": _jsonable(None, None, self.event_type), "call": self.call.to_dict()}


@attrs.frozen(kw_only=True)
class StatusCallback:
    """Exotel v1's status callback about one call (``CallSid``).

    Times are timezone-aware (Exotel's India time is +05:30); durations are whole
    seconds; ``status``, ``event_type`` and ``direction`` hold a known member or the
    plain string Exotel sent; a field Exotel left empty or did not send is None.
    ``event_type`` is None in the plain callback, which Exotel sends when the call ends.
    """

    call_sid: str
    status: CallStatus | str | None = None
    date_updated: dt.datetime | None = None
    date_created: dt.datetime | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    recording_url: str | None = None
    event_type: CallEventType | str | None = None
    conversation_duration: int | None = None
    direction: Direction | str | None = None
    from_number: str | None = None
    to_number: str | None = None
    phone_number_sid: str | None = None
    custom_field: str | None = None
    legs: tuple[Leg, ...] = ()

    @property
    def is_terminal(self) -> bool:
        """True when the call has ended: the plain callback (no ``EventType``) or a
        ``terminal`` event."""
        return self.event_type is None or self.event_type == CallEventType.TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data by the attributes' names: ISO 8601 times with their offset,
        enum members as their string values, ``legs`` as a list of objects.
        ``json.dumps(callback.to_dict())`` always works."""
        data = attrs.asdict(self, recurse=False, value_serializer=_jsonable)
        data["legs"] = [attrs.asdict(leg, value_serializer=_jsonable) for leg in self.legs]
        return data


# -- reading -----------------------------------------------------------------------


def parse_call_event(
    body: bytes | bytearray | memoryview | str, content_type: str | None = None
) -> CallEvent | StatusCallback:
    """The call event or status callback a webhook request's ``body`` holds.

    ``content_type`` is the request's ``Content-Type`` header: JSON, a urlencoded
    form or ``multipart/form-data``, its ``charset`` honoured (None or empty: the
    body's first character decides, ``{`` for JSON, else a urlencoded form). A JSON
    object with ``event_details`` or ``call_details`` is a :class:`CallEvent`; one
    with ``CallSid``, or a form, a :class:`StatusCallback`. Keys not read are
    ignored, a key read twice is refused, an empty string is None, and a time as
    ``YYYY-MM-DD HH:mm:ss`` is India time (+05:30), any other ISO 8601 with an offset.

    A body that is neither shape, is not readable as its content type says, or is
    over a limit (1 MiB, 100 legs, 1,000 form fields) raises :class:`EventFormatError`
    (a ``ValueError``, answered with 400 by ``to_problem()``), and nothing else does.
    """
    data = _body_data(body)
    media, params = _media_type(content_type)
    if media is None:
        media = _JSON if _looks_like_json(data) else _FORM
    charset = params.get("charset")
    if media == _JSON or (media.startswith("application/") and media.endswith("+json")):
        return _from_document(_json_document(data, charset))
    if media == _FORM:
        return _status_callback(_form_document(_urlencoded_pairs(data, charset)), form=True)
    if media == _MULTIPART:
        pairs = _multipart_pairs(data, cast("str", content_type), params.get("boundary"))
        return _status_callback(_form_document(pairs), form=True)
    raise _error(
        f"unsupported content type '{shown(media)}': expected {_JSON}, {_FORM} or {_MULTIPART}"
    )


def _error(message: str, *, call_sid: str | None = None) -> EventFormatError:
    return EventFormatError(one_line(message, _MESSAGE_LIMIT), call_sid=call_sid)


def _fail(message: str, *, call_sid: str | None = None) -> NoReturn:
    raise _error(message, call_sid=call_sid)


def _body_data(body: object) -> bytes | str:
    if isinstance(body, bytes):
        _check_size(len(body))
        return body
    if isinstance(body, str):
        # Its size as it came, in UTF-8: a character may be up to four bytes.
        if len(body) > MAX_BODY_BYTES // 4:
            _check_size(len(body.encode("utf-8", "surrogatepass")))
        return body
    if isinstance(body, bytearray):
        _check_size(len(body))
        return bytes(body)
    if isinstance(body, memoryview):
        try:
            size = body.nbytes
        except ValueError:  # released
            _fail("body is a released memoryview")
        _check_size(size)
        return body.tobytes()
    _fail(f"body must be bytes or str, got {type(body).__name__}")


def _check_size(size: int) -> None:
    if size > MAX_BODY_BYTES:
        _fail(f"body is larger than {MAX_BODY_BYTES:,} bytes ({size:,})")


def _media_type(content_type: object) -> tuple[str | None, dict[str, str]]:
    """The media type, lowercased, and the parameters by lowercased name."""
    if content_type is None:
        return None, {}
    if not isinstance(content_type, str):
        _fail(f"content_type must be a string or None, got {type(content_type).__name__}")
    if not content_type.strip():
        return None, {}
    if not _HEADER_TEXT.fullmatch(content_type):
        _fail(f"content type is not a header's printable text: '{shown(content_type)}'")
    media = content_type.partition(";")[0].strip()
    if not _MEDIA_TYPE.fullmatch(media):
        _fail(f"malformed content type '{shown(content_type)}'")
    return media.lower(), _parameters(content_type)


def _parameters(content_type: str) -> dict[str, str]:
    header = Message()
    header["content-type"] = content_type
    params: dict[str, str] = {}
    for name in ("charset", "boundary"):
        value = header.get_param(name)
        if isinstance(value, tuple):  # RFC 2231's charset'language'value
            value = value[2]
        if isinstance(value, str) and value:
            params[name] = value
    return params


def _looks_like_json(data: bytes | str) -> bool:
    if isinstance(data, str):
        return data.removeprefix("\ufeff").lstrip()[:1] == "{"
    if data.startswith(_UNICODE_BOMS):
        return _decoded(data[:64], json.detect_encoding(data), partial=True).lstrip()[:1] == "{"
    return data.lstrip()[:1] == b"{"


def _codec(charset: str) -> codecs.CodecInfo:
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        _fail(f"unknown charset '{shown(charset)}'")
    if not _CHARSETS.fullmatch(codec.name):
        _fail(f"unsupported charset '{shown(charset)}': not one of the Unicode or legacy sets")
    return codec


def _decoded(data: bytes, charset: str, *, partial: bool = False) -> str:
    """``data`` as text in ``charset``; ``partial``: it may end inside a character."""
    codec = _codec(charset)
    try:
        return codec.incrementaldecoder().decode(data, final=not partial)
    except (UnicodeError, ValueError, TypeError):  # a codec's own failures
        _fail(f"body is not text in charset '{shown(charset)}'")


def _json_document(data: bytes | str, charset: str | None) -> dict[str, Any]:
    if isinstance(data, bytes):
        data = _decoded(data, charset or json.detect_encoding(data))
    try:
        document = json.loads(data.removeprefix("\ufeff"), object_pairs_hook=_unique_keys)
    except RecursionError:
        _fail("JSON body is nested too deeply")
    except json.JSONDecodeError as exc:
        # Not chained: the parser's exception holds the whole document.
        _fail(f"body is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
    except ValueError as exc:  # an integer over Python's 4,300 digits, a duplicate key
        _fail(f"body is not JSON this library reads: {exc}")
    if not isinstance(document, dict):
        _fail(f"JSON body is not an object but {type(document).__name__}")
    return cast("dict[str, Any]", document)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"key '{shown(key)}' given twice in one object")
        document[key] = value
    return document


def _from_document(document: dict[str, Any]) -> CallEvent | StatusCallback:
    if "event_details" in document or "call_details" in document:
        return _call_event(document)
    if "CallSid" in document:
        return _status_callback(document, form=False)
    _fail(
        "neither a call event (no event_details or call_details) nor a status callback (no CallSid)"
    )


def _object(value: object) -> dict[str, object]:
    """A JSON object as it is, anything else as an empty one."""
    return cast("dict[str, object]", value) if isinstance(value, dict) else {}


def _sid_hint(value: object) -> str | None:
    """``value`` when it can be a call SID: what the error's ``call_sid`` says."""
    try:
        return validate_call_sid(value)
    except CcmError:
        return None


# -- a call event ----------------------------------------------------------------------


def _call_event(document: dict[str, Any]) -> CallEvent:
    raw_call: object = document.get("call_details")
    sid = _sid_hint(_object(raw_call).get("call_sid"))
    event_type = _event_type(document.get("event_details"), sid)
    if raw_call is None:
        _fail("invalid call event: required field missing @ $.call_details", call_sid=sid)
    try:
        call = structure_call(raw_call, path="$.call_details")
    except ResponseFormatError as exc:
        raise EventFormatError(str(exc), call_sid=sid) from None
    if call.call_sid is None or not call.call_sid.strip():
        _fail("invalid call event: required field missing @ $.call_details.call_sid")
    if sid is None:
        path = "$.call_details.call_sid"
        _fail(f"invalid call event: {_NOT_A_SID.format(shown(call.call_sid))} @ {path}")
    return CallEvent(event_type=event_type, call=call)


_event_type_of: Final = known_or_str(CallEventType)


def _event_type(details: object, sid: str | None) -> CallEventType | str:
    path = "$.event_details"
    if details is None:
        _fail(f"invalid call event: required field missing @ {path}", call_sid=sid)
    if not isinstance(details, dict):
        _fail(
            f"invalid call event: expected an object, got {type(details).__name__} @ {path}",
            call_sid=sid,
        )
    raw = cast("dict[str, object]", details).get("event_type")
    value = _read(_event_type_of, raw, f"{path}.event_type", sid, what="call event")
    if value is None or not value.strip():
        _fail(f"invalid call event: required field missing @ {path}.event_type", call_sid=sid)
    return cast("CallEventType | str", value)


# -- a status callback -----------------------------------------------------------------


def _structure_time(value: object, _: object) -> dt.datetime | None:
    """Exotel's India time (``YYYY-MM-DD HH:mm:ss``), or ISO 8601 with an offset."""
    if value == _NO_TIME:
        return None
    if isinstance(value, str) and _INDIA_TIME.fullmatch(value):
        try:
            return dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST)
        except ValueError:
            raise ValueError(f"not a date and time: {value!r}") from None
    return structure_datetime(value, _)


Hook = Callable[[object, object], object]

# attribute: (Exotel's key, how its value is read)
_CALLBACK_FIELDS: Final[dict[str, tuple[str, Hook]]] = {
    "status": ("Status", known_or_str(CallStatus)),
    "date_updated": ("DateUpdated", _structure_time),
    "date_created": ("DateCreated", _structure_time),
    "start_time": ("StartTime", _structure_time),
    "end_time": ("EndTime", _structure_time),
    "recording_url": ("RecordingUrl", structure_str),
    "event_type": ("EventType", _event_type_of),
    "conversation_duration": ("ConversationDuration", structure_int),
    "direction": ("Direction", known_or_str(Direction)),
    "from_number": ("From", structure_str),
    "to_number": ("To", structure_str),
    "phone_number_sid": ("PhoneNumberSid", structure_str),
    "custom_field": ("CustomField", structure_str),
}
_LEG_FIELDS: Final[dict[str, tuple[str, Hook]]] = {
    "on_call_duration": ("OnCallDuration", structure_int),
    "status": ("Status", known_or_str(CallStatus)),
    "answered_by": ("AnsweredBy", structure_str),
}
_FORM_KEYS: Final = frozenset({"CallSid", *(key for key, _ in _CALLBACK_FIELDS.values())})


def _read(
    hook: Hook, value: object, path: str, sid: str | None, *, what: str = "status callback"
) -> Any:
    """``value`` read by ``hook``; an empty string is None, as null is."""
    if value is None or value == "":
        return None
    try:
        return hook(value, None)
    except (TypeError, ValueError) as exc:
        _fail(f"invalid {what}: {exc} @ {path}", call_sid=sid)


def _field_path(key: str, *, form: bool) -> str:
    return key if form else f"$.{key}"


def _leg_path(index: int, key: str | None, *, form: bool) -> str:
    if key is None:
        return f"Legs[{index}]" if form else f"$.Legs[{index}]"
    return f"Legs[{index}][{key}]" if form else f"$.Legs[{index}].{key}"


def _status_callback(fields: Mapping[str, Any], *, form: bool) -> StatusCallback:
    path = _field_path("CallSid", form=form)
    call_sid = _read(structure_str, fields.get("CallSid"), path, None)
    if call_sid is None or not call_sid.strip():
        _fail(f"invalid status callback: required field missing @ {path}")
    sid = _sid_hint(call_sid)
    if sid is None:
        _fail(f"invalid status callback: {_NOT_A_SID.format(shown(call_sid))} @ {path}")
    values = {
        name: _read(hook, fields.get(key), _field_path(key, form=form), sid)
        for name, (key, hook) in _CALLBACK_FIELDS.items()
    }
    legs = _legs(fields.get("Legs"), sid, form=form)
    return StatusCallback(call_sid=sid, legs=legs, **values)


def _legs(value: object, sid: str | None, *, form: bool) -> tuple[Leg, ...]:
    path = _field_path("Legs", form=form)
    if value is None:
        return ()
    if not isinstance(value, list):
        _fail(
            f"invalid status callback: expected a list of legs, got {type(value).__name__}"
            f" @ {path}",
            call_sid=sid,
        )
    legs = cast("list[object]", value)
    if len(legs) > MAX_LEGS:
        _fail(f"invalid status callback: more than {MAX_LEGS} legs @ {path}", call_sid=sid)
    return tuple(_leg(index, leg, sid, form=form) for index, leg in enumerate(legs))


def _leg(index: int, value: object, sid: str | None, *, form: bool) -> Leg:
    if not isinstance(value, dict):
        _fail(
            f"invalid status callback: expected an object, got {type(value).__name__}"
            f" @ {_leg_path(index, None, form=form)}",
            call_sid=sid,
        )
    leg = cast("dict[str, object]", value)
    return Leg(
        **{
            name: _read(hook, leg.get(key), _leg_path(index, key, form=form), sid)
            for name, (key, hook) in _LEG_FIELDS.items()
        }
    )


# -- forms -------------------------------------------------------------------------


def _is_read(name: str) -> bool:
    return name in _FORM_KEYS or name == "Legs" or name.startswith("Legs[")


def _urlencoded_pairs(data: bytes | str, charset: str | None) -> list[tuple[str, str]]:
    charset = charset or "utf-8"
    text = (data if isinstance(data, str) else _decoded(data, charset)).removeprefix("\ufeff")
    if text.count("&") >= MAX_FORM_FIELDS:
        _fail(f"more than {MAX_FORM_FIELDS:,} form fields")
    encoding = _codec(charset).name  # its %-escapes are bytes in it
    try:
        return urllib.parse.parse_qsl(
            text, keep_blank_values=True, encoding=encoding, errors="strict"
        )
    except ValueError:  # a %-escape that is not text in the charset
        _fail(f"form body is not text in charset '{shown(charset)}'")


def _form_document(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """A form's fields as a status callback's JSON would have them: its legs as a list."""
    sid = _sid_hint(next((value for name, value in pairs if name == "CallSid"), None))
    document: dict[str, Any] = {}
    legs: dict[int, dict[str, str]] = {}
    for name, value in pairs:
        if name == "Legs":
            _fail("invalid status callback: expected Legs[i][Field] fields @ Legs", call_sid=sid)
        if name.startswith("Legs["):
            _add_leg_field(legs, name, value, sid)
        elif name in _FORM_KEYS:
            if name in document:
                _fail(f"invalid status callback: field given twice @ {name}", call_sid=sid)
            document[name] = value
    if legs:
        document["Legs"] = _numbered(legs, sid)
    return document


def _add_leg_field(legs: dict[int, dict[str, str]], name: str, value: str, sid: str | None) -> None:
    match = _LEG_KEY.fullmatch(name)
    if match is None:
        _fail(f"invalid status callback: malformed leg field '{shown(name)}'", call_sid=sid)
    index, key = int(match[1]), match[2]
    if index >= MAX_LEGS:
        _fail(f"invalid status callback: more than {MAX_LEGS} legs @ {name}", call_sid=sid)
    leg = legs.setdefault(index, {})
    if key in leg:
        _fail(f"invalid status callback: field given twice @ {name}", call_sid=sid)
    leg[key] = value


def _numbered(legs: dict[int, dict[str, str]], sid: str | None) -> list[dict[str, str]]:
    for index in range(len(legs)):
        if index not in legs:  # numbered from 0 without gaps: a lost leg is not renumbered
            _fail(f"invalid status callback: required field missing @ Legs[{index}]", call_sid=sid)
    return [legs[index] for index in range(len(legs))]


def _multipart_pairs(
    data: bytes | str, content_type: str, boundary: str | None
) -> list[tuple[str, str]]:
    if boundary is None or not _BOUNDARY.fullmatch(boundary):
        _fail(f"multipart/form-data without a valid boundary: '{shown(content_type)}'")
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    # Bounded before parsing: each field is a part, each part follows a delimiter.
    if data.count(b"--" + boundary.encode()) > MAX_FORM_FIELDS + 1:
        _fail(f"more than {MAX_FORM_FIELDS:,} form fields")
    message = _parsed_multipart(data, content_type)
    return [
        (name, _part_text(part, name))
        for part in cast("list[Message]", message.get_payload())
        if _is_read(name := _part_name(part))
    ]


def _parsed_multipart(data: bytes, content_type: str) -> Message:
    from email.parser import BytesParser  # noqa: PLC0415 - only a multipart body needs it

    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("ascii")
    # compat32 (the default): no structured header parsing, which has raised more
    # than ValueError on malformed headers.
    message = BytesParser().parsebytes(head + data)
    defects = [defect for part in message.walk() for defect in part.defects]
    if defects or not message.is_multipart():
        reason = type(defects[0]).__name__ if defects else "no parts"
        _fail(f"malformed multipart body: {reason}")
    return message


def _part_name(part: Message) -> str:
    if part.is_multipart():
        _fail("malformed multipart body: a part is itself multipart (nested too deeply)")
    for header in ("content-disposition", "content-type"):
        # email's parameter parsing is quadratic in their number: 1 MiB of them took 5 s.
        if len(str(part.get(header, ""))) > _HEADER_LIMIT:
            _fail(
                f"malformed multipart body: a part's {header} is over {_HEADER_LIMIT:,} characters"
            )
    disposition = part.get("content-disposition")
    if not isinstance(disposition, str) or disposition.partition(";")[0].strip().lower() != (
        "form-data"
    ):
        _fail("malformed multipart body: a part is not form-data")
    name = part.get_param("name", header="content-disposition")
    if isinstance(name, tuple):  # RFC 2231's charset'language'value
        name = name[2]
    if not isinstance(name, str) or not name:
        _fail("malformed multipart body: a part without a name")
    return name


def _part_text(part: Message, name: str) -> str:
    payload = part.get_payload(decode=True)
    if part.defects or not isinstance(payload, bytes):
        _fail(f"malformed multipart body: the part of {shown(name)} cannot be decoded")
    return _decoded(payload, part.get_content_charset() or "utf-8")
