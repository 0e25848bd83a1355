"""The exception tree, and the mapping from an HTTP response to an exception.

Every error the library raises is a :class:`CcmError`::

    CcmError
    ├── ConfigurationError      (also ValueError) bad or missing settings
    ├── InvalidCallSidError     (also ValueError) rejected before any request
    ├── TransportError          the request did not get a response
    │   └── RequestTimeoutError (also TimeoutError)
    ├── WaitTimeoutError        (also TimeoutError) wait_for_terminal gave up
    ├── ClientClosedError       (also RuntimeError) used or closed under a lookup
    ├── ApiError                the API (or something in front of it) said no
    │   ├── CallNotFoundError   404: 3043, 3044, 3045 (v2), 10744 (v3)
    │   ├── AuthenticationError 401, 403, 1010: wrong credentials or wrong region
    │   ├── RateLimitError      429, 10724 (v3)
    │   └── ServerError         5xx: 1100, 3042, 3046, 3075
    ├── ResponseFormatError     a body that is not what the API sends
    └── EventFormatError        (also ValueError) a call event or status callback
                                that cannot be read (parse_call_event)

When the body is the API's envelope, a documented ``error_data.code`` (above)
picks the class, else its ``response.code``; when it is not the envelope (a
load balancer's HTML page), the HTTP status does.

An error answers a web request as :meth:`CcmError.to_problem` maps it (the class
attribute ``problem_status``, inherited by subclasses)::

    EventFormatError                            400
    InvalidCallSidError                         422
    CallNotFoundError                           404
    RateLimitError                              503 (with Retry-After when known)
    RequestTimeoutError, WaitTimeoutError       504
    TransportError, ServerError, ApiError,
    ResponseFormatError                         502
    AuthenticationError                         500 (our credentials, not the caller's)
    ConfigurationError, CcmError                500
    ClientClosedError                           503
"""

from __future__ import annotations

import http
import json
import math
import re
import reprlib
import traceback
from typing import Any, cast

import attrs

from ccm_async._problem import Problem

__all__ = [
    "ApiError",
    "AuthenticationError",
    "CallNotFoundError",
    "CcmError",
    "ClientClosedError",
    "ConfigurationError",
    "ErrorAnswer",
    "EventFormatError",
    "InvalidCallSidError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseFormatError",
    "Secrets",
    "ServerError",
    "TransportError",
    "WaitTimeoutError",
    "api_error",
    "forget_frames",
    "one_line",
    "shown",
]


_DETAIL_LIMIT = 1000
"""Characters of a problem's ``detail``: the message, never a server's whole text."""


class CcmError(Exception):
    """Base class of every error raised by ccm_async.

    ``call_sid`` names the lookup that failed, when there was one; ``attempts``
    is how many requests the lookup sent before giving up (0 when none was).
    ``problem_status`` is the HTTP status :meth:`to_problem` answers with.
    """

    problem_status = 500

    def __init__(self, message: str, *, call_sid: str | None = None) -> None:
        super().__init__(message)
        self.call_sid = call_sid
        self.attempts = 0

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException's would call cls(*args), which keyword-only __init__s refuse:
        # rebuild without __init__, then restore args and every attribute (not the
        # cause). args go in the state: OSError's __new__ (TimeoutError's) ignores them.
        return type(self).__new__, (type(self),), {**vars(self), "args": self.args}

    def to_problem(self, *, status: int | None = None) -> Problem:
        """This error as the answer of a web request that needed the lookup.

        The status is the class's ``problem_status`` unless ``status`` (400-599)
        is given: 422 for an invalid SID, 404 for a call not found, 503 for a rate
        limit (with ``Retry-After``, rounded up) or a closed client, 504 for a
        timeout, 502 for the API's failures, and 500 for our own settings, the
        API's refusal of our credentials included (never passed on as a 401).
        """
        status = self.problem_status if status is None else _problem_status(status)
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": _title(status),
            "status": status,
            "detail": one_line(str(self), _DETAIL_LIMIT),
        }
        for key, value in self._problem_members().items():
            if value is not None:
                body[key] = one_line(value) if isinstance(value, str) else value
        headers = {"content-type": "application/problem+json", **self._problem_headers()}
        return Problem(status=status, headers=headers, body=body)

    def _problem_members(self) -> dict[str, object]:
        return {"call_sid": self.call_sid}

    def _problem_headers(self) -> dict[str, str]:
        return {}


