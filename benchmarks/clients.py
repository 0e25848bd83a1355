"""One benchmark measurement, in its own process: N lookups at concurrency C by one client.

Prints one JSON object: lookups per second, client CPU milliseconds per lookup,
errors. Every client decodes the JSON body, as a user's code would.

    python benchmarks/clients.py --client httpx --concurrency 100 --count 20000 --base URL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable

ACCOUNT = "bench-account"
PATH = "/v2/accounts/" + ACCOUNT + "/calls/"
Runner = Callable[[str, list[str], int], Awaitable[int]]


def sids(count: int, offset: int = 0) -> list[str]:
    return [f"{i + offset:032x}" for i in range(count)]


async def tuned_httpx(base: str, call_sids: list[str], concurrency: int) -> int:
    """httpx.AsyncClient with a pool of C and a semaphore of C around gather."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    errors = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, auth=("k", "t")) as client:

        async def one(sid: str) -> None:
            nonlocal errors
            async with semaphore:
                response = await client.get(PATH + sid)
                if response.status_code != 200 or not response.json()["response"]["data"]:
                    errors += 1

        await asyncio.gather(*(one(sid) for sid in sids(concurrency, 10**9)))  # warm the pool
        started.set()
        await asyncio.gather(*(one(sid) for sid in call_sids))
    return errors


async def plain_aiohttp(base: str, call_sids: list[str], concurrency: int) -> int:
    """aiohttp.ClientSession with a connector limit of C and a semaphore of C."""
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"authorization": "Basic aytrOnQ="}
    async with aiohttp.ClientSession(base, connector=connector, headers=headers) as session:

        async def one(sid: str) -> None:
            nonlocal errors
            async with semaphore, session.get(PATH + sid) as response:
                if response.status != 200 or not (await response.json())["response"]["data"]:
                    errors += 1

        await asyncio.gather(*(one(sid) for sid in sids(concurrency, 10**9)))
        started.set()
        await asyncio.gather(*(one(sid) for sid in call_sids))
    return errors


async def ccm_async(base: str, call_sids: list[str], concurrency: int, **options: object) -> int:
    """ccm_async's get_calls with max_concurrency=C (default install, or the aiohttp extra)."""
    from ccm_async import AsyncCcmClient

    async with AsyncCcmClient(
        api_key="k",
        api_token="t",
        account_sid=ACCOUNT,
        base_url=base,
        max_concurrency=concurrency,
        **options,  # type: ignore[arg-type]
    ) as client:
        await client.get_calls(sids(concurrency, 10**9))
        started.set()
        results = await client.get_calls(call_sids)
    return sum(not result.ok for result in results)


async def ccm_async_fast(base: str, call_sids: list[str], concurrency: int) -> int:
    return await ccm_async(base, call_sids, concurrency, transport="aiohttp")


CLIENTS: dict[str, Runner] = {
    "httpx": tuned_httpx,
    "aiohttp": plain_aiohttp,
    "ccm_async": ccm_async,
    "ccm_async+aiohttp": ccm_async_fast,
}
started = asyncio.Event()


async def measure(client: str, base: str, concurrency: int, count: int) -> dict[str, object]:
    runner = CLIENTS[client]
    task = asyncio.create_task(runner(base, sids(count), concurrency))
    await started.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    errors = await task
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "client": client,
        "concurrency": concurrency,
        "count": count,
        "lookups_per_s": count / wall,
        "cpu_ms_per_lookup": cpu * 1000 / count,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    result = asyncio.run(measure(args.client, args.base, args.concurrency, args.count))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
