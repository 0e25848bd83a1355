"""OpenTelemetry's SDK set up once per test process, reading spans and metrics in memory.

The global providers can be set only once in a process, so every test that reads
telemetry shares these; :func:`recording` clears what came before and records
only while its test runs (the rest of the suite's lookups are not kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider


class Recorded(SpanProcessor):
    """The spans that end while armed, in the order they end."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.armed = False
        self.broken = False  # a processor that raises, as an application's may

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.armed and self.broken:
            raise RuntimeError("a broken span processor")

    def on_end(self, span: ReadableSpan) -> None:
        if self.armed and self.broken:
            raise RuntimeError("a broken span processor")
        if self.armed:
            self.spans.append(span)

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans if span.name == name]


class Telemetry:
    """What a test recorded: its spans, and its metric points since it began."""

    def __init__(self, spans: Recorded, reader: InMemoryMetricReader) -> None:
        self.recorded = spans
        self._reader = reader

    @property
    def spans(self) -> list[ReadableSpan]:
        return self.recorded.spans

    def lookups(self) -> list[ReadableSpan]:
        return self.recorded.named("ccm_async.get_call")

    def requests(self) -> list[ReadableSpan]:
        return self.recorded.named("GET")

    def points(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Each metric's points since the last call: (attributes, value), a histogram's
        value being (count, sum)."""
        data = self._reader.get_metrics_data()
        points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if isinstance(point, HistogramDataPoint):
                            value: Any = (point.count, point.sum)
                        else:
                            assert isinstance(point, NumberDataPoint)
                            value = point.value
                        points.setdefault(metric.name, []).append((attributes, value))
        return points

    def dumped(self) -> str:
        """Every span and metric as JSON text, to search for what must not be there."""
        data = self._reader.get_metrics_data()
        return "\n".join([*(span.to_json() for span in self.spans), data.to_json() if data else ""])


_installed: tuple[Recorded, InMemoryMetricReader] | None = None


def _install() -> tuple[Recorded, InMemoryMetricReader]:
    global _installed  # noqa: PLW0603 - the process's providers, set once
    if _installed is None:
        spans = Recorded()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(spans)
        trace.set_tracer_provider(tracer_provider)
        delta = AggregationTemporality.DELTA
        reader = InMemoryMetricReader(
            preferred_temporality={Counter: delta, UpDownCounter: delta, Histogram: delta}
        )
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _installed = spans, reader
    return _installed


@contextmanager
def recording() -> Iterator[Telemetry]:
    """The telemetry recorded from now until the block ends."""
    spans, reader = _install()
    reader.get_metrics_data()  # what earlier tests left
    spans.spans.clear()
    spans.armed = True
    try:
        yield Telemetry(spans, reader)
    finally:
        spans.armed = spans.broken = False