def _problem_status(status: object) -> int:
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        raise ConfigurationError(
            f"status must be an HTTP error status from 400 to 599, got {shown(status)}"
        )
    return status


def _title(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # a status no RFC names (499, say)
        return "Client Error" if status < 500 else "Server Error"


class ConfigurationError(CcmError, ValueError):
    """A setting is missing or invalid (credentials, region, base URL, limits)."""


class InvalidCallSidError(CcmError, ValueError):
    """The call SID cannot be a CCM call SID; no request was sent."""

    problem_status = 422


class TransportError(CcmError):
    """The request got no complete response: connection refused or dropped, TLS, protocol.

    The HTTP stack's own exception (httpcore's, httpx's or aiohttp's) is the ``__cause__``.
    """

    problem_status = 502


class RequestTimeoutError(TransportError, TimeoutError):
    """An httpx timeout (connect, read, write or pool) expired, or the lookup's
    deadline (``RetryPolicy.timeout``) passed; then ``deadline_exceeded`` is True."""

    problem_status = 504
    deadline_exceeded: bool = False


class WaitTimeoutError(CcmError, TimeoutError):
    """``wait_for_terminal`` timed out before the call ended; ``last_state`` is the
    last ``call_state`` seen (None if the call was never found)."""

    problem_status = 504

    def __init__(self, message: str, *, call_sid: str, last_state: str | None) -> None:
        super().__init__(message, call_sid=call_sid)
        self.last_state = last_state


class ClientClosedError(CcmError, RuntimeError):
    """The client is closed, or was closed while a lookup or a batch was running."""

    problem_status = 503


class ResponseFormatError(CcmError):
    """The response body is not the API's: not JSON, not the envelope, a wrong-typed field,
    or too large. The message names the offending field's path, never the whole body."""

    problem_status = 502


class EventFormatError(CcmError, ValueError):
    """A body given to ``parse_call_event`` is not a call event or a status callback
    this library can read: a wrong type, encoding or content type, a missing
    ``CallSid``, a wrong-typed field, or over a limit (size, legs, fields, depth).

    The message is one bounded line naming the field's path (``$.call_details.start_time``,
    ``Legs[0][OnCallDuration]``), never the whole body; ``call_sid`` is the event's
    SID when it was readable. A web handler answers it with 400 (:meth:`to_problem`).
    """

    problem_status = 400


@attrs.define(kw_only=True, slots=False, eq=False)
class ErrorAnswer:
    """What an error answer said: the attributes of :class:`ApiError`, declared once.

    Attributes:
        http_status: the HTTP status line's code.
        code: ``error_data.code`` (Exotel's error code, e.g. 3043), or None.
        message: ``error_data.message``, verbatim, or None.
        description: ``error_data.description``, verbatim, or None.
        request_id: the envelope's ``request_id``, for Exotel support, or None.
        call_sid: the call SID that was looked up.
        retry_after: seconds from a ``Retry-After`` header, or None.
    """

    # Not frozen and compared by identity (eq=False): ApiError inherits this class,
    # and an exception stays mutable (attempts, __context__) and hashable.
    http_status: int
    code: int | None = None
    message: str | None = None
    description: str | None = None
    request_id: str | None = None
    call_sid: str | None = None
    retry_after: float | None = None


class ApiError(CcmError, ErrorAnswer):
    """The API answered with an error; its attributes are :class:`ErrorAnswer`'s."""

    problem_status = 502

    def __init__(self, summary: str, answer: ErrorAnswer) -> None:
        super().__init__(summary, call_sid=answer.call_sid)
        vars(self).update(attrs.asdict(answer, recurse=False))

    def _problem_members(self) -> dict[str, object]:
        return {**super()._problem_members(), "code": self.code, "request_id": self.request_id}


class CallNotFoundError(ApiError):
    """No such call, or a call this API does not serve (404: 3043, 3044, 3045)."""

    problem_status = 404


class AuthenticationError(ApiError):
    """Credentials were refused (401/403). An account lives in one region, and the
    other region's host refuses its credentials: check both."""

    # Our credentials are wrong: the web request's caller is not to blame.
    problem_status = 500


class RateLimitError(ApiError):
    """Too many requests for the account (429); ``retry_after`` is the server's hint."""

    problem_status = 503

    def _problem_headers(self) -> dict[str, str]:
        if self.retry_after is None or not math.isfinite(self.retry_after):
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ServerError(ApiError):
    """The API failed (5xx: 1100, 3042, 3046, 3075, or a gateway's error page)."""


def forget_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames behind ``exc`` and its causes.

    A failed lookup's traceback reaches the frames that read and decoded its
    response: kept in a result or a log queue, the error would keep the body (up
    to the 1 MiB cap, or a decompressed bomb) alive through their locals.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        if error.__suppress_context__:
            # Never shown, and a parser's exception there holds the whole document.
            error.__context__ = None
        pending.extend(link for link in (error.__cause__, error.__context__) if link is not None)
        if isinstance(error, BaseExceptionGroup):
            group = cast("BaseExceptionGroup[BaseException]", error)
            pending.extend(group.exceptions)


_AUTH_HINT = (
    "check api_key, api_token and the region: an account lives in one region "
    "(sg: ccm-api.exotel.com, in: ccm-api.in.exotel.com) and the other one refuses it"
)


def error_class(status: int) -> type[ApiError]:
    """The exception class for an HTTP-like status code."""
    if status == 404:
        return CallNotFoundError
    if status in (401, 403):
        return AuthenticationError
    if status == 429:
        return RateLimitError
    if 500 <= status <= 599:
        return ServerError
    # Not a 5xx: 600 and up (or under 100) is no HTTP status class; never retried.
    return ApiError


_DOCUMENTED_CODES: dict[int, type[ApiError]] = {
    **dict.fromkeys((3043, 3044, 3045, 10744), CallNotFoundError),
    1010: AuthenticationError,
    10724: RateLimitError,
    **dict.fromkeys((1100, 3042, 3046, 3075), ServerError),
}


def api_error(answer: ErrorAnswer, *, status: int, from_api: bool = True) -> ApiError:
    """Build the exception for an error answer.

    A documented ``answer.code`` picks the class, else ``status`` does (the
    envelope's ``response.code`` when there is an envelope, else the HTTP status);
    ``from_api`` is False when the body was not the API's (a proxy's page, a wrong
    base_url).
    """
    documented = _DOCUMENTED_CODES.get(answer.code) if answer.code is not None else None
    cls = documented or error_class(status)
    if not from_api and cls in (CallNotFoundError, AuthenticationError):
        # A proxy's or a wrong base_url's 404/401 says nothing about the call.
        cls = ApiError
    return cls(_summary(answer, status=status, from_api=from_api, cls=cls), answer)


def _summary(answer: ErrorAnswer, *, status: int, from_api: bool, cls: type[ApiError]) -> str:
    parts = [f"HTTP {answer.http_status}"]
    if status != answer.http_status:
        parts.append(f"response code {status}")
    if answer.code is not None:
        parts.append(f"error code {answer.code}")
    summary = ", ".join(parts)
    if answer.message:
        summary += f": {one_line(answer.message)}"
    if answer.description and answer.description != answer.message:
        summary += f" ({one_line(answer.description)})"
    if not from_api:
        summary += ": the response was not the CCM API's envelope (check base_url and proxies)"
    if cls is AuthenticationError:
        summary += f"; {_AUTH_HINT}"
    if answer.retry_after is not None:
        summary += f"; retry after {answer.retry_after:g}s"
    if answer.call_sid is not None:
        summary += f" [call_sid={answer.call_sid}"
        summary += f", request_id={one_line(answer.request_id)}]" if answer.request_id else "]"
    return summary


_REDACTED = "[redacted]"


@attrs.frozen
class Secrets:
    """The texts that would give the credentials away, and their forms in a JSON
    body (escaped, ``/`` as ``\\/``, any character as ``\\uXXXX``), made once per client.

    A server (or a proxy) may echo the request's ``Authorization`` header into its
    answer, and its texts go into messages, logs, results and outputs.
    """

    texts: tuple[str, ...] = attrs.field(repr=False)
    in_bodies: tuple[bytes, ...] = attrs.field(repr=False)
    escaped: re.Pattern[bytes] = attrs.field(repr=False)

    @classmethod
    def of(cls, texts: tuple[str, ...]) -> Secrets:
        """The secrets ``texts``, with their body forms."""
        forms = {
            form.encode()
            for text in texts
            for form in (text, json.dumps(text)[1:-1], text.replace("/", "\\/"))
        }
        # With no secrets (a test's short token), a pattern that matches nothing.
        escaped = b"|".join(_in_any_json_escape(text) for text in texts) or b"(?!)"
        return cls(texts, tuple(forms), re.compile(escaped, re.IGNORECASE))

    def redact_body(self, body: bytes) -> bytes:
        """``body`` without them, before any of its text is read: a message quotes a
        bounded part of a value, and a part of the base64 gives most of the token away."""
        body = _in_utf8(body)
        for form in self.in_bodies:
            if form in body:
                body = body.replace(form, _REDACTED.encode())
        # JSON may write any character as \uXXXX (.NET's encoder does, for + and =).
        if b"\\u" in body:
            body = self.escaped.sub(_REDACTED.encode(), body)
        return body

    def redact(self, exc: CcmError) -> None:
        """Take them out of the message and the text attributes of ``exc``."""
        texts = [arg for arg in exc.args if isinstance(arg, str)]
        texts += [value for value in vars(exc).values() if isinstance(value, str)]
        if not any(secret in text for secret in self.texts for text in texts):
            return
        exc.args = tuple(self._without(arg) for arg in exc.args)
        for name, value in vars(exc).items():
            if isinstance(value, str):
                setattr(exc, name, self._without(value))

    def _without(self, value: object) -> object:
        if not isinstance(value, str):
            return value
        for secret in self.texts:
            value = value.replace(secret, _REDACTED)
        return value


def _in_utf8(body: bytes) -> bytes:
    """A JSON ``body`` in UTF-16 or UTF-32 (which JSON readers accept) re-encoded
    in UTF-8, where the secrets' forms are looked for; any other body as it is."""
    encoding = json.detect_encoding(body)
    if encoding in {"utf-8", "utf-8-sig"}:
        return body
    try:
        return body.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return body  # not text in that encoding: nothing of it is read as such either


def _in_any_json_escape(text: str) -> bytes:
    """A pattern of ``text`` in a JSON string, each character as itself, as \\uXXXX,
    or as its short escape."""
    short = {"/": b"\\/", '"': b'\\"', "\\": b"\\\\"}
    pattern = b""
    for char in text:
        forms = [re.escape(char.encode()), re.escape(f"\\u{ord(char):04x}".encode())]
        if char in short:
            forms.append(re.escape(short[char]))
        pattern += b"(?:" + b"|".join(forms) + b")"
    return pattern


def one_line(text: str, limit: int = 200) -> str:
    """A text from outside (a server's, a stack's) as it may appear in a message:
    one printable line, bounded.

    The attributes keep the text verbatim; a message goes into logs, where a
    newline or an escape sequence from a server could forge or hide lines.
    """
    words = " ".join(text.split())
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in words)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _bounded_repr(limit: int) -> reprlib.Repr:
    shorten = reprlib.Repr()
    shorten.maxstring = shorten.maxother = limit
    return shorten


_SHOWN_LIMIT = 80
_SHORT_REPR = _bounded_repr(_SHOWN_LIMIT)


def shown(value: object) -> str:
    """A value from a caller or a server as an error may carry it: printable, bounded.

    A string is kept with its non-printable characters escaped; anything else is
    shown by a repr that stays short however large the value (reprlib's).
    """
    text = value if isinstance(value, str) else _SHORT_REPR.repr(value)
    head = text[: _SHOWN_LIMIT + 1]  # escaping only lengthens: never escape the rest
    escaped = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in head)
    if len(text) > _SHOWN_LIMIT or len(escaped) > _SHOWN_LIMIT:
        return escaped[: _SHOWN_LIMIT - 3] + "..."
    return escaped
