"""Regions, endpoints, credentials, validation of identifiers, and defaults.

The API token is kept out of every repr and message: credentials travel only
in the ``Authorization`` header, built once, never in a URL.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

import attrs
import httpx

from ccm_async._errors import ConfigurationError, InvalidCallSidError, Secrets, shown

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_BODY_BYTES",
    "Credentials",
    "Region",
    "call_sid_of",
    "check_timeout",
    "resolve_base_url",
    "settings_from_env",
    "validate_call_sid",
]

MAX_BODY_BYTES: Final = 1024 * 1024
"""Bodies larger than this are refused before they are read whole (a record is ~1 KB)."""

DEFAULT_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0, pool=30.0)
"""httpx's per-request timeouts: connect 5 s, read and write 10 s, pool 30 s."""

_TIMEOUT_RANGE: Final = (0.001, 3600.0)
"""Seconds an httpx timeout may be: as long as a lookup's longest deadline, never unbounded."""

_SID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")


class Region(enum.StrEnum):
    """Exotel's CCM regions ("stamps"). An account lives in exactly one."""

    SINGAPORE = "sg"
    MUMBAI = "in"

    @property
    def base_url(self) -> str:
        """The API host of this region."""
        return _REGION_URLS[self]


_REGION_URLS: Final = {
    Region.SINGAPORE: "https://ccm-api.exotel.com",
    Region.MUMBAI: "https://ccm-api.in.exotel.com",
}


@attrs.frozen(kw_only=True)
class Credentials:
    """An API key and token for one account; the token never shows in a repr."""

    api_key: str
    api_token: str = attrs.field(repr=False)
    account_sid: str

    def __attrs_post_init__(self) -> None:
        _check_header_safe(self.api_key, "api_key")
        _check_header_safe(self.api_token, "api_token")
        if ":" in self.api_key:
            # HTTP Basic splits "key:token" at the first ':'; only the token may hold one.
            raise ConfigurationError("api_key must not contain ':' (HTTP Basic cannot carry it)")
        if not isinstance(self.account_sid, str) or not _SID.fullmatch(self.account_sid):
            raise ConfigurationError(
                "account_sid must be 1-64 characters of letters, digits, '_' and '-'"
            )

    def authorization(self) -> str:
        """The HTTP Basic ``Authorization`` header value."""
        return "Basic " + self._basic()

    def secrets(self) -> Secrets:
        """The texts that would give the token away: the token, and the header's
        base64 of key and token. One under 8 characters is no real one (a test's):
        taking it out of every text would garble them."""
        return Secrets.of(tuple(text for text in (self.api_token, self._basic()) if len(text) >= 8))

    def _basic(self) -> str:
        pair = f"{self.api_key}:{self.api_token}".encode()
        return base64.b64encode(pair).decode("ascii")


def _check_header_safe(value: object, name: str) -> None:
    # Printable ASCII without spaces: nothing can break out of the header.
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} is missing")
    if not _HEADER_SAFE.fullmatch(value):
        raise ConfigurationError(f"{name} contains characters an API credential never has")


def call_sid_of(item: object) -> str:
    """The plain string a str item holds (a ``StrEnum`` member's value, not its name)."""
    return str.__str__(item) if isinstance(item, str) else str(item)


def validate_call_sid(call_sid: object) -> str:
    """Return ``call_sid`` if it can be a CCM call SID, else raise InvalidCallSidError.

    1-64 characters of ``[A-Za-z0-9_-]``: nothing that could change the request's
    path, query or headers. A ``str`` subclass (a ``StrEnum`` member, say) comes
    back as the plain string it holds, whatever its ``__str__`` or hash.
    """
    if isinstance(call_sid, str) and _SID.fullmatch(call_sid):
        return call_sid_of(call_sid)
    carried = shown(call_sid)
    quoted = f"'{carried}'" if isinstance(call_sid, str) else carried
    raise InvalidCallSidError(
        f"invalid call SID {quoted}: expected 1-64 characters of letters, digits, '_' and '-'",
        call_sid=carried,
    )


