"""The client's construction: its arguments checked, then the parts it is built of.

:func:`client_setup` takes ``AsyncCcmClient``'s constructor arguments and
checks them in the order they are documented: credentials, the timeout,
counts, the host and the API version, then the types of the objects given
(``telemetry`` last). It returns a :class:`Setup`: the URLs, the bound on
requests in flight, the retry policy, the engine that sends the requests
(``_http``), which opens nothing until the first lookup, and where traces
and metrics go (``_telemetry``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

import attrs
import httpx

from ccm_async._config import Credentials, Region, check_timeout, resolve_base_url
from ccm_async._convert import API_VERSIONS, ApiVersion
from ccm_async._engines import own_engine
from ccm_async._errors import ConfigurationError, Secrets, shown
from ccm_async._http import ClientEngine, Engine
from ccm_async._retry import RetryPolicy
from ccm_async._telemetry import Telemetry, telemetry_for
from ccm_async._throttle import RateLimit
from ccm_async._version import __version__

if TYPE_CHECKING:
    from ccm_async._shared import SharedStore

__all__ = [
    "DEFAULT_RETRY",
    "MAX_CONCURRENCY_LIMIT",
    "Setup",
    "check_count",
    "check_lookup_timeout",
    "client_setup",
]

MAX_CONCURRENCY_LIMIT: Final = 4096
DEFAULT_RETRY: Final = RetryPolicy()
_SINGLE_ATTEMPT: Final = RetryPolicy(attempts=1)
_USER_AGENT: Final = f"ccm-async/{__version__}"


@attrs.frozen(kw_only=True)
class Setup:
    """What a client is built of: where it sends, how much at once, and with what."""

    base_url: str
    account_sid: str
    api_version: ApiVersion
    calls_url: str  # the SID is appended
    max_concurrency: int
    cache_size: int
    policy: RetryPolicy
    rate_limit: RateLimit | None
    timeout: httpx.Timeout
    engine: Engine
    telemetry: Telemetry
    secrets: Secrets = attrs.field(repr=False)
    shared: SharedStore | None = None  # the rate limit's Redis, when it is shared


def client_setup(
    *,
    api_key: str,
    api_token: str,
    account_sid: str,
    region: Region | str,
    base_url: str | None,
    api_version: ApiVersion,
    max_concurrency: int,
    timeout: float | httpx.Timeout,
    retry: RetryPolicy | None,
    rate_limit: RateLimit | None,
    cache_size: int,
    http_client: httpx.AsyncClient | None,
    transport: Literal["httpx", "aiohttp"],
    telemetry: bool,
) -> Setup:
    """The parts of a client, or a :class:`ConfigurationError` for the first bad argument."""
    credentials = Credentials(api_key=api_key, api_token=api_token, account_sid=account_sid)
    timeout = check_timeout(timeout)
    check_count("max_concurrency", max_concurrency, MAX_CONCURRENCY_LIMIT)
    check_count("cache_size", cache_size, 10_000_000, low=0)
    resolved_url = resolve_base_url(region, base_url)
    api_version = _checked_version(api_version)
    headers = {
        "authorization": credentials.authorization(),
        "accept": "application/json",
        "content-type": "application/json",
        "accept-encoding": "gzip",
        "user-agent": _USER_AGENT,
    }
    # A pool of the user's that is smaller than the bound lowers the bound, so
    # a queued lookup waits for a slot, never for a connection (PoolTimeout).
    pool = _pool_size(http_client) if http_client is not None else None
    _check_type("retry", retry, RetryPolicy)
    _check_type("rate_limit", rate_limit, RateLimit)
    _check_type("http_client", http_client, httpx.AsyncClient)
    if not isinstance(telemetry, bool):
        raise ConfigurationError(f"telemetry must be True or False, got {shown(telemetry)}")
    if http_client is None:
        timeout = httpx.Timeout(timeout)
        engine = own_engine(
            transport,
            base_url=resolved_url,
            headers=headers,
            max_connections=max_concurrency,
            timeout=timeout,
        )
    else:
        timeout = http_client.timeout
        engine = ClientEngine(http_client, headers=headers)  # left open for its owner
    return Setup(
        base_url=resolved_url,
        account_sid=credentials.account_sid,
        api_version=api_version,
        calls_url=f"{resolved_url}/{api_version}/accounts/{credentials.account_sid}/calls/",
        max_concurrency=min(max_concurrency, pool or max_concurrency),
        cache_size=cache_size,
        policy=_SINGLE_ATTEMPT if retry is None else retry,
        rate_limit=rate_limit,
        timeout=timeout,
        engine=engine,
        telemetry=telemetry_for(
            enabled=telemetry, base_url=resolved_url, account_sid=credentials.account_sid
        ),
        secrets=credentials.secrets(),
        shared=_shared_store(rate_limit, resolved_url, credentials.account_sid),
    )


def _shared_store(limit: RateLimit | None, base_url: str, account_sid: str) -> SharedStore | None:
    """The Redis link of a shared limit, keyed by the account and the API host."""
    if limit is None or limit.storage is None:
        return None
    from ccm_async._shared import SharedStore  # noqa: PLC0415 - the redis extra's

    host = httpx.URL(base_url).netloc.decode()
    return SharedStore(limit, key=f"ccm_async:{host}:{account_sid}")


def _checked_version(value: object) -> ApiVersion:
    # Compared as a plain string, and handed back as ours: an object equal to "v2"
    # or a str subclass with its own formatting never reaches the URL.
    plain = str.__str__(value) if isinstance(value, str) else None
    for version in API_VERSIONS:
        if plain == version:
            return version
    raise ConfigurationError(f"api_version must be 'v2' or 'v3', got {shown(value)}")


def check_count(name: str, value: object, high: int, *, low: int = 1) -> None:
    """A :class:`ConfigurationError` unless ``value`` is an integer from ``low`` to ``high``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(f"{name} must be an integer from {low} to {high}")


_MAX_LOOKUP_TIMEOUT: Final = 3600.0


def check_lookup_timeout(value: object) -> None:
    """A :class:`ConfigurationError` unless ``value`` is None or a number of seconds
    from just over 0 to an hour (a bool, NaN and infinities are not)."""
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= _MAX_LOOKUP_TIMEOUT
    ):
        raise ConfigurationError(
            f"timeout must be None or a number of seconds above 0 and at most "
            f"{_MAX_LOOKUP_TIMEOUT:g}"
        )


def _check_type(name: str, value: object, expected: type) -> None:
    if value is not None and not isinstance(value, expected):
        raise ConfigurationError(
            f"{name} must be a {expected.__module__}.{expected.__qualname__} or None, "
            f"not {type(value).__name__}"
        )


def _pool_size(http_client: httpx.AsyncClient) -> int | None:
    """The connection limit of an httpx client's default transport, if it can be read."""
    pool = getattr(getattr(http_client, "_transport", None), "_pool", None)
    size = getattr(pool, "_max_connections", None)
    return size if isinstance(size, int) and size > 0 else None
