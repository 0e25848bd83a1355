"""OpenTelemetry traces and metrics of every lookup (the ``ccm-async[otel]`` extra).

Reports through the global tracer and meter providers, so nothing is recorded
until the application configures the SDK, and a provider set after the client
was made is used from then on.

- A span ``ccm_async.get_call`` per lookup (``ccm.call_sid``, ``ccm.account_sid``,
  ``ccm.attempts``, ``ccm.outcome``; ``ccm.cache_hit`` or ``ccm.shared`` when true),
  with an event per rate-limit wait, 429 pause and backoff. A lookup of a batch
  starts a trace of its own, linked to the batch caller's span: one span holding
  a bulk job's hundred thousand lookups helps nobody.
- Under it, a client span ``GET`` per HTTP attempt, named and described as in
  OpenTelemetry's stable HTTP client conventions (the URL holds no credentials:
  they travel in a header).
- Metrics: ``http.client.request.duration``, ``ccm_async.lookups`` by outcome,
  ``ccm_async.retries``, ``ccm_async.budget_denials``, ``ccm_async.rate_limit.wait``
  and ``ccm_async.in_flight``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from contextvars import Token
from types import TracebackType
from typing import Final, ParamSpec, Self

import httpx
from opentelemetry import context, metrics, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ccm_async._errors import CallNotFoundError
from ccm_async._telemetry import LookupTrace, RequestTrace, Scope, Telemetry, WaitReason
from ccm_async._version import __version__

__all__ = ["OtelTelemetry"]

LOOKUP_SPAN: Final = "ccm_async.get_call"
_SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.26.0"
# The buckets OpenTelemetry's HTTP conventions advise for request durations.
_DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

_Attributes = dict[str, AttributeValue]
_P = ParamSpec("_P")
_warned = False
logger: Final = logging.getLogger("ccm_async")


def _failed(where: str) -> None:
    """Telemetry never fails a lookup: a span processor, sampler or exporter of the
    application's that raises is logged, once, and the lookup goes on."""
    global _warned  # noqa: PLW0603 - once per process, as the SDK's own warnings
    if not _warned:
        _warned = True
        logger.warning("telemetry failed in %s; lookups go on", where, exc_info=True)


def _never_raises(method: Callable[_P, None]) -> Callable[_P, None]:
    @functools.wraps(method)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:  # see _failed
            _failed(method.__qualname__)

    return guarded


