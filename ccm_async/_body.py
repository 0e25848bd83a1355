"""Reading a response body: capped while it streams in, and gunzipped within the cap.

Every engine hands its body's chunks here, so the cap and the decoding are the
same whichever HTTP stack read them. The cap holds for the decoded size too: we
ask for gzip and decode it ourselves with a bounded zlib, so a small compressed
bomb cannot expand past it.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterable, Awaitable, Callable

from ccm_async._config import MAX_BODY_BYTES
from ccm_async._errors import ResponseFormatError

__all__ = ["decompress", "over_declared_cap", "read_capped", "too_large"]


def over_declared_cap(content_length: str | None) -> bool:
    """Whether a ``Content-Length`` already says the body is over the cap."""
    declared = content_length or ""
    # isascii: str.isdigit() also accepts digits int() refuses, such as '²'.
    return declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES


async def read_capped(
    chunks: AsyncIterable[bytes],
    *,
    close: Callable[[], Awaitable[None]],
    stream_errors: tuple[type[BaseException], ...],
    call_sid: str,
) -> bytes:
    """The raw body from ``chunks``, refused as soon as it passes the cap.

    Past the cap the response is closed with ``close`` and the iteration left to
    end by itself: breaking out would strand the HTTP stack's nested generators
    unfinished (a ResourceWarning on trio). What the closed stream raises then
    (one of ``stream_errors``) is the closing, not a failure.
    """
    body = bytearray()
    try:
        async for chunk in chunks:
            if len(body) > MAX_BODY_BYTES:
                continue
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                await close()
    except stream_errors:
        if len(body) <= MAX_BODY_BYTES:
            raise  # a real failure, not the stream we closed
    if len(body) > MAX_BODY_BYTES:
        raise too_large(call_sid)
    return bytes(body)


def decompress(body: bytes, encoding: str | None, call_sid: str) -> bytes:
    """The body as sent, decoded from gzip (every member of it) within the cap."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise ResponseFormatError(
            f"unexpected content-encoding {encoding!r:.40}", call_sid=call_sid
        )
    decoded = bytearray()
    rest = body
    try:
        # A gzip stream may hold several members, one after another (RFC 1952).
        while rest:
            decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            decoded += decoder.decompress(rest, MAX_BODY_BYTES + 1 - len(decoded))
            if len(decoded) > MAX_BODY_BYTES or decoder.unconsumed_tail:
                raise too_large(call_sid)
            if not decoder.eof:
                raise ResponseFormatError("truncated gzip body", call_sid=call_sid)
            rest = decoder.unused_data
    except zlib.error as exc:
        raise ResponseFormatError(f"undecodable gzip body: {exc}", call_sid=call_sid) from None
    return bytes(decoded)


def too_large(call_sid: str) -> ResponseFormatError:
    """The error for a body over the cap."""
    return ResponseFormatError(
        f"response body exceeds {MAX_BODY_BYTES} bytes; refused", call_sid=call_sid
    )
