"""The call details a lookup returns: frozen, slotted attrs classes.

Field names are the API's (v2's; v3's renamed fields are mapped onto them, see
``_convert``). Every field may be null, as the API documents.
``call_state``, ``direction`` and ``call_status`` hold a ``StrEnum`` member for a
value this library knows and the plain string for one it does not, so a new
value from Exotel never fails a lookup; both compare equal to the string.
"""

# Annotations are evaluated here, not left as strings: the classes live at
# ccm_async.X (see __init__), and typing.get_type_hints, which cattrs uses, would
# look strings such as "dt.datetime" up there.
import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any, cast

import attrs

from ccm_async._errors import CcmError

__all__ = [
    "AgentDetails",
    "CallDetails",
    "CallResult",
    "CallState",
    "CallStatus",
    "ClientStats",
    "CustomerDetails",
    "Direction",
    "Recording",
]


class CallState(enum.StrEnum):
    """Known values of ``call_state``."""

    ACTIVE = "active"
    TERMINAL = "terminal"


class Direction(enum.StrEnum):
    """Known values of ``direction``."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    OUTBOUND_DIAL = "outbound-dial"
    OUTBOUND_API = "outbound-api"


class CallStatus(enum.StrEnum):
    """Known values of ``call_status`` (null while the call is active); the
    ``FROM_LEG_*`` and ``TO_LEG_*`` ones are Voice v3's."""

    COMPLETED = "completed"
    FAILED = "failed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    CANCELED = "canceled"
    AGENT_UNANSWERED = "agent_unanswered"
    CUSTOMER_UNANSWERED = "customer_unanswered"
    AGENT_CANCELED = "agent_canceled"
    AGENT_CANCELLED = "agent_cancelled"
    CUSTOMER_NO_DIAL = "customer_no_dial"
    AGENT_NO_DIAL = "agent_no_dial"
    FROM_LEG_UNANSWERED = "from_leg_unanswered"
    TO_LEG_UNANSWERED = "to_leg_unanswered"
    FROM_LEG_CANCELLED = "from_leg_cancelled"
    FROM_LEG_NO_DIAL = "from_leg_no_dial"
    TO_LEG_NO_DIAL = "to_leg_no_dial"


@attrs.frozen(kw_only=True)
class Recording:
    """One recording of the call."""

    url: str | None = None


@attrs.frozen(kw_only=True)
class AgentDetails:
    """The primary agent assigned to the call."""

    user_id: str | None = None
    user_name: str | None = None
    contact_uri: str | None = None
    group_id: str | None = None
    group_name: str | None = None
    status: str | None = None


@attrs.frozen(kw_only=True)
class CustomerDetails:
    """The customer's side of the call."""

    contact_name: str | None = None
    contact_uri: str | None = None
    status: str | None = None


@attrs.frozen(kw_only=True)
class CallDetails:
    """The details of one CCM call, as ``GET .../calls/{call_sid}`` returns them.

    Datetimes are timezone-aware (the epoch, v3's placeholder for a time not
    yet known, is None); durations are whole seconds; ``recordings`` is a tuple
    (empty when the API sends null or ``[]``). ``legs_url`` is v3's ``legs``:
    the path of the call's legs in the Legs API (None from v2, which sends
    none). A field the version does not send is None.
    """

    call_sid: str | None = None
    direction: Direction | str | None = None
    virtual_number: str | None = None
    call_state: CallState | str | None = None
    call_status: CallStatus | str | None = None
    assigned_agent_details: AgentDetails | None = None
    customer_details: CustomerDetails | None = None
    created_time: dt.datetime | None = None
    updated_time: dt.datetime | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    total_duration: int | None = None
    total_talk_time: int | None = None
    custom_field: str | None = None
    app_id: str | None = None
    app_name: str | None = None
    digits: str | None = None
    recordings: tuple[Recording, ...] = ()
    legs_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data in the API's shape: v2's field names (and ``legs_url``),
        ISO 8601 timestamps with their UTC offset, enum members as their string
        values, recordings as a list. ``json.dumps(call.to_dict())`` always works."""
        from ccm_async._convert import call_to_dict  # noqa: PLC0415 - cattrs loads on first use

        return call_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CallDetails":
        """The call :meth:`to_dict` gave (or v2's ``data`` object), read as strictly as
        an API response: a wrong-typed field is a :class:`ResponseFormatError` naming
        its path (``$.start_time``); keys it does not know are ignored, as in a
        response. A timestamp at the Unix epoch reads as None, as in a response."""
        from ccm_async._convert import call_from_dict  # noqa: PLC0415

        return call_from_dict(data)

    @property
    def is_terminal(self) -> bool:
        """True once the call has ended: its details no longer change."""
        return self.call_state == CallState.TERMINAL


@attrs.frozen(kw_only=True)
class ClientStats:
    """A snapshot of a client's work (``client.stats``).

    Attributes:
        requests: HTTP requests sent, retries included.
        retries: attempts after a lookup's first.
        responses: responses received, by HTTP status.
        transport_errors: requests that got no complete response.
        budget_denials: retries the retry budget refused.
        rate_limit_waits: times a request waited for the rate limit or a 429 pause.
        adaptive_rate: the rate (requests/s) the client adapted to after 429s, or
            None while it has no reason to limit itself (or has a configured limit).
    """

    requests: int
    retries: int
    responses: Mapping[int, int]
    transport_errors: int
    budget_denials: int
    rate_limit_waits: int
    adaptive_rate: float | None


@attrs.frozen(kw_only=True)
class CallResult:
    """One SID's outcome in a bulk fetch: the call, or the error that SID met.

    Attributes:
        call_sid: the SID as it was given.
        call: the details, when the lookup succeeded.
        error: the :class:`CcmError`, when it failed (not found, retries exhausted,
            an invalid SID).
        item: the input item this result is for: the SID itself, or what a batch's
            ``sid`` function took the SID from (a queue's message, say). It is left
            out of the repr, which a large message would fill.
    """

    call_sid: str
    call: CallDetails | None = None
    error: CcmError | None = None
    # Any, not object: a consumer acks ``result.item`` as the type it put in.
    item: Any = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if (self.call is None) == (self.error is None):
            raise ValueError("a CallResult holds either a call or an error")

    @property
    def ok(self) -> bool:
        """True when the lookup succeeded."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: ``call_sid``, and ``call`` (:meth:`CallDetails.to_dict`) or
        ``error``: its ``class`` name, ``message`` (the one-line form, without the
        credentials), ``code`` (Exotel's), ``http_status``, ``request_id`` (None when
        not known) and ``attempts``. ``item`` is left out: it is the caller's."""
        if self.call is not None:
            return {"call_sid": self.call_sid, "call": self.call.to_dict()}
        error = cast("CcmError", self.error)
        return {"call_sid": self.call_sid, "error": _error_dict(error)}

    def unwrap(self) -> CallDetails:
        """The call, or raise the error this SID met."""
        if self.error is not None:
            raise self.error
        return cast("CallDetails", self.call)


def _error_dict(error: CcmError) -> dict[str, Any]:
    return {
        "class": type(error).__name__,
        "message": str(error),
        "code": getattr(error, "code", None),
        "http_status": getattr(error, "http_status", None),
        "request_id": getattr(error, "request_id", None),
        "attempts": error.attempts,
    }
