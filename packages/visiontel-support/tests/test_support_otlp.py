"""The one OTLP set-up, against real receivers: an OTLP/HTTP server and an OTLP/gRPC server,
each on a port it bound itself, receiving real exports of the three signals."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry._logs import LogRecord
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from visiontel._support import otlp

REQUESTS = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}


@dataclass
class Received:
    """What a receiver got: (transport, signal or path, headers, decoded request)."""

    calls: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, transport: str, where: str, headers: dict[str, str], request: Any) -> None:
        with self.lock:
            self.calls.append((transport, where, headers, request))


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            signal = self.path.rstrip("/").rsplit("/", 1)[-1]
            request = REQUESTS[signal].FromString(body) if signal in REQUESTS else body
            headers = {k.lower(): v for k, v in self.headers.items()}
            received.add("http", self.path, headers, request)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # holds the port it bound
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = server.add_insecure_port("127.0.0.1:0")  # binds and holds a free port

    def handler(signal: str, reply: Any) -> Any:
        def export(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            received.add("grpc", signal, headers, request)
            return reply

        return export

    traces = type(
        "T",
        (trace_service_pb2_grpc.TraceServiceServicer,),
        {"Export": handler("traces", trace_service_pb2.ExportTraceServiceResponse())},
    )
    metrics = type(
        "M",
        (metrics_service_pb2_grpc.MetricsServiceServicer,),
        {"Export": handler("metrics", metrics_service_pb2.ExportMetricsServiceResponse())},
    )
    logs = type(
        "L",
        (logs_service_pb2_grpc.LogsServiceServicer,),
        {"Export": handler("logs", logs_service_pb2.ExportLogsServiceResponse())},
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(logs(), server)
    server.start()
    yield f"http://127.0.0.1:{port}", received
    server.stop(0)


def _send(signal: str, exporter: Any, marker: str) -> None:
    """One real export of ``signal`` carrying ``marker`` (a span, metric or log body)."""
    if signal == "traces":
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer_provider.get_tracer("t").start_span(marker).end()
        tracer_provider.shutdown()
    elif signal == "metrics":
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        meter_provider = MeterProvider(metric_readers=[reader])
        meter_provider.get_meter("t").create_counter(marker).add(3)
        meter_provider.shutdown()  # collects and exports once
    else:
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        logger_provider.get_logger("t").emit(LogRecord(body=marker))
        logger_provider.shutdown()


def _markers(signal: str, request: Any) -> list[str]:
    if signal == "traces":
        return [s.name for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    if signal == "metrics":
        return [
            m.name for r in request.resource_metrics for sm in r.scope_metrics for m in sm.metrics
        ]
    return [
        lr.body.string_value
        for r in request.resource_logs
        for sl in r.scope_logs
        for lr in sl.log_records
    ]


def _build(signal: str, **kwargs: Any) -> Any:
    factory = {
        "traces": otlp.otlp_span_exporter,
        "metrics": otlp.otlp_metric_exporter,
        "logs": otlp.otlp_log_exporter,
    }[signal]
    return factory(**kwargs)


@pytest.fixture(autouse=True)
def _short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")


@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_explicit_endpoint_reaches_the_receiver(
    protocol: str,
    signal: str,
    http_receiver: tuple[str, Received],
    grpc_receiver: tuple[str, Received],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=k123")
    endpoint, received = grpc_receiver if protocol == "grpc" else http_receiver
    assert otlp.otlp_protocol(signal) == protocol  # type: ignore[arg-type]
    marker = f"probe-{signal}-{protocol}"
    # A base URL, with a trailing slash: the set-up, not the caller, adds /v1/<signal>.
    _send(signal, _build(signal, endpoint=endpoint + "/"), marker)
    ((transport, where, headers, request),) = received.calls
    assert transport == ("grpc" if protocol == "grpc" else "http")
    assert where == (signal if protocol == "grpc" else f"/v1/{signal}")
    assert headers.get("x-api-key") == "k123"  # left to upstream, which reads the variable
    assert _markers(signal, request) == [marker]


def test_http_base_url_with_a_path_keeps_it(
    http_receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = http_receiver
    _send("traces", otlp.otlp_span_exporter(endpoint=endpoint + "/otlp"), "with-path")
    assert [call[1] for call in received.calls] == ["/otlp/v1/traces"]


@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
def test_per_signal_protocol_wins_over_the_general_one(
    signal: str,
    http_receiver: tuple[str, Received],
    grpc_receiver: tuple[str, Received],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """General: gRPC to the gRPC receiver. This signal: HTTP to the HTTP receiver, at the URL
    its own endpoint variable names. No endpoint argument: upstream reads both variables."""
    http_endpoint, http_calls = http_receiver
    grpc_endpoint, grpc_calls = grpc_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_endpoint)
    monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "http/protobuf")
    monkeypatch.setenv(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", f"{http_endpoint}/custom/{signal}"
    )
    others = [s for s in ("traces", "metrics", "logs") if s != signal]
    assert otlp.otlp_protocol(signal) == "http/protobuf"  # type: ignore[arg-type]
    assert [otlp.otlp_protocol(s) for s in others] == ["grpc", "grpc"]  # type: ignore[arg-type]
    _send(signal, _build(signal), f"own-{signal}")
    for other in others:
        _send(other, _build(other), f"general-{other}")
    assert [(c[1], _markers(signal, c[3])) for c in http_calls.calls] == [
        (f"/custom/{signal}", [f"own-{signal}"])
    ]
    assert sorted((c[1], _markers(c[1], c[3])[0]) for c in grpc_calls.calls) == sorted(
        (other, f"general-{other}") for other in others
    )


def test_general_endpoint_variable_gets_the_signal_path_from_upstream(
    http_receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    _send("logs", otlp.otlp_log_exporter(), "env-logs")
    assert [c[1] for c in received.calls] == ["/v1/logs"]


def test_metric_exporter_takes_its_preferences(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics import Counter

    for protocol in ("http/protobuf", "grpc"):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol)
        exporter = otlp.otlp_metric_exporter(
            preferred_temporality={Counter: AggregationTemporality.DELTA}
        )
        assert exporter._preferred_temporality[Counter] is AggregationTemporality.DELTA
        exporter.shutdown()


def test_malformed_protocol_is_logged_and_the_next_in_line_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "carrier-pigeon")
    with caplog.at_level(logging.WARNING, logger="visiontel"):
        assert otlp.otlp_protocol("logs") == "grpc"
    (message,) = [r.getMessage() for r in caplog.records]
    assert "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL='carrier-pigeon'" in message
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC ")  # any case, stripped
    assert otlp.otlp_protocol("traces") == "grpc"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "udp")
    assert otlp.otlp_protocol("traces") == "http/protobuf"


def test_http_json_without_its_exporter_falls_back_to_protobuf(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # opentelemetry-exporter-otlp-json-http is not in the test venv.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with caplog.at_level(logging.WARNING, logger="visiontel"):
        assert otlp.otlp_protocol("traces") == "http/protobuf"
    assert "one of http/protobuf, grpc" in caplog.text


def test_missing_exporter_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    # None in sys.modules is how Python spells "this module cannot be imported".
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(RuntimeError, match="pip install opentelemetry-exporter-otlp-proto-grpc"):
        otlp.otlp_span_exporter()


@pytest.mark.parametrize("endpoint", ["collector:4317", "ftp://collector", "http://", ""])
def test_endpoint_argument_must_be_a_base_url(endpoint: str) -> None:
    with pytest.raises(ValueError, match="base URL such as http://collector:4318"):
        otlp.otlp_span_exporter(endpoint=endpoint)


def test_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="signal must be one of traces, metrics, logs"):
        otlp.otlp_protocol("profiles")  # type: ignore[arg-type]


def test_importing_the_module_imports_no_sdk_or_exporter() -> None:
    code = (
        "import sys, visiontel._support.otlp\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
