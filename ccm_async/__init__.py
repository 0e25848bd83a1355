"""ccm_async: an async client for Exotel's CCM Get Call Details API.

Built for many concurrent lookups, on asyncio and Trio (through anyio)::

    async with AsyncCcmClient(api_key=..., api_token=..., account_sid=..., region="in") as ccm:
        call = await ccm.get_call("72827ead13a355d334338f53af71157s")

The public names are imported together on first use (PEP 562): ``import
ccm_async`` alone loads none of httpx, anyio and attrs, so the ``ccm-async``
command's ``--version`` and ``--help`` start at once.
"""

import importlib
from typing import TYPE_CHECKING

from ccm_async._version import __version__

if TYPE_CHECKING:
    from ccm_async._client import AsyncCcmClient
    from ccm_async._config import Region
    from ccm_async._errors import (
        ApiError,
        AuthenticationError,
        CallNotFoundError,
        CcmError,
        ClientClosedError,
        ConfigurationError,
        ErrorAnswer,
        EventFormatError,
        InvalidCallSidError,
        RateLimitError,
        RequestTimeoutError,
        ResponseFormatError,
        ServerError,
        TransportError,
        WaitTimeoutError,
    )
    from ccm_async._events import CallEvent, CallEventType, Leg, StatusCallback, parse_call_event
    from ccm_async._models import (
        AgentDetails,
        CallDetails,
        CallResult,
        CallState,
        CallStatus,
        ClientStats,
        CustomerDetails,
        Direction,
        Recording,
    )
    from ccm_async._problem import Problem
    from ccm_async._retry import RetryPolicy
    from ccm_async._throttle import RateLimit

__all__ = [
    "AgentDetails",
    "ApiError",
    "AsyncCcmClient",
    "AuthenticationError",
    "CallDetails",
    "CallEvent",
    "CallEventType",
    "CallNotFoundError",
    "CallResult",
    "CallState",
    "CallStatus",
    "CcmError",
    "ClientClosedError",
    "ClientStats",
    "ConfigurationError",
    "CustomerDetails",
    "Direction",
    "ErrorAnswer",
    "EventFormatError",
    "InvalidCallSidError",
    "Leg",
    "Problem",
    "RateLimit",
    "RateLimitError",
    "Recording",
    "Region",
    "RequestTimeoutError",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "StatusCallback",
    "TransportError",
    "WaitTimeoutError",
    "__version__",
    "parse_call_event",
]

# The private modules that define the public names, each in its own __all__.
_HOMES = ("_client", "_config", "_errors", "_events", "_models", "_problem", "_retry", "_throttle")


if not TYPE_CHECKING:  # to a type checker, a name not in the list stays an error

    def __getattr__(name: str) -> object:
        if name not in __all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        _load()
        return globals()[name]

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


def _load() -> None:
    # Tracebacks and reprs name the public path (ccm_async.CallNotFoundError), as
    # httpx does; pickle, which finds a class by __module__ and __qualname__, too.
    for home in _HOMES:
        module = importlib.import_module(f"{__name__}.{home}")
        for name in set(module.__all__) & set(__all__):
            public = getattr(module, name)
            public.__module__ = __name__
            globals()[name] = public
