"""The demo's telemetry set-up: the upstream OTLP JSON file exporters and the log bridge.

The files must be what ``opentelemetry-exporter-otlp-json-file`` writes (one OTLP/JSON
export request per line, checked with the upstream JSON decoder and against the protobuf
schema), and the demo's own report must read them.
"""

from __future__ import annotations

import base64
import json
import logging
import pathlib
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto_json.collector.logs.v1 import logs_service
from opentelemetry.proto_json.collector.metrics.v1 import metrics_service
from opentelemetry.proto_json.collector.trace.v1 import trace_service
from opentelemetry.trace import SpanKind

from visiontel.demo import _report
from visiontel.demo._telemetry import SERVICE_NAMES, LogBridge, Telemetry, build

# signal: (the upstream JSON message, the protobuf message) of one export request
_REQUESTS: dict[str, tuple[Any, type[Message]]] = {
    "traces": (
        trace_service.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceRequest,
    ),
    "metrics": (
        metrics_service.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceRequest,
    ),
    "logs": (logs_service.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceRequest),
}
_IDS = frozenset(("traceId", "spanId", "parentSpanId"))


def _ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex; the plain protobuf JSON mapping wants base64."""
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in _IDS else _ids_to_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_ids_to_base64(item) for item in node]
    return node


@pytest.fixture
def sink_files(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """The tracker's three files after a frame's worth of spans, metrics and log records."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    telemetry = build("sink", "run-1", tmp_path)
    assert telemetry.tracer_provider and telemetry.meter_provider and telemetry.log_handler
    tracer = telemetry.tracer_provider.get_tracer("visiontel.demo.tracker")
    meter = telemetry.meter_provider.get_meter("visiontel.demo.tracker")
    logger = logging.getLogger("visiontel.demo.tracker.test")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [telemetry.log_handler]
    try:
        with tracer.start_as_current_span("capture", kind=SpanKind.SERVER) as root:
            root.set_attribute("visiontel.frame.sequence", 7)
            with tracer.start_as_current_span(
                "track", attributes={"visiontel.model.version": "1.0"}
            ):
                meter.create_counter("visiontel.demo.tracks.started").add(2, {"v": "1.0"})
                meter.create_histogram("visiontel.frame.latency", unit="s").record(0.01)
                logger.info("frame %d: %d detections", 7, 3)
    finally:
        logger.handlers = []
        telemetry.shutdown()
    return tmp_path / SERVICE_NAMES["sink"]


def _lines(path: pathlib.Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("signal", sorted(_REQUESTS))
def test_each_line_is_an_upstream_otlp_json_request(sink_files: pathlib.Path, signal: str) -> None:
    upstream, proto = _REQUESTS[signal]
    lines = _lines(sink_files / f"{signal}.jsonl")
    assert lines
    for line in lines:
        # What the upstream encoder writes for the request it decodes, key for key.
        assert upstream.from_dict(line).to_dict() == line
        # And the OTLP schema: unknown or misspelt keys fail here (ids aside, proto3 JSON).
        json_format.ParseDict(_ids_to_base64(line), proto())


def test_the_report_reads_the_upstream_files(sink_files: pathlib.Path) -> None:
    run_dir = sink_files.parent
    spans = _report.load_spans(run_dir)
    assert [s.name for s in sorted(spans, key=lambda s: s.start)] == ["capture", "track"]
    capture = next(s for s in spans if s.name == "capture")
    track = next(s for s in spans if s.name == "track")
    assert track.parent_id == capture.span_id and len(capture.trace_id) == 32
    assert capture.attributes["visiontel.frame.sequence"] == 7  # int64 back from a string
    assert list(_report.frame_traces(spans)) == [capture.trace_id]
    names, logs = _report.metric_summary(run_dir)
    assert names["tracker"] == {"visiontel.demo.tracks.started", "visiontel.frame.latency"}
    assert logs["tracker"] == 1
    assert _report.files_summary(run_dir)[2].split() == [
        "tracker", "traces.jsonl", "metrics.jsonl", "logs.jsonl",
    ]  # fmt: skip
    record = _lines(sink_files / "logs.jsonl")[0]["resourceLogs"][0]["scopeLogs"][0]
    assert record["scope"]["name"] == "visiontel.demo.tracker.test"
    (entry,) = record["logRecords"]
    assert entry["traceId"] == capture.trace_id and entry["spanId"] == track.span_id
    assert entry["body"] == {"stringValue": "frame 7: 3 detections"}
    assert _report.attributes(entry["attributes"])["code.function.name"] == "sink_files"


def test_the_bridge_leaves_out_the_sdks_own_loggers(tmp_path: pathlib.Path) -> None:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    bridge = LogBridge(provider)
    for name in ("opentelemetry.sdk.trace.export", "visiontel.demo.detector"):
        logger = logging.getLogger(name)
        logger.addHandler(bridge)
        try:
            logger.warning("from %s", name)
            logger.debug("below INFO: left out")
        finally:
            logger.removeHandler(bridge)
    bodies = [r.log_record.body for r in memory.get_finished_logs()]
    assert bodies == ["from visiontel.demo.detector"]
    provider.shutdown()


def test_shutdown_takes_the_bridge_off_the_root_logger(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    telemetry: Telemetry = build("source", "run-2", tmp_path)
    root = logging.getLogger()
    assert telemetry.log_handler is not None
    root.addHandler(telemetry.log_handler)
    telemetry.shutdown()
    assert telemetry.log_handler not in root.handlers
    assert (tmp_path / "frame-source" / "traces.jsonl").exists()
