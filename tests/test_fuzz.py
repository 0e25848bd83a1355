"""Fuzzed responses: whatever a server sends, only a CcmError that names the problem comes out."""

from __future__ import annotations

import copy
import gzip
import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ccm_async import (
    ApiError,
    CallDetails,
    CcmError,
    ResponseFormatError,
)
from ccm_async._pacing import HeaderPacer, parse_rate_window
from ccm_async._retry_after import parse_retry_after

from .conftest import stand_in_client

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = json.loads((FIXTURES / "sample_response.json").read_text())
SID = SAMPLE["response"]["data"]["call_sid"]
# v3's sample, about the same call: a v3 lookup of SID may get a call back.
V3_SAMPLE = json.loads((FIXTURES / "v3_sample_response.json").read_text())
V3_SAMPLE["response"]["call_details"]["sid"] = SID
LONGEST_MESSAGE = 1000

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats()
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with any of its parts replaced by arbitrary JSON, nulled or dropped."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(json_values)
    if choice == 1:
        return None
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if draw(st.integers(0, 11)) != 0:  # now and then a key goes missing
                result[key] = draw(mutated(item))
        return result
    if isinstance(value, list):
        return [draw(mutated(item)) for item in value]
    return value


def envelope_bodies() -> st.SearchStrategy[bytes]:
    samples = st.sampled_from([SAMPLE, V3_SAMPLE]).map(copy.deepcopy)
    return samples.flatmap(mutated).map(lambda doc: json.dumps(doc).encode())


def rest_exception_bodies() -> st.SearchStrategy[bytes]:
    """Exotel's other error shape, its parts of any type and size."""
    texts = st.text(max_size=3000) | json_values
    fields = st.fixed_dictionaries(
        {"Status": st.sampled_from([404, 429, 500]) | json_values, "Message": texts, "Code": texts}
    )
    exception = fields | json_values
    return exception.map(lambda value: json.dumps({"RestException": value}).encode())


def error_bodies() -> st.SearchStrategy[bytes]:
    """Error envelopes whose texts are long, multi-line or full of control characters."""
    texts = st.text(max_size=3000) | json_values
    error_data = st.fixed_dictionaries(
        {"code": st.integers(0, 10_000) | json_values, "message": texts, "description": texts}
    )
    documents = st.fixed_dictionaries(
        {
            "request_id": texts,
            "response": st.fixed_dictionaries(
                {
                    "code": st.sampled_from([401, 404, 429, 500]) | json_values,
                    "status": st.just("failure") | json_values,
                    "error_data": error_data,
                }
            ),
        }
    )
    return documents.map(lambda doc: json.dumps(doc).encode())


def truncated_bodies() -> st.SearchStrategy[bytes]:
    whole = json.dumps(SAMPLE).encode()
    return st.integers(0, len(whole) - 1).map(lambda end: whole[:end])


def deeply_nested_bodies() -> st.SearchStrategy[bytes]:
    def nest(depth: int) -> bytes:
        inner = b"[" * depth + b"]" * depth
        return b'{"response": {"status": "success", "code": 200, "data": ' + inner + b"}}"

    return st.integers(1, 200_000).map(nest)


def huge_number_bodies() -> st.SearchStrategy[bytes]:
    def with_number(digits: int) -> bytes:
        data = {**SAMPLE["response"]["data"], "total_talk_time": "NUMBER"}
        body = json.dumps({"response": {"status": "success", "code": 200, "data": data}})
        return body.replace('"NUMBER"', "9" * digits).encode()

    return st.integers(1, 20_000).map(with_number)


bodies = st.one_of(
    envelope_bodies(),
    error_bodies(),
    rest_exception_bodies(),
    truncated_bodies(),
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    deeply_nested_bodies(),
    huge_number_bodies(),
    st.just(b"<html><body>502 Bad Gateway</body></html>"),
)
header_values = (
    st.binary(max_size=40)
    | st.integers(-5, 10**7).map(lambda n: str(n).encode())
    | st.floats().map(lambda x: str(x).encode())
)


@st.composite
def responses(draw: st.DrawFn) -> tuple[int, dict[bytes, bytes], bytes]:
    status = draw(st.sampled_from([200, 404, 429, 500, 502]) | st.integers(100, 999))
    body = draw(bodies)
    headers = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    b"retry-after",
                    b"content-length",
                    b"content-type",
                    b"content-encoding",
                    b"x-ratelimit-remaining",
                    b"x-ratelimit-reset",
                ]
            ),
            header_values,
        )
    )
    if draw(st.booleans()):
        headers[b"content-encoding"] = b"gzip"
        body = gzip.compress(body) if draw(st.booleans()) else body
    return status, headers, body


async def fetch(status: int, headers: dict[bytes, bytes], body: bytes) -> CallDetails:
    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    # Each version reads the other's bodies too, as a wrong api_version would.
    api_version = "v3" if b"call_details" in body else "v2"
    async with stand_in_client(
        httpx.MockTransport(answer), retry=None, api_version=api_version
    ) as client:
        return await client.get_call(SID)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
# What this test found once, kept: an error without the SID, a call in a 1xx
# answer, a digit int() refuses, a code of 300 digits, control characters.
@example((200, {}, b"<html></html>"))
@example((100, {}, json.dumps(SAMPLE).encode()))
@example((200, {b"content-length": b"\xb2"}, b"null"))
@example((500, {}, b'{"response": {"status": "failure", "code": 1%s}}' % (b"0" * 300)))
@example(
    (
        200,
        {},
        b'{"request_id": "\\n\\u001b[2J", "response": {"status": "failure", '
        b'"code": 401, "error_data": {"code": "\xc2\xb2", "message": "a\\fb"}}}',
    )
)
async def test_any_response_is_a_call_or_a_ccm_error(
    response: tuple[int, dict[bytes, bytes], bytes],
) -> None:
    status, headers, body = response
    try:
        call = await fetch(status, headers, body)
    except CcmError as exc:
        error = exc
    else:
        assert 200 <= status < 300
        assert call.call_sid is None or isinstance(call.call_sid, str)
        return
    # A typed answer about the response (never a transport failure), short and specific.
    assert isinstance(error, ApiError | ResponseFormatError)
    message = str(error)
    assert message.strip()
    assert len(message) <= LONGEST_MESSAGE
    assert message.isprintable()
    assert error.call_sid == SID
    if isinstance(error, ApiError):
        assert error.http_status == status


@given(st.text() | st.binary().map(lambda raw: raw.decode("latin-1")))
def test_any_retry_after_is_a_wait_or_none(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or seconds >= 0.0


rate_header_values = (
    st.text(max_size=30)
    | st.binary(max_size=30).map(lambda raw: raw.decode("latin-1"))
    | st.integers(-(10**12), 10**12).map(str)
    | st.floats().map(str)
    | st.floats(0, 3 * 86_400).map(lambda seconds: f"{time.time() + seconds:.3f}")
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(rate_header_values, rate_header_values), max_size=5))
@pytest.mark.virtual_clock
async def test_no_rate_limit_headers_hold_a_send_for_over_a_minute(
    pairs: list[tuple[str, str]],
) -> None:
    pacer = HeaderPacer()
    for sequence, (remaining, reset) in enumerate(pairs):
        window = parse_rate_window(remaining, reset)
        if window is None:
            continue
        assert window.remaining >= 0
        assert 0.0 <= window.reset_in <= 86_400.0
        pacer.observe(window, sequence=sequence)
    started = anyio.current_time()
    for _ in range(3):
        await pacer.acquire()
    assert anyio.current_time() - started <= 3 * 60.1
