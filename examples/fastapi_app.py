"""A FastAPI backend that looks calls up: ``GET /calls/{sid}``.

One client for the app's lifetime (its pool, single-flight and retry budget are
shared by every request), the lookup bounded by a deadline of its own, and every
library error answered as an RFC 9457 problem document::

    EXOTEL_API_KEY=... EXOTEL_API_TOKEN=... EXOTEL_ACCOUNT_SID=... EXOTEL_REGION=in \\
        uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ccm_async import AsyncCcmClient, CcmError

LOOKUP_TIMEOUT = float(os.environ.get("CCM_LOOKUP_TIMEOUT", "10"))
"""Seconds a web request waits for its lookup, retries included."""


def create_app(
    environ: Mapping[str, str] | None = None,
    *,
    lookup_timeout: float = LOOKUP_TIMEOUT,
    **client_options: Any,
) -> FastAPI:
    """The app, its client configured from ``environ`` (``os.environ`` by default)
    and ``client_options`` (:class:`AsyncCcmClient`'s keyword arguments)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        async with AsyncCcmClient.from_env(environ, **client_options) as ccm:
            app.state.ccm = ccm
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/calls/{sid}")
    async def get_call(sid: str, request: Request) -> dict[str, Any]:
        ccm: AsyncCcmClient = request.app.state.ccm
        return (await ccm.get_call(sid, timeout=lookup_timeout)).to_dict()

    @app.exception_handler(CcmError)
    async def problem(request: Request, exc: CcmError) -> JSONResponse:
        problem = exc.to_problem()
        return JSONResponse(problem.body, status_code=problem.status, headers=problem.headers)

    return app


app = create_app()