class OtelTelemetry(Telemetry):
    """Telemetry through OpenTelemetry's global providers."""

    __slots__ = (
        "_durations",
        "_outcomes",
        "account_sid",
        "budget_denials",
        "duration",
        "in_flight",
        "lookups",
        "retries",
        "server",
        "tracer",
        "waits",
    )

    def __init__(self, *, base_url: str, account_sid: str) -> None:
        url = httpx.URL(base_url)
        self.server: Final[_Attributes] = {
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
        }
        self.account_sid: Final = account_sid
        # Metric attributes, a bounded set (statuses, error classes), made once each.
        self._durations: dict[tuple[int | None, str | None], _Attributes] = {}
        self._outcomes: dict[str, _Attributes] = {}
        self.tracer: Final = trace.get_tracer("ccm_async", __version__, schema_url=_SCHEMA_URL)
        meter = metrics.get_meter("ccm_async", __version__, schema_url=_SCHEMA_URL)
        self.duration: Final = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        self.lookups: Final = meter.create_counter(
            "ccm_async.lookups", unit="{lookup}", description="Lookups ended, by outcome."
        )
        self.retries: Final = meter.create_counter(
            "ccm_async.retries", unit="{request}", description="Requests sent again."
        )
        self.budget_denials: Final = meter.create_counter(
            "ccm_async.budget_denials",
            unit="{retry}",
            description="Retries the retry budget refused.",
        )
        self.waits: Final = meter.create_histogram(
            "ccm_async.rate_limit.wait",
            unit="s",
            description="Waits for a rate-limit permit or for the pause after a 429.",
        )
        self.in_flight: Final = meter.create_up_down_counter(
            "ccm_async.in_flight", unit="{request}", description="Requests in flight."
        )

    def lookup(self, origin: object = None) -> LookupTrace:
        return _Lookup(self, origin if isinstance(origin, _Origin) else None)

    def duration_attributes(self, status: int | None, error_type: str | None) -> _Attributes:
        """A request duration's attributes, made once for each (status, error type)."""
        attributes = self._durations.get((status, error_type))
        if attributes is None:
            attributes = {"http.request.method": "GET", **self.server}
            if status is not None:
                attributes["http.response.status_code"] = status
            if error_type is not None:
                attributes["error.type"] = error_type
            self._durations[status, error_type] = attributes
        return attributes

    def outcome_attributes(self, outcome: str) -> _Attributes:
        """A lookup's count's attributes, made once for each outcome."""
        attributes = self._outcomes.get(outcome)
        if attributes is None:
            attributes = self._outcomes[outcome] = {"ccm.outcome": outcome}
        return attributes

    def batch_origin(self) -> object:
        try:
            caller = trace.get_current_span().get_span_context()
        except Exception:  # see _failed
            _failed("batch_origin")
            return _Origin(context.Context(), ())
        if caller.is_valid and not caller.trace_flags.sampled:
            # A batch under a trace the application chose not to sample stays
            # unsampled: its lookups are the caller's children, and nothing records.
            return _Origin(context.get_current(), ())
        return _Origin(context.Context(), (Link(caller),) if caller.is_valid else ())

    @_never_raises
    def budget_denied(self) -> None:
        self.budget_denials.add(1)


class _Origin:
    """A batch's lookups start traces of their own, linked to the batch's caller."""

    __slots__ = ("context", "links")

    def __init__(self, parent: context.Context, links: tuple[Link, ...]) -> None:
        self.context: Final = parent
        self.links: Final = links


