"""The client's counters, and the :class:`~ccm_async.ClientStats` snapshot made of them.

Every attempt counts itself here (``_attempt``), and so does the retry budget
when it refuses a retry (``Lookup``'s ``on_denied``); ``client.stats`` is a
snapshot that later work does not change.
"""

from __future__ import annotations

import collections
from types import MappingProxyType

from ccm_async._models import ClientStats
from ccm_async._throttle import AdaptiveRate

__all__ = ["Counters"]


class Counters:
    """The mutable tallies behind ``AsyncCcmClient.stats``."""

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self.responses: collections.Counter[int] = collections.Counter()
        self.transport_errors = 0
        self.budget_denials = 0
        self.rate_limit_waits = 0

    def deny_retry(self) -> None:
        """The retry budget refused a retry."""
        self.budget_denials += 1

    def snapshot(self, limiter: object) -> ClientStats:
        """The tallies so far, with the rate ``limiter`` adapted to (if it adapts)."""
        return ClientStats(
            requests=self.requests,
            retries=self.retries,
            responses=MappingProxyType(dict(self.responses)),
            transport_errors=self.transport_errors,
            budget_denials=self.budget_denials,
            rate_limit_waits=self.rate_limit_waits,
            adaptive_rate=limiter.rate if isinstance(limiter, AdaptiveRate) else None,
        )
