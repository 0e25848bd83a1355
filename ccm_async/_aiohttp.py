"""The ``transport="aiohttp"`` engine: GETs straight into an ``aiohttp.ClientSession``.

No httpx Request or Response objects on the way: the URL is joined from a
prebuilt ``yarl.URL`` (parsed once per base), the headers are the session's,
built once, and the body is read from aiohttp's stream with the same cap and
gzip decoding as every other engine (:mod:`ccm_async._body`).

The session, one per event loop (:class:`~ccm_async._loops.PerLoop`), follows
no redirects, keeps no cookies, decodes nothing itself (``auto_decompress``
off: the capped gunzip is ours), reads no proxy or netrc settings from the
environment (``trust_env=False``) and verifies TLS with the process's shared
context. The client's ``httpx.Timeout`` maps to an ``aiohttp.ClientTimeout``
(see :func:`client_timeout`).

Imported only when a client asks for ``transport="aiohttp"``: aiohttp is an
optional extra, and slow to import.
"""

from __future__ import annotations

import re
from typing import Final

import aiohttp
import httpx
import sniffio
from yarl import URL

from ccm_async._body import decompress, over_declared_cap, read_capped, too_large
from ccm_async._config import MAX_BODY_BYTES
from ccm_async._errors import (
    ConfigurationError,
)
from ccm_async._http import Reply, default_ssl_context, failures_as_transport_errors, reply
from ccm_async._loops import PerLoop
from ccm_async._transport import pool_limits

__all__ = ["AiohttpEngine", "client_timeout"]

# What a call SID may hold (the client checks it before any request): nothing to
# percent-encode, so it is joined to the base's path as it is.
_PLAIN_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")
_STREAM_ERRORS: Final = (aiohttp.ClientError,)


def client_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """The client's ``httpx.Timeout`` in aiohttp's terms.

    - ``connect`` -> ``sock_connect``: opening one socket (TCP and TLS);
    - ``pool`` + ``connect`` -> ``connect``: aiohttp's one bound on getting a
      connection, a wait for a free one in the pool and then opening it (DNS
      included);
    - ``read`` -> ``sock_read``: the longest wait for the next bytes of the
      response, its head or its body;
    - ``write``: aiohttp has no such bound; a GET's request is a few hundred
      bytes, written at once.

    No ``total``: each wait is bounded as with httpx, and the lookup's overall
    deadline is the retry policy's. aiohttp rounds bounds of 5 s or more up to
    a whole second.
    """
    connect, pool = timeout.connect, timeout.pool
    return aiohttp.ClientTimeout(
        total=None,
        connect=None if connect is None or pool is None else connect + pool,
        sock_connect=connect,
        sock_read=timeout.read,
    )


class _Session:
    """One event loop's ``aiohttp.ClientSession``, closed with :meth:`aclose`."""

    __slots__ = ("session",)

    def __init__(
        self, *, headers: dict[str, str], max_connections: int, timeout: aiohttp.ClientTimeout
    ) -> None:
        limits = pool_limits(max_connections)
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            ssl=default_ssl_context(),
            keepalive_timeout=limits.keepalive_expiry,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            raise_for_status=False,
        )

    async def aclose(self) -> None:
        await self.session.close()


class AiohttpEngine:
    """Requests straight into an ``aiohttp.ClientSession`` of ours, one per event loop."""

    def __init__(
        self,
        *,
        headers: dict[str, str],
        max_connections: int,
        timeout: httpx.Timeout,
        asyncio_only: str,
    ) -> None:
        aiohttp_timeout = client_timeout(timeout)

        def new_session() -> _Session:
            # Built once per event loop: the one place to refuse a loop that is not asyncio's.
            if sniffio.current_async_library() != "asyncio":
                raise ConfigurationError(asyncio_only)
            return _Session(
                headers=headers, max_connections=max_connections, timeout=aiohttp_timeout
            )

        self._sessions = PerLoop(new_session)
        # The last base URL seen, parsed: a client sends every GET under one base.
        self._base = ""
        self._base_url = URL()

    def _url(self, url: str, call_sid: str) -> URL:
        if not (url.endswith(call_sid) and _PLAIN_SEGMENT.fullmatch(call_sid)):
            return URL(url)
        base = url[: -len(call_sid)]
        if base != self._base:
            self._base_url, self._base = URL(base), base
        parsed = self._base_url
        return parsed.with_path(parsed.raw_path + call_sid, encoded=True)

    async def get(self, url: str, call_sid: str) -> Reply:
        with failures_as_transport_errors(call_sid):
            holder = await self._sessions.get()
            response = await holder.session.get(self._url(url, call_sid), allow_redirects=False)
            try:
                raw = await _read_body(response, call_sid)
            except BaseException:
                response.close()  # the connection goes with it
                raise
            response.release()
        headers = response.headers
        body = decompress(raw, headers.get("content-encoding"), call_sid)
        return reply(response.status, body, headers.get)

    async def aclose(self) -> None:
        await self._sessions.aclose()


async def _read_body(response: aiohttp.ClientResponse, call_sid: str) -> bytes:
    """The raw body, within the cap; a ``Content-Length`` over it is refused unread."""
    if over_declared_cap(response.headers.get("content-length")):
        raise too_large(call_sid)
    content = response.content
    if content.is_eof():
        # All of it is in already (a small body usually is): no stream to read.
        raw = content.read_nowait()
        if len(raw) > MAX_BODY_BYTES:
            raise too_large(call_sid)
        return raw

    async def close() -> None:
        # Past the cap: closing makes the stream raise a ClientConnectionError,
        # which ends read_capped's loop.
        response.close()

    return await read_capped(
        content.iter_any(),
        close=close,
        stream_errors=_STREAM_ERRORS,
        call_sid=call_sid,
    )
