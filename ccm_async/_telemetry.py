"""What the client tells an application's tracing and metrics, if it listens.

Every lookup goes through a :class:`LookupTrace` and every HTTP attempt
through a :class:`RequestTrace`. The classes here record nothing: they are what
a client gets with ``telemetry=False``, or without the ``ccm-async[otel]``
extra, and cost a method call each. :mod:`._otel`'s subclasses report through
OpenTelemetry's global providers (no-ops until the application configures the
SDK). :func:`telemetry_for` picks one, importing OpenTelemetry only if asked
and installed.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Final, Literal, Self

__all__ = ["LookupTrace", "RequestTrace", "Scope", "Telemetry", "WaitReason", "telemetry_for"]

WaitReason = Literal["permit", "pause"]
logger: Final = logging.getLogger("ccm_async")


class Scope:
    """A trace is a ``with`` block: it ends with the block, and what ended it."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return


class RequestTrace(Scope):
    """One HTTP attempt, from its send to its answer or failure."""

    __slots__ = ()

    def answered(self, status: int) -> None:
        """The server answered with HTTP ``status``."""


class LookupTrace(Scope):
    """One lookup, from ``get_call`` to its call or its error."""

    __slots__ = ()

    def identify(self, call_sid: str) -> None:
        """The lookup is of ``call_sid`` (once the SID is known to be one)."""

    def served_from_cache(self) -> None:
        """The terminal-call cache answered: nothing was sent."""

    def shared(self) -> None:
        """Another caller's request for the same SID answers this lookup too."""

    def sent(self, attempts: int) -> None:
        """The lookup's own requests, counted when it ends."""

    def waited(self, seconds: float, reason: WaitReason) -> None:
        """A wait for a rate-limit permit, or for the client's pause after a 429."""

    def backoff(self, seconds: float, error: BaseException | None) -> None:
        """The wait before a retry, after ``error``."""

    def request(self, url: str, attempt: int) -> RequestTrace:
        """The trace of attempt number ``attempt`` (from 1), a GET of ``url``."""
        return _NO_REQUEST


class Telemetry:
    """Where a client's traces and metrics go."""

    __slots__ = ()

    def lookup(self, origin: object = None) -> LookupTrace:
        """A new lookup's trace; ``origin`` is a batch's, from :meth:`batch_origin`."""
        return _NO_LOOKUP

    def batch_origin(self) -> object:
        """What each lookup of a batch started now links to (None: nothing)."""
        return None

    def budget_denied(self) -> None:
        """The retry budget refused a retry."""


_NO_REQUEST = RequestTrace()
_NO_LOOKUP = LookupTrace()
_SILENT = Telemetry()


def telemetry_for(*, enabled: bool, base_url: str, account_sid: str) -> Telemetry:
    """OpenTelemetry's, when ``enabled`` and the API is installed; else the silent one."""
    if not enabled:
        return _SILENT
    try:
        from ccm_async._otel import OtelTelemetry  # noqa: PLC0415 - imported only if asked
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        return _SILENT  # the extra is not installed
    try:
        return OtelTelemetry(base_url=base_url, account_sid=account_sid)
    except Exception:
        # An API older than the extra's bound, installed by another package, lacks
        # what the instruments need: the client goes on without them.
        logger.warning(
            "telemetry is off: the installed opentelemetry-api cannot make its "
            "instruments (ccm-async[otel] needs opentelemetry-api>=1.30)",
            exc_info=True,
        )
        return _SILENT
