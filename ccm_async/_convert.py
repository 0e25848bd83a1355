"""The library's own cattrs converter and the decoding of a response body.

The global cattrs converter is never touched. Hooks are strict where cattrs'
defaults coerce silently (a dict into its repr, 7.9 into 7, True into 1):
a wrong-typed field raises :class:`ResponseFormatError` naming the field's path.
The converter and its generated structure functions are built once, on first
use: cattrs loads with the first call decoded, not with ccm_async.

Both API versions give the same :class:`CallDetails`. v2's ``response.data`` has
the library's field names; v3's ``response.call_details`` renames three of them
(``sid``, ``state``, ``status``) and adds ``legs`` (``legs_url``); the other
fields keep their shared names, and a field a version does not send stays None.
A timestamp at the Unix epoch is v3's placeholder for "not yet" (an active
call's ``end_time``) and is read as None, in either version.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import re
from collections.abc import Callable, Mapping, Sized
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeGuard, TypeVar, cast

import attrs

from ccm_async._errors import ApiError, ErrorAnswer, ResponseFormatError, api_error, shown
from ccm_async._models import (
    AgentDetails,
    CallDetails,
    CallState,
    CallStatus,
    CustomerDetails,
    Direction,
    Recording,
)

if TYPE_CHECKING:
    import cattrs

__all__ = [
    "API_VERSIONS",
    "MAX_RECORDINGS",
    "V3_KEYS",
    "ApiVersion",
    "call_from_dict",
    "call_to_dict",
    "converter",
    "decode_response",
    "known_or_str",
    "loads",
    "structure_call",
    "structure_datetime",
    "structure_int",
    "structure_str",
]

ApiVersion = Literal["v2", "v3"]
MAX_RECORDINGS: Final = 1000
"""The most recordings a call is read with (a call has one per leg, or a few)."""
API_VERSIONS: Final[tuple[ApiVersion, ...]] = ("v2", "v3")

_E = TypeVar("_E", bound=enum.StrEnum)
_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,18}")
_TEXT_LIMIT: Final = 2000
_UNIX_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Where each version puts the call.
_PAYLOAD_KEYS: Final[dict[ApiVersion, str]] = {"v2": "data", "v3": "call_details"}
V3_KEYS: Final = {  # v3's names of the fields it renamed or added, by attribute
    "call_sid": "sid",
    "call_state": "state",
    "call_status": "status",
    "legs_url": "legs",
}


def _reject(value: object, expected: str) -> NoReturn:
    raise TypeError(f"expected {expected}, got {type(value).__name__}")


def structure_str(value: object, _: object) -> str:
    """A string field: a string, or an integer's exact digits; else TypeError."""
    # An integer identifier (a flow's app_id, say) keeps its exact digits.
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    _reject(value, "a string")


def structure_int(value: object, _: object) -> int:
    """An integer field: an int, a whole float, or a string of up to 18 digits (a sign
    and spaces around allowed); never a bool. Else TypeError or ValueError."""
    if isinstance(value, bool):
        _reject(value, "an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, float | str):
        raise ValueError(f"expected a whole number, got {value!r:.40}")
    _reject(value, "an integer")


def structure_datetime(value: object, _: object) -> dt.datetime:
    """An ISO 8601 string with a UTC offset, as an aware datetime; else TypeError or
    ValueError (a naive timestamp too)."""
    if not isinstance(value, str):
        _reject(value, "an ISO 8601 timestamp")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r:.40}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {value!r:.40}")
    return parsed


def _structure_moment(value: object, _: object) -> dt.datetime | None:
    if value is None:
        return None
    parsed = structure_datetime(value, _)
    return None if parsed == _UNIX_EPOCH else parsed


def known_or_str(enum_cls: type[_E]) -> Callable[[object, object], _E | str | None]:
    """A hook for an open enum: a known value as its member, an unknown string as it
    is, None as None; anything else a TypeError."""
    known: dict[str, _E] = {member.value: member for member in enum_cls}

    def structure(value: object, _: object) -> _E | str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            _reject(value, "a string")
        return known.get(value, value)

    return structure


def _null_as_empty(
    sequence_hook: Callable[[Any, Any], tuple[Recording, ...]],
) -> Callable[[object, Any], tuple[Recording, ...]]:
    def structure(value: object, type_: Any) -> tuple[Recording, ...]:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            _reject(value, "a list of recordings")
        # Bounded before cattrs reads them: it builds an exception for each bad
        # item, and 1 MiB of them took seconds.
        count = len(cast("Sized", value))
        if count > MAX_RECORDINGS:
            raise ValueError(f"more than {MAX_RECORDINGS:,} recordings ({count:,})")
        return sequence_hook(value, type_)

    return structure


