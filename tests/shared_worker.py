"""One process of the shared-limit tests: a client on the account, its share of the
SIDs, and what it logged about Redis, printed as JSON.

    python -m tests.shared_worker BASE_URL STORAGE BACKEND FIRST COUNT REQUESTS PER
"""

from __future__ import annotations

import json
import logging
import sys

import anyio

from ccm_async import AsyncCcmClient, RateLimit

from .test_shared import worker_sids


class Tally(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def fetch(base_url: str, limit: RateLimit, sids: list[str]) -> dict[str, object]:
    async with AsyncCcmClient(
        api_key="k", api_token="t", account_sid="fake-account", base_url=base_url,
        rate_limit=limit,
    ) as ccm:  # fmt: skip
        results = await ccm.get_calls(sids)
    return {"ok": sum(result.ok for result in results), "failed": [
        f"{result.call_sid}: {result.error}" for result in results if not result.ok
    ]}  # fmt: skip


def main() -> None:
    base_url, storage, backend, first, count, requests, per = sys.argv[1:]
    tally = Tally()
    logger = logging.getLogger("ccm_async")
    logger.addHandler(tally)
    logger.setLevel(logging.INFO)
    limit = RateLimit(requests=int(requests), per=float(per), storage=storage)
    sids = worker_sids(int(first), int(count))
    outcome = anyio.run(fetch, base_url, limit, sids, backend=backend)
    redis_lines = [message for message in tally.messages if "Redis" in message]
    print(json.dumps({**outcome, "redis_logs": redis_lines}))


if __name__ == "__main__":
    main()
