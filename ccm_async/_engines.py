"""Which engine sends the requests of a client without ``http_client``, by ``transport=``.

(A user's ``http_client`` gets a :class:`~ccm_async._http.ClientEngine` around
it, in ``_setup``.) ``transport="httpx"`` (the default) gets the own pool
(:class:`~ccm_async._http.PoolEngine`), or httpx clients of our own when the
environment names proxies (httpx's mounts apply them); ``transport="aiohttp"``
gets :class:`~ccm_async._aiohttp.AiohttpEngine`, on asyncio only.
"""

from __future__ import annotations

import urllib.request
from typing import Final, Literal

import httpx
import sniffio

from ccm_async._errors import ConfigurationError
from ccm_async._http import ClientEngine, Engine, PoolEngine, default_ssl_context
from ccm_async._loops import PerLoop

__all__ = ["own_engine"]


def own_engine(
    transport: Literal["httpx", "aiohttp"],
    *,
    base_url: str,
    headers: dict[str, str],
    max_connections: int,
    timeout: httpx.Timeout,
) -> Engine:
    """The engine of a client without ``http_client``."""
    if transport == "aiohttp":
        engine = _aiohttp_engine(headers=headers, max_connections=max_connections, timeout=timeout)
        if _running_library() not in (None, "asyncio"):
            raise ConfigurationError(_AIOHTTP_NEEDS_ASYNCIO)
        return engine
    if transport != "httpx":
        raise ConfigurationError("transport must be 'httpx' or 'aiohttp'")
    if urllib.request.getproxies():
        # Proxies from the environment need httpx's mounts.
        from ccm_async._transport import pool_limits  # noqa: PLC0415

        clients = PerLoop(
            lambda: httpx.AsyncClient(
                limits=pool_limits(max_connections), timeout=timeout, verify=default_ssl_context()
            )
        )
        return ClientEngine(clients, headers=headers)
    host = httpx.URL(base_url).netloc.decode("ascii")
    return PoolEngine(host=host, headers=headers, max_connections=max_connections, timeout=timeout)


_AIOHTTP_NEEDS_ASYNCIO: Final = (
    "transport='aiohttp' needs asyncio (aiohttp runs on asyncio only); "
    "use the default transport='httpx' under trio"
)


def _running_library() -> str | None:
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


def _aiohttp_engine(
    *, headers: dict[str, str], max_connections: int, timeout: httpx.Timeout
) -> Engine:
    # The extra, asked for first: an engine module imported before would not notice it gone.
    try:
        import aiohttp  # noqa: F401, PLC0415  # pyright: ignore[reportUnusedImport]
    except ImportError as exc:
        raise ConfigurationError(
            "transport='aiohttp' needs the extra: pip install 'ccm-async[aiohttp]'"
        ) from exc
    from ccm_async._aiohttp import AiohttpEngine  # noqa: PLC0415 - imports aiohttp

    return AiohttpEngine(
        headers=headers,
        max_connections=max_connections,
        timeout=timeout,
        asyncio_only=_AIOHTTP_NEEDS_ASYNCIO,
    )
