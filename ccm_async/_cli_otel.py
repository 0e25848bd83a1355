"""``fetch --otel``: OpenTelemetry's SDK set up from the standard ``OTEL_*`` variables.

The SDK and its exporters are the operator's to install (``opentelemetry-sdk``,
and ``opentelemetry-exporter-otlp-proto-http`` or ``-grpc`` for OTLP); the
library needs only the API. What is read, as the OpenTelemetry specification
names it:

- ``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``: ``otlp`` (the default),
  ``console`` (to stderr: stdout may carry the records) or ``none``, several
  separated by commas;
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or its ``_TRACES_`` / ``_METRICS_`` forms):
  ``http/protobuf`` (the default) or ``grpc``; endpoint, headers and timeouts are
  read by the exporters themselves, the batching and the export interval by the SDK;
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` (the service is
  ``ccm-async`` unless they name one), ``OTEL_SDK_DISABLED``.

Everything is flushed when the run ends, however it ends. A missing package or
an unknown name ends the command before it starts (status 2).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Generator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ccm_async._cli_summary import stderr_console
from ccm_async._command import EXIT_USAGE

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["exporting"]

_INSTALL: Final = (
    "fetch --otel needs OpenTelemetry's SDK: pip install 'ccm-async[otel]' opentelemetry-sdk "
    "(and opentelemetry-exporter-otlp-proto-http for OTLP)"
)
_EXPORTERS: Final = ("otlp", "console", "none")
_PROTOCOLS: Final = ("http/protobuf", "grpc")
_E = TypeVar("_E")
# Each signal's OTLP exporter: its module under opentelemetry.exporter.otlp.proto.*, its class.
_OTLP: Final = {
    "TRACES": ("trace_exporter", "OTLPSpanExporter"),
    "METRICS": ("metric_exporter", "OTLPMetricExporter"),
}


class OtelSetupError(Exception):
    """The SDK or an exporter named by the environment is missing or unknown."""


@contextmanager
def exporting(environ: Mapping[str, str]) -> Generator[None]:
    """Traces and metrics exported for the block as ``environ`` says, then flushed."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        yield
        return
    try:
        tracer_provider, meter_provider = _providers(environ)
    except OtelSetupError as exc:
        stderr_console().print(f"error: {exc}")
        sys.exit(EXIT_USAGE)
    try:
        yield
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


def _providers(environ: Mapping[str, str]) -> tuple[TracerProvider, MeterProvider]:
    """The SDK's providers with the exporters ``environ`` names, made the global ones."""
    try:
        from opentelemetry import metrics, trace  # noqa: PLC0415 - only with --otel
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise OtelSetupError(_INSTALL) from exc
    span_exporters = _span_exporters(environ)
    metric_exporters = _metric_exporters(environ)
    try:  # the SDK reads OTEL_BSP_*, its limits and its export interval itself
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "ccm-async"}))
        readers = [PeriodicExportingMetricReader(each) for each in metric_exporters]
        tracer_provider = TracerProvider(resource=resource)
        for span_exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    except ValueError as exc:
        reason = " ".join(str(exc).split())
        raise OtelSetupError(f"OpenTelemetry's SDK refused its settings: {reason}") from exc
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


def _span_exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

    return _exporters(environ, "TRACES", lambda: ConsoleSpanExporter(out=sys.stderr))


def _metric_exporters(environ: Mapping[str, str]) -> list[MetricExporter]:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter  # noqa: PLC0415

    return _exporters(environ, "METRICS", lambda: ConsoleMetricExporter(out=sys.stderr))


def _exporters(environ: Mapping[str, str], signal: str, console: Callable[[], _E]) -> list[_E]:
    """The exporters ``OTEL_{signal}_EXPORTER`` names: ``console()``, or OTLP's."""
    exporters: list[_E] = []
    for name in _names(environ, f"OTEL_{signal}_EXPORTER"):
        if name == "console":
            exporters.append(console())
        elif name == "otlp":
            exporters.append(_otlp(environ, signal))
    return exporters


def _names(environ: Mapping[str, str], variable: str) -> list[str]:
    # An empty value is an unset one, as the specification has it.
    names = [name.strip().lower() for name in (environ.get(variable) or "otlp").split(",")]
    for name in names:
        if name not in _EXPORTERS:
            raise OtelSetupError(f"{variable}={name!r} is not one of {', '.join(_EXPORTERS)}")
    return names


def _otlp(environ: Mapping[str, str], signal: str) -> Any:
    variable = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    if variable not in environ:
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = environ.get(variable, "http/protobuf").strip()
    if protocol not in _PROTOCOLS:
        raise OtelSetupError(f"{variable}={protocol!r} is not one of {', '.join(_PROTOCOLS)}")
    package = "grpc" if protocol == "grpc" else "http"
    module, name = _OTLP[signal]
    try:
        exporters = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{package}.{module}")
    except ModuleNotFoundError as exc:
        raise OtelSetupError(
            f"OTLP over {protocol} needs pip install opentelemetry-exporter-otlp-proto-{package}"
        ) from exc
    return getattr(exporters, name)()
