"""The public surface: names, docstrings, and what stays private."""

from __future__ import annotations

import inspect

import ccm_async
import ccm_async.testing

PUBLIC = {
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
}


def test_all_is_the_public_names_sorted() -> None:
    assert set(ccm_async.__all__) == PUBLIC
    assert ccm_async.__all__ == sorted(ccm_async.__all__)
    assert ccm_async.testing.__all__ == [
        "FakeCcm",
        "FakeCredentials",
        "Fault",
        "RecordedRequest",
        "instant_backoff",
    ]


def test_every_public_name_has_a_docstring() -> None:
    modules = (ccm_async, ccm_async.testing)
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isclass(obj):
                continue
            assert inspect.getdoc(obj), name
            for attr, member in vars(obj).items():
                if attr.startswith("_") or (
                    not callable(member) and not isinstance(member, property | classmethod)
                ):
                    continue
                assert inspect.getdoc(getattr(obj, attr)), f"{name}.{attr}"


def test_public_classes_live_behind_the_package() -> None:
    for name in PUBLIC - {"__version__"}:
        assert getattr(ccm_async, name).__module__.startswith("ccm_async._")