def check_timeout(value: object) -> httpx.Timeout:
    """httpx's per-request timeouts from ``timeout=``: seconds, or an ``httpx.Timeout``.

    Every phase (connect, read, write, pool) must be bounded: a None, zero, negative,
    NaN or infinite component is refused, naming it.
    """
    if isinstance(value, httpx.Timeout):
        for phase, seconds in value.as_dict().items():
            _check_seconds(seconds, f"timeout.{phase}")
        return value
    if not _is_number(value):
        raise ConfigurationError(
            f"timeout must be {_seconds_range()} or an httpx.Timeout, got {type(value).__name__}"
        )
    _check_seconds(value, "timeout")
    return httpx.Timeout(value)


def _check_seconds(value: object, name: str) -> None:
    low, high = _TIMEOUT_RANGE
    # The comparison is False for NaN, and an infinity is out of range.
    if not _is_number(value) or not low <= value <= high:
        raise ConfigurationError(f"{name} must be {_seconds_range()}, got {value!r:.40}")


def _is_number(value: object) -> TypeGuard[float]:
    # A bool is an int to Python, never a number of seconds to a user.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds_range() -> str:
    low, high = _TIMEOUT_RANGE
    return f"a number of seconds from {low:g} to {high:g}"


def resolve_base_url(region: Region | str, base_url: str | None) -> str:
    """The API's base URL: ``base_url`` if given (https unless loopback), else the region's."""
    if base_url is None:
        try:
            return Region(region).base_url
        except ValueError:
            known = ", ".join(repr(r.value) for r in Region)
            raise ConfigurationError(
                f"unknown region {region!r}: expected one of {known}"
            ) from None
    if not isinstance(base_url, str):
        raise ConfigurationError(f"base_url must be a string, not {type(base_url).__name__}")
    _check_url_text(base_url)
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"base_url is not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError("base_url must be an absolute http(s) URL")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ConfigurationError(f"base_url has port {url.port}: a port is from 1 to 65535")
    if url.userinfo or url.query or url.fragment:
        raise ConfigurationError("base_url must not carry credentials, a query or a fragment")
    if url.scheme == "http" and not _is_loopback(url.host):
        raise ConfigurationError(
            "base_url must use https (plain http is allowed only for loopback hosts)"
        )
    return str(url).rstrip("/")


def _check_url_text(base_url: str) -> None:
    # httpx drops an empty query or fragment and reads '+80', '4_0', or non-ASCII
    # digits as a port; refuse what it would quietly reinterpret.
    if "?" in base_url or "#" in base_url:
        raise ConfigurationError("base_url must not carry credentials, a query or a fragment")
    try:
        host_and_port = urllib.parse.urlsplit(base_url).netloc.rpartition("@")[2]
    except ValueError as exc:  # an unclosed IPv6 bracket, say
        raise ConfigurationError(f"base_url is not a valid URL: {exc}") from None
    _, colon, port = host_and_port.rpartition("]")[2].rpartition(":")  # past an IPv6 host
    if colon and not (port.isascii() and port.isdigit()):
        raise ConfigurationError(f"base_url has port {port[:20]!r}: a port is from 1 to 65535")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Client settings from ``EXOTEL_*`` variables; missing ones raise ConfigurationError.

    ``EXOTEL_API_VERSION`` (``v2`` or ``v3``) is read as it is given, checked by
    the client.
    """
    env = os.environ if environ is None else environ
    names = {
        "api_key": "EXOTEL_API_KEY",
        "api_token": "EXOTEL_API_TOKEN",
        "account_sid": "EXOTEL_ACCOUNT_SID",
    }
    missing = [var for var in names.values() if not env.get(var)]
    if missing:
        raise ConfigurationError(f"missing environment variable(s): {', '.join(missing)}")
    settings: dict[str, Any] = {key: env[var] for key, var in names.items()}
    if env.get("EXOTEL_CCM_BASE_URL"):
        settings["base_url"] = env["EXOTEL_CCM_BASE_URL"]
    elif env.get("EXOTEL_REGION"):
        settings["region"] = env["EXOTEL_REGION"].strip().lower()
    if env.get("EXOTEL_API_VERSION"):
        settings["api_version"] = env["EXOTEL_API_VERSION"].strip().lower()
    return settings
