"""ccm_async: an async client for Exotel's CCM Get Call Details API.

Built for many concurrent lookups, on asyncio and Trio (through anyio)::

    async with AsyncCcmClient(api_key=..., api_token=..., account_sid=..., region="in") as ccm:
        call = await ccm.get_call("72827ead13a355d334338f53af71157s")
"""

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
    InvalidCallSidError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    ServerError,
    TransportError,
    WaitTimeoutError,
)
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
from ccm_async._retry import RetryPolicy
from ccm_async._throttle import RateLimit
from ccm_async._version import __version__

__all__ = [
    "AgentDetails",
    "ApiError",
    "AsyncCcmClient",
    "AuthenticationError",
    "CallDetails",
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
    "InvalidCallSidError",
    "RateLimit",
    "RateLimitError",
    "Recording",
    "Region",
    "RequestTimeoutError",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "WaitTimeoutError",
    "__version__",
]


def _shown_from_here() -> None:
    # Tracebacks and reprs name the public path (ccm_async.CallNotFoundError), as
    # httpx does; pickle, which finds a class by __module__ and __qualname__, too.
    for name in __all__:
        if not name.startswith("__"):
            globals()[name].__module__ = __name__


_shown_from_here()
del _shown_from_here