@functools.cache
def converter() -> cattrs.Converter:
    """The library's own converter, built on first use."""
    import cattrs  # noqa: PLC0415 - with its generated hooks, a third of ccm_async's import

    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(dt.datetime, structure_datetime)
    conv.register_unstructure_hook(dt.datetime, dt.datetime.isoformat)
    _register_exact(conv, dt.datetime | None, _structure_moment)
    for enum_cls in (CallState, Direction, CallStatus):
        _register_exact(conv, enum_cls | str | None, known_or_str(enum_cls))
        conv.register_unstructure_hook(enum_cls, _plain_str)
    # Leaves first: a generated function binds its fields' hooks when it is made.
    for cls in (Recording, AgentDetails, CustomerDetails):
        _register_class(conv, cls)
    recordings = tuple[Recording, ...]
    _register_exact(conv, recordings, _null_as_empty(conv.get_structure_hook(recordings)))
    # The class's own hook reads v2 (no legs); v3's is made on its own (_call_details).
    _register_class(conv, CallDetails, legs_url=_override(omit=True))
    return conv


def _plain_str(member: enum.StrEnum) -> str:
    return member.value


def _override(**options: Any) -> Any:
    from cattrs.gen import override  # noqa: PLC0415 - loaded with the converter

    return override(**options)


def _register_class(conv: cattrs.Converter, cls: type[Any], **overrides: Any) -> None:
    from cattrs.gen import make_dict_unstructure_fn  # noqa: PLC0415

    conv.register_structure_hook(cls, _structure_fn(conv, cls, **overrides))
    conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv))


def _structure_fn(conv: cattrs.Converter, cls: type[Any], **overrides: Any) -> Any:
    from cattrs.gen import make_dict_structure_fn  # noqa: PLC0415

    return _strict_mapping(make_dict_structure_fn(cls, conv, **overrides))


def _register_exact(conv: cattrs.Converter, type_: object, hook: Callable[..., Any]) -> None:
    # Unions and parametrised tuples are not classes: dispatch on equality.
    conv.register_structure_hook_func(lambda candidate: candidate == type_, hook)


