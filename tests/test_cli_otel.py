"""``ccm-async fetch --otel``: a bulk job's traces and metrics, exported as OTEL_* says."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ccm_async.testing import FakeCcm
from tests.cli_support import assert_no_secret, ccm, sids_of

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver on loopback: keeps every export's path and body."""

    def __init__(self) -> None:
        self.exports: list[tuple[str, bytes]] = []
        super().__init__(("127.0.0.1", 0), _Receive)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, path: str) -> list[bytes]:
        return [body for where, body in self.exports if where == path]


class _Receive(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.exports.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_a_fetch_exports_a_span_per_lookup_and_its_metrics_over_otlp(
    served: tuple[FakeCcm, dict[str, str]], collector: Collector, tmp_path: Path
) -> None:
    fake, env = served
    found = sids_of(fake, 20, found=True)
    [missing] = sids_of(fake, 1, found=False)
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_SERVICE_NAME": "nightly-sync",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # one export, when the run ends
        "OTEL_TRACES_EXPORTER": "",  # empty is unset: otlp
    }
    output = tmp_path / "calls.jsonl"
    done = await ccm({**env, **otel}, "fetch", "--otel", "-o", str(output), *found, missing)
    assert done.returncode == 1, done.stderr  # the missing SID
    spans = []
    for body in collector.bodies("/v1/traces"):
        assert_no_secret(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert service["service.name"] == "nightly-sync"
            spans += [span for scope in resource.scope_spans for span in scope.spans]
    lookups = [span for span in spans if span.name == "ccm_async.get_call"]
    outcomes = sorted(
        a.value.string_value for span in lookups for a in span.attributes if a.key == "ccm.outcome"
    )
    assert outcomes == ["not_found"] + ["ok"] * 20
    assert len([span for span in spans if span.name == "GET"]) == 21
    names = set()
    for body in collector.bodies("/v1/metrics"):
        assert_no_secret(body)
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            names |= {metric.name for scope in resource.scope_metrics for metric in scope.metrics}
    assert {"http.client.request.duration", "ccm_async.lookups"} <= names


async def test_the_console_exporter_writes_to_stderr_and_leaves_stdout_to_the_records(
    served: tuple[FakeCcm, dict[str, str]],
) -> None:
    fake, env = served
    sids = sids_of(fake, 3, found=True)
    otel = {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"}
    done = await ccm({**env, **otel}, "fetch", "--otel", *sids)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["call_sid"] for line in done.stdout.splitlines()] == sids
    assert done.stderr.count(b'"name": "ccm_async.get_call"') == 3
    assert b'"name": "ccm_async.lookups"' in done.stderr


async def test_otel_sdk_disabled_exports_nothing(
    served: tuple[FakeCcm, dict[str, str]], collector: Collector
) -> None:
    fake, env = served
    otel = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
    done = await ccm({**env, **otel}, "fetch", "--otel", *sids_of(fake, 2, found=True))
    assert done.returncode == 0, done.stderr
    assert collector.exports == []


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, b"OTEL_TRACES_EXPORTER='zipkin' is not one of"),
        ({"OTEL_METRICS_EXPORTER": "none,prometheus"}, b"OTEL_METRICS_EXPORTER='prometheus'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, b"OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            b"needs pip install opentelemetry-exporter-otlp-proto-grpc",
        ),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, b"refused its settings: max_queue_size must be"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, b"refused its settings: interval value 0.0 is"),
        # The SDK's own words vary: 1.30's message for it fails its own formatting.
        ({"OTEL_ATTRIBUTE_COUNT_LIMIT": "abc"}, b"OpenTelemetry's SDK refused its settings:"),
    ],
)
async def test_an_exporter_it_cannot_make_stops_the_run_before_it_starts(
    served: tuple[FakeCcm, dict[str, str]], variables: dict[str, str], message: bytes
) -> None:
    fake, env = served
    done = await ccm({**env, **variables}, "fetch", "--otel", *sids_of(fake, 1, found=True))
    assert done.returncode == 2
    assert message in done.stderr
    assert b"Traceback" not in done.stderr
    assert fake.request_count == 0


async def test_without_the_sdk_otel_says_what_to_install() -> None:
    script = """
import importlib.abc, sys

class NoSdk(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("opentelemetry.sdk"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoSdk())
sys.argv = ["ccm-async", "fetch", "--otel", "a" * 32]
from ccm_async._command import main
main()
"""
    env = {"EXOTEL_API_KEY": "k", "EXOTEL_API_TOKEN": "t" * 12, "EXOTEL_ACCOUNT_SID": "a"}
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-c", script], env=env, check=False)
    assert done.returncode == 2
    assert b"pip install 'ccm-async[otel]' opentelemetry-sdk" in done.stderr
    assert b"Traceback" not in done.stderr
