"""The web benchmark's baseline: the example app's ``GET /calls/{sid}`` written on
plain httpx, as a user without this library would (one pooled client in the
lifespan, no retries, the status mapping by hand)."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    base = os.environ["EXOTEL_CCM_BASE_URL"]
    account = os.environ["EXOTEL_ACCOUNT_SID"]
    auth = (os.environ["EXOTEL_API_KEY"], os.environ["EXOTEL_API_TOKEN"])
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(
        base_url=f"{base}/v2/accounts/{account}/calls/", auth=auth, limits=limits, timeout=30
    ) as client:
        app.state.http = client
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/calls/{sid}")
async def get_call(sid: str) -> dict[str, Any]:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", sid):
        raise HTTPException(422, "invalid call SID")
    try:
        response = await app.state.http.get(sid)
    except httpx.TimeoutException as exc:
        raise HTTPException(504, "upstream timed out") from exc
    except httpx.HTTPError as exc:
        raise HTTPException(502, "upstream failed") from exc
    if response.status_code == 404:
        raise HTTPException(404, "call not found")
    if response.status_code == 429:
        raise HTTPException(503, "rate limited", {"Retry-After": "1"})
    if response.status_code != 200:
        raise HTTPException(502, f"upstream answered {response.status_code}")
    data: dict[str, Any] = response.json()["response"]["data"]
    return data
