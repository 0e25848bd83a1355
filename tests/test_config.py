"""Regions, base URLs, credentials and the environment."""

from __future__ import annotations

import base64
import logging
import re

import httpx
import pytest

from ccm_async import (
    AsyncCcmClient,
    AuthenticationError,
    ConfigurationError,
    InvalidCallSidError,
    Region,
)
from ccm_async._config import Credentials, validate_call_sid
from ccm_async.testing import FakeCcm, Fault

pytestmark = pytest.mark.anyio

TOKEN = "tok-SECRET-0123456789"
KEY = "key-public"
BASIC = base64.b64encode(f"{KEY}:{TOKEN}".encode()).decode()


def make(**options: object) -> AsyncCcmClient:
    settings: dict[str, object] = {"api_key": KEY, "api_token": TOKEN, "account_sid": "acct1"}
    return AsyncCcmClient(**{**settings, **options})  # type: ignore[arg-type]


async def test_regions() -> None:
    async with make() as client:
        assert client.base_url == "https://ccm-api.exotel.com"
    async with make(region="in") as client:
        assert client.base_url == "https://ccm-api.in.exotel.com"
    async with make(region=Region.SINGAPORE) as client:
        assert client.base_url == "https://ccm-api.exotel.com"
    with pytest.raises(ConfigurationError, match="unknown region 'eu'"):
        make(region="eu")