class _SpanScope(Scope):
    """A span for the ``with`` block, current within it; what the block ended with is
    recorded as it ends. Neither end raises (see :func:`_failed`)."""

    __slots__ = ()
    _span: Span
    _token: Token[context.Context] | None

    def __enter__(self) -> Self:
        try:
            self._start()
        except Exception:  # see _failed
            _failed(f"{type(self).__name__}._start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            try:
                self._record(exc)
            finally:
                _end(self._span, self._token)
        except Exception:  # see _failed
            _failed(f"{type(self).__name__}._record")

    def _start(self) -> None:
        raise NotImplementedError

    def _record(self, exc: BaseException | None) -> None:
        raise NotImplementedError


class _Lookup(_SpanScope, LookupTrace):
    __slots__ = ("_attempts", "_cache_hit", "_origin", "_shared", "_span", "_telemetry", "_token")

    def __init__(self, telemetry: OtelTelemetry, origin: _Origin | None) -> None:
        self._telemetry = telemetry
        self._origin = origin
        self._attempts = 0
        self._cache_hit = False
        self._shared = False
        self._span: Span = trace.INVALID_SPAN
        self._token: Token[context.Context] | None = None

    def _start(self) -> None:
        attributes: _Attributes = {"ccm.account_sid": self._telemetry.account_sid}
        tracer = self._telemetry.tracer
        if self._origin is None:
            self._span = tracer.start_span(LOOKUP_SPAN, attributes=attributes)
        else:
            self._span = tracer.start_span(
                LOOKUP_SPAN,
                context=self._origin.context,
                attributes=attributes,
                links=self._origin.links,
            )
        self._token = _make_current(self._span)

    def _record(self, exc: BaseException | None) -> None:
        outcome = _outcome(exc)
        self._telemetry.lookups.add(1, self._telemetry.outcome_attributes(outcome))
        span = self._span
        if span.is_recording():
            span.set_attribute("ccm.attempts", self._attempts)
            span.set_attribute("ccm.outcome", outcome)
            if self._cache_hit:
                span.set_attribute("ccm.cache_hit", True)
            if self._shared:
                span.set_attribute("ccm.shared", True)
            if exc is not None:
                span.set_status(Status(StatusCode.ERROR, _description(exc)))

    def identify(self, call_sid: str) -> None:
        if self._span.is_recording():
            self._span.set_attribute("ccm.call_sid", call_sid)

    def served_from_cache(self) -> None:
        self._cache_hit = True

    def shared(self) -> None:
        self._shared = True

    def sent(self, attempts: int) -> None:
        self._attempts = attempts

    @_never_raises
    def waited(self, seconds: float, reason: WaitReason) -> None:
        self._telemetry.waits.record(seconds, {"ccm.wait.reason": reason})
        # A shared request goes on after its first caller left and its span ended.
        if self._span.is_recording():
            name = "ccm.rate_limit.wait" if reason == "permit" else "ccm.rate_limit.pause"
            self._span.add_event(name, {"ccm.wait.seconds": seconds})

    @_never_raises
    def backoff(self, seconds: float, error: BaseException | None) -> None:
        if self._span.is_recording():
            self._span.add_event(
                "ccm.backoff",
                {"ccm.wait.seconds": seconds, "ccm.backoff.reason": _outcome(error)},
            )

    def request(self, url: str, attempt: int) -> RequestTrace:
        return _Request(self._telemetry, self._span, url, attempt)


class _Request(_SpanScope, RequestTrace):
    __slots__ = (
        "_attempt",
        "_counted",
        "_parent",
        "_span",
        "_started",
        "_status",
        "_telemetry",
        "_token",
        "_url",
    )

    def __init__(self, telemetry: OtelTelemetry, parent: Span, url: str, attempt: int) -> None:
        self._telemetry = telemetry
        self._parent = parent
        self._url = url
        self._attempt = attempt
        self._status: int | None = None
        self._span: Span = trace.INVALID_SPAN
        self._token: Token[context.Context] | None = None
        self._counted = False
        self._started: float | None = None

    def _start(self) -> None:
        telemetry = self._telemetry
        self._started = time.perf_counter()
        if self._attempt > 1:
            telemetry.retries.add(1)
        telemetry.in_flight.add(1, telemetry.server)
        self._counted = True
        # Under a lookup that no SDK traces, a request has nothing to record either.
        if not self._parent.get_span_context().is_valid:
            return
        attributes: _Attributes = {
            "http.request.method": "GET",
            **telemetry.server,
            "url.full": self._url,
        }
        if self._attempt > 1:
            attributes["http.request.resend_count"] = self._attempt - 1
        self._span = telemetry.tracer.start_span(
            "GET",
            context=trace.set_span_in_context(self._parent),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        self._token = _make_current(self._span)

    def _record(self, exc: BaseException | None) -> None:
        telemetry = self._telemetry
        if self._counted:
            telemetry.in_flight.add(-1, telemetry.server)
        error_type = None
        if self._status is not None and self._status >= 400:
            error_type = str(self._status)
        if exc is not None:
            error_type = type(exc).__name__ if isinstance(exc, Exception) else "cancelled"
        if self._started is not None:
            attributes = telemetry.duration_attributes(self._status, error_type)
            telemetry.duration.record(time.perf_counter() - self._started, attributes)
        span = self._span
        if span.is_recording():
            if self._status is not None:
                span.set_attribute("http.response.status_code", self._status)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR))

    def answered(self, status: int) -> None:
        self._status = status


def _make_current(span: Span) -> Token[context.Context] | None:
    # A span that is not sampled still carries its trace onwards; the no-op one
    # (no SDK configured) has nothing to carry and costs nothing to skip.
    if not span.get_span_context().is_valid:
        return None
    return context.attach(trace.set_span_in_context(span))


def _end(span: Span, token: Token[context.Context] | None) -> None:
    if token is not None:
        context.detach(token)
    span.end()


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, CallNotFoundError):
        return "not_found"
    return type(exc).__name__ if isinstance(exc, Exception) else "cancelled"


def _description(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, Exception) else "cancelled"