def _strict_mapping(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    # The generated function would try `obj["field"]` on a list or a string.
    def structure(value: Any, cls: Any) -> Any:
        if not isinstance(value, Mapping):
            _reject(value, "an object")
        return fn(value, cls)

    return structure


@functools.cache
def _call_details(api_version: ApiVersion) -> Callable[[Any, type[CallDetails]], CallDetails]:
    conv = converter()
    if api_version == "v2":
        return conv.get_structure_hook(CallDetails)
    renames = {name: _override(rename=key) for name, key in V3_KEYS.items()}
    return _structure_fn(conv, CallDetails, **renames)  # type: ignore[no-any-return]


def structure_call(data: object, *, path: str = "$", api_version: ApiVersion = "v2") -> CallDetails:
    """Structure the call object of ``api_version`` (v2's ``data``, v3's
    ``call_details``); errors name the bad field's path by that version's names."""
    renamed = V3_KEYS if api_version == "v3" else {}
    return _structured(_call_details(api_version), data, path, renamed)


def call_from_dict(data: object) -> CallDetails:
    """:meth:`CallDetails.from_dict`: v2's names, and ``legs_url``, which only v3 sends."""
    return _structured(_every_field(), data, "$", {})


def call_to_dict(call: CallDetails) -> dict[str, Any]:
    """The API's JSON shape of a call (ISO 8601 strings, enum values as plain strings,
    lists), ready for ``json.dumps``."""
    return converter().unstructure(call, CallDetails)  # type: ignore[no-any-return]


@functools.cache
def _every_field() -> Callable[[Any, type[CallDetails]], CallDetails]:
    return _structure_fn(converter(), CallDetails)  # type: ignore[no-any-return]


def _structured(
    hook: Callable[[Any, type[CallDetails]], CallDetails],
    data: object,
    path: str,
    renamed: Mapping[str, str],
) -> CallDetails:
    try:
        return hook(data, CallDetails)
    # cattrs' validation errors are ExceptionGroups (BaseValidationError). Not
    # chained: the message names each bad field, and the group of exceptions (with
    # their tracebacks) would make every kept error heavy.
    except (ExceptionGroup, TypeError, ValueError) as exc:
        raise ResponseFormatError(_describe(exc, path, renamed)) from None


def _describe(exc: Exception, path: str, renamed: Mapping[str, str]) -> str:
    import cattrs  # noqa: PLC0415 - loaded by then: the converter raised exc

    if isinstance(exc, cattrs.BaseValidationError):
        problems = cattrs.transform_error(exc, path=path, format_exception=_format_problem)
        problems = [_key_path(problem, path, renamed) for problem in problems]
    else:
        problems = [f"{exc} @ {path}"]
    shown = "; ".join(problems[:5])
    if len(problems) > 5:
        shown += f"; and {len(problems) - 5} more"
    return f"invalid call details: {shown}"


def _key_path(problem: str, path: str, renamed: Mapping[str, str]) -> str:
    # cattrs names a renamed field by its attribute; the body has it by its key.
    # The renamed fields are leaves, so their path ends the problem's text.
    for name, key in renamed.items():
        suffix = f" @ {path}.{name}"
        if problem.endswith(suffix):
            return problem[: -len(suffix)] + f" @ {path}.{key}"
    return problem


def _format_problem(exc: BaseException, type_: Any) -> str:
    from cattrs.v import format_exception  # noqa: PLC0415 - loaded with the converter

    # Our hooks' messages say what was wrong with the value; keep them.
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    return format_exception(exc, type_)


def loads(body: bytes) -> Any:
    """Parse a JSON body; anything unparseable is a :class:`ResponseFormatError`."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ResponseFormatError("response body is nested too deeply to parse") from None
    except (UnicodeDecodeError, ValueError) as exc:
        # Not chained: the parser's exception holds the whole document.
        raise ResponseFormatError(f"response body is not JSON: {exc}") from None


def decode_response(
    http_status: int,
    body: bytes,
    *,
    call_sid: str,
    retry_after: float | None = None,
    api_version: ApiVersion = "v2",
) -> CallDetails:
    """The call in a response of ``api_version``, or the typed exception it stands for.

    The envelope's ``response.status`` and ``response.code`` decide when the body
    is the envelope (an HTTP 200 can carry an error); an Exotel ``RestException``
    is an error with its ``Status`` and ``Message``; the HTTP status decides for
    any other body (a gateway's HTML page). A call whose SID is not the one asked
    for is a :class:`ResponseFormatError`, never returned.
    """
    try:
        return _decode(
            http_status, body, call_sid=call_sid, retry_after=retry_after, api_version=api_version
        )
    except ResponseFormatError as exc:
        exc.call_sid = call_sid
        raise


def _decode(
    http_status: int,
    body: bytes,
    *,
    call_sid: str,
    retry_after: float | None,
    api_version: ApiVersion,
) -> CallDetails:
    answer = ErrorAnswer(http_status=http_status, call_sid=call_sid, retry_after=retry_after)
    try:
        document = loads(body)
    except ResponseFormatError as exc:
        if http_status >= 300:
            raise api_error(answer, status=http_status, from_api=False) from exc
        raise
    document = _json_object(document) or {}
    response = _json_object(document.get("response"))
    rest_exception = _json_object(document.get("RestException"))
    if response is None and rest_exception is not None:
        raise _rest_exception_error(rest_exception, answer)
    if response is None or "status" not in response:
        if http_status >= 300:
            raise api_error(answer, status=http_status, from_api=False)
        raise ResponseFormatError("response body is not the API's envelope (no response.status)")
    code = response.get("code")
    status = _error_status(code, http_status)
    if response["status"] == "success" and 200 <= status < 300:
        key = _PAYLOAD_KEYS[api_version]
        data = response.get(key)
        if data is None:
            raise ResponseFormatError(f"successful response without {key}")
        call = structure_call(data, path=f"$.response.{key}", api_version=api_version)
        return _the_call_asked_for(call, call_sid)
    raise api_error(_envelope_answer(document, response, answer), status=status)


def _error_status(code: object, http_status: int) -> int:
    """The status an answer stands for: its own error code's when that is a 4xx or
    5xx, else the HTTP status line's."""
    # An HTTP status outside 100-599 is no HTTP answer at all: no body makes it one.
    plausible = 100 <= http_status <= 599
    return code if plausible and _is_int(code) and 400 <= code <= 599 else http_status


def _rest_exception_error(rest_exception: dict[str, Any], answer: ErrorAnswer) -> ApiError:
    # Exotel's other error shape: {"RestException": {"Status", "Message", "Code"}}.
    # Its Code is a word (RATE_LIMIT_EXCEEDED), not a number: kept in the message.
    message = _str_or_none(rest_exception.get("Message"))
    word = _str_or_none(rest_exception.get("Code"))
    text = f"{message} ({word})" if message and word else message or word
    status = _error_status(_error_code(rest_exception.get("Status")), answer.http_status)
    return api_error(attrs.evolve(answer, message=_str_or_none(text)), status=status)


def _the_call_asked_for(call: CallDetails, call_sid: str) -> CallDetails:
    # A cache or proxy in front of the API that mixed up answers must not hand
    # one call's details to another call's lookup. A null SID is the API's right.
    if call.call_sid is not None and call.call_sid != call_sid:
        raise ResponseFormatError(
            f"response is about call '{shown(call.call_sid)}', "
            f"not the requested '{shown(call_sid)}'"
        )
    return call


def _envelope_answer(
    document: dict[str, Any], response: dict[str, Any], answer: ErrorAnswer
) -> ErrorAnswer:
    """``answer`` with what the envelope's ``error_data`` and ``request_id`` say."""
    error_data = _json_object(response.get("error_data")) or {}
    return attrs.evolve(
        answer,
        code=_error_code(error_data.get("code")),
        message=_str_or_none(error_data.get("message")),
        description=_str_or_none(error_data.get("description")),
        request_id=_str_or_none(document.get("request_id")),
    )


def _json_object(value: object) -> dict[str, Any] | None:
    return cast("dict[str, Any]", value) if isinstance(value, dict) else None


def _error_code(value: object) -> int | None:
    # Exotel's codes have four digits; whatever is not a plausible one is dropped.
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    return value if _is_int(value) and 0 <= value < 1_000_000 else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_or_none(value: object) -> str | None:
    # Kept verbatim up to a bound: an error is often kept (in a result, a log
    # queue), and a server's 900 KB message would keep the body alive in it.
    return value[:_TEXT_LIMIT] if isinstance(value, str) else None