@pytest.mark.parametrize(
    "url",
    [
        "http://ccm-api.exotel.com",
        "http://10.0.0.5:8080",
        "ftp://127.0.0.1",
        "127.0.0.1:8000",
        "https://user:pass@example.com",
        "https://example.com/?x=1",
        "http://[::1",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:65536",
        "http://127.0.0.1:0",
        "https://x.test:0/",
        "http://127.0.0.1:-1",
        "http://127.0.0.1:+8080",
        "http://127.0.0.1:4_0435",
        "http://127.0.0.1:\u0668\u0660",
        "http://127.0.0.1:",
        "http://127.0.0.1:8080?",
        "http://127.0.0.1:8080#",
        "https://x.test/calls#frag",
    ],
)
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        make(base_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000", "http://localhost:1", "http://[::1]:8080", "https://x.test/"]
)
async def test_good_base_urls(url: str) -> None:
    async with make(base_url=url) as client:
        assert client.base_url == url.rstrip("/")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("api_key", ""),
        ("api_token", ""),
        ("api_token", "has space"),
        ("api_key", "line\r\nX-Injected: 1"),
        ("account_sid", "../other"),
        ("account_sid", ""),
        ("max_concurrency", 0),
        ("max_concurrency", 100_000),
        ("api_key", "key:with-colon"),
        ("api_key", ":"),
    ],
)
def test_invalid_settings(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(**{option: value})
    assert str(info.value).startswith(option)
    assert TOKEN not in str(info.value)


def test_only_the_token_may_hold_a_colon() -> None:
    # HTTP Basic splits "key:token" at the first colon: a key cannot carry one.
    with pytest.raises(ConfigurationError, match=r"^api_key .*':'"):
        Credentials(api_key="a:b", api_token=TOKEN, account_sid="acct1")
    credentials = Credentials(api_key=KEY, api_token="to:ken", account_sid="acct1")
    assert credentials.authorization() == "Basic " + base64.b64encode(b"key-public:to:ken").decode()


@pytest.mark.parametrize(
    ("timeout", "named"),
    [
        (-1, "timeout"),
        (0, "timeout"),
        (0.0, "timeout"),
        (float("nan"), "timeout"),
        (float("inf"), "timeout"),
        (1e9, "timeout"),
        (True, "timeout"),
        ("5", "timeout"),
        (None, "timeout"),
        ((5.0, 5.0, 5.0, 5.0), "timeout"),
        (httpx.Timeout(None), "timeout.connect"),
        (httpx.Timeout(5.0, connect=None), "timeout.connect"),
        (httpx.Timeout(5.0, read=None), "timeout.read"),
        (httpx.Timeout(5.0, write=-1), "timeout.write"),
        (httpx.Timeout(5.0, pool=0), "timeout.pool"),
        (httpx.Timeout(5.0, read=float("nan")), "timeout.read"),
        (httpx.Timeout(5.0, connect=float("inf")), "timeout.connect"),
        (httpx.Timeout(5.0, pool=True), "timeout.pool"),
        (httpx.Timeout(5.0, write="1"), "timeout.write"),  # type: ignore[arg-type]
    ],
)
def test_unbounded_or_nonsense_timeouts_are_refused(timeout: object, named: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(named)} must be"):
        make(timeout=timeout)


def test_from_env() -> None:
    env = {
        "EXOTEL_API_KEY": KEY,
        "EXOTEL_API_TOKEN": TOKEN,
        "EXOTEL_ACCOUNT_SID": "acct1",
        "EXOTEL_REGION": "IN",
    }
    assert AsyncCcmClient.from_env(env).base_url == "https://ccm-api.in.exotel.com"
    with_url = {**env, "EXOTEL_CCM_BASE_URL": "http://127.0.0.1:8080"}
    assert AsyncCcmClient.from_env(with_url).base_url == "http://127.0.0.1:8080"
    assert AsyncCcmClient.from_env(env, max_concurrency=4).account_sid == "acct1"
    default = {k: v for k, v in env.items() if k != "EXOTEL_REGION"}
    assert AsyncCcmClient.from_env(default).base_url == "https://ccm-api.exotel.com"


def test_from_env_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EXOTEL_API_KEY", "EXOTEL_API_TOKEN", "EXOTEL_ACCOUNT_SID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EXOTEL_API_KEY", KEY)
    with pytest.raises(ConfigurationError) as info:
        AsyncCcmClient.from_env()
    assert "EXOTEL_API_TOKEN" in str(info.value)
    assert "EXOTEL_ACCOUNT_SID" in str(info.value)
    assert "EXOTEL_API_KEY" not in str(info.value)


def test_credentials_hide_the_token() -> None:
    credentials = Credentials(api_key=KEY, api_token=TOKEN, account_sid="acct1")
    for text in (repr(credentials), str(credentials), repr(make())):
        assert TOKEN not in text
        assert BASIC not in text
    assert credentials.authorization() == f"Basic {BASIC}"


@pytest.mark.parametrize(
    "sid",
    ["", "a/b", "..", "a%2Fb", "a b", "caf\u00e9", "a?x=1", "a#b", "x" * 65, "a\nb", None, 5],
)
def test_invalid_call_sids(sid: object) -> None:
    with pytest.raises(InvalidCallSidError):
        validate_call_sid(sid)


@pytest.mark.parametrize(
    ("sid", "carried"),
    [
        ("a/b", "a/b"),
        ("", ""),
        ("a\nb\x1b[2J", "a\\nb\\x1b[2J"),
        ("x" * 65, "x" * 65),
        (None, "None"),
        (7, "7"),
        (b"x", "b'x'"),
        (["a", "b"], "['a', 'b']"),
    ],
)
def test_invalid_call_sid_error_carries_the_sid(sid: object, carried: str) -> None:
    with pytest.raises(InvalidCallSidError) as info:
        validate_call_sid(sid)
    assert info.value.call_sid == carried
    assert str(info.value).isprintable()


@pytest.mark.parametrize("sid", ["\u202e" * 10_000, "y" * 10_000, list(range(10_000))])
def test_invalid_call_sid_error_carries_a_bounded_sid(sid: object) -> None:
    with pytest.raises(InvalidCallSidError) as info:
        validate_call_sid(sid)
    carried = info.value.call_sid
    assert carried is not None
    assert 0 < len(carried) <= 80
    assert carried.isprintable()
    assert "..." in carried
    assert len(str(info.value)) < 200


def test_valid_call_sids() -> None:
    for sid in ("72827ead13a355d334338f53af71157s", "A-b_9", "x" * 64):
        assert validate_call_sid(sid) == sid


async def test_token_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCcm(api_key=KEY, api_token=TOKEN, generate=True)
    caplog.set_level(logging.DEBUG)
    async with fake.client() as client:
        await client.get_call("abc")
        fake.fail("abc", Fault.unauthorized())
        with pytest.raises(AuthenticationError) as info:
            await client.get_call("abc")
    assert caplog.records
    for text in (caplog.text, repr(info.value), str(info.value), repr(client)):
        assert TOKEN not in text
        assert BASIC not in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retry", 3),
        ("retry", False),
        ("retry", {"attempts": 3}),
        ("rate_limit", 200),
        ("rate_limit", (200, 60)),
        ("http_client", httpx.Client()),
        ("http_client", "http://127.0.0.1"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=name):
        make(**{name: value})
