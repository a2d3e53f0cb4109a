"""With an OTLP endpoint set, the same run ships OTLP/HTTP there instead of writing files."""

from __future__ import annotations

import collections
import gzip
import pathlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from demo_support import clean_env, run_visiontel
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

FRAMES = 10


class _Receiver(BaseHTTPRequestHandler):
    """The smallest OTLP/HTTP receiver: keeps every request body, answers 200."""

    received: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.received.append((self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def collector() -> Iterator[ThreadingHTTPServer]:
    yield from _receiver()


@pytest.fixture
def traces_collector() -> Iterator[ThreadingHTTPServer]:
    yield from _receiver()


def test_ships_otlp_to_the_endpoint(collector: ThreadingHTTPServer, tmp_path: pathlib.Path) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    env = clean_env()
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    result = run_visiontel("demo", "--frames", str(FRAMES), "--fps", "0", cwd=tmp_path, env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert f"Telemetry went to {endpoint}" in result.stdout
    (run_dir,) = (tmp_path / "visiontel-output").iterdir()
    assert not list(run_dir.glob("*/*.jsonl"))  # nothing written to files

    by_path = collections.defaultdict(list)
    for path, body in collector.received:  # type: ignore[attr-defined]
        by_path[path].append(body)
    spans = [
        (rs.resource, span)
        for body in by_path["/v1/traces"]
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in rs.scope_spans
        for span in scope.spans
    ]
    services = {
        attr.value.string_value
        for resource, _ in spans
        for attr in resource.attributes
        if attr.key == "service.name"
    }
    assert services == {"frame-source", "detector", "tracker"}
    captures = [span for _, span in spans if span.name == "capture"]
    assert len(captures) == FRAMES
    tracks = [span for _, span in spans if span.name == "track"]
    assert {s.trace_id for s in tracks} == {s.trace_id for s in captures}

    metric_names = {
        metric.name
        for body in by_path["/v1/metrics"]
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for scope in rm.scope_metrics
        for metric in scope.metrics
    }
    assert {"visiontel.inference.duration", "visiontel.frame.latency"} <= metric_names
    logs = [
        record
        for body in by_path["/v1/logs"]
        for rl in ExportLogsServiceRequest.FromString(body).resource_logs
        for scope in rl.scope_logs
        for record in scope.log_records
    ]
    assert sum(r.body.string_value.startswith("frame ") for r in logs) == FRAMES


def test_a_per_signal_endpoint_takes_that_signal_elsewhere(
    collector: ThreadingHTTPServer, traces_collector: ThreadingHTTPServer, tmp_path: pathlib.Path
) -> None:
    # The services' exporters (visiontel._support.otlp) leave OTEL_EXPORTER_OTLP_* to the
    # upstream exporters: a per-signal endpoint wins over the general one for its signal.
    env = clean_env()
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{collector.server_address[1]}"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = (
        f"http://127.0.0.1:{traces_collector.server_address[1]}/custom/traces"
    )
    result = run_visiontel("demo", "--frames", "5", "--fps", "0", cwd=tmp_path, env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    general = {path for path, _ in collector.received}  # type: ignore[attr-defined]
    assert general == {"/v1/metrics", "/v1/logs"}
    traced = [body for path, body in traces_collector.received]  # type: ignore[attr-defined]
    assert {path for path, _ in traces_collector.received} == {"/custom/traces"}  # type: ignore[attr-defined]
    names = {
        span.name
        for body in traced
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in rs.scope_spans
        for span in scope.spans
    }
    assert "capture" in names and "track" in names
