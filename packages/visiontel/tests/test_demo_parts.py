"""The demo's pieces: wire format, model, tracker, OTLP JSON files, report."""

from __future__ import annotations

import base64
import json
import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from visiontel.demo import _child, _preflight
from visiontel.demo._config import DemoConfig
from visiontel.demo._errors import UsageError, port_in_use
from visiontel.demo._model import MAX_DETECTIONS, MAX_SIDE, build, preprocess, to_frame
from visiontel.demo._otlpjson import FileSpanExporter
from visiontel.demo._report import Span, percentile, waterfall
from visiontel.demo._sink import IoUTracker
from visiontel.demo._wire import KIND_FRAME, Frame, Result, WireError, connect, serve


def test_frame_and_result_round_trip() -> None:
    frame = Frame(KIND_FRAME, 7, 123456789, 4, 2, 3, bytes(range(24)))
    assert Frame.unpack(frame.pack()) == frame
    rows = np.arange(12, dtype=np.float32).tobytes()
    result = Result(KIND_FRAME, 7, 123456789, "2.0-canary", rows)
    back = Result.unpack(result.pack())
    assert back == result and back.count == 2


@pytest.mark.parametrize("payload", [b"", b"VTF1", b"XXXX" + bytes(40)])
def test_foreign_bytes_are_refused(payload: bytes) -> None:
    with pytest.raises(WireError):
        Frame.unpack(payload)
    with pytest.raises(WireError):
        Result.unpack(payload)


def test_server_binds_port_zero_and_reports_the_port_it_got() -> None:
    server, port = serve("/t.Echo/Call", lambda request, context: request[::-1], 0)
    try:
        assert port != 0
        channel = connect(port, timeout=10)
        assert channel.unary_unary("/t.Echo/Call")(b"abc", timeout=10) == b"cba"
        channel.close()
    finally:
        server.stop(0)


def test_server_does_not_share_a_port_in_use(busy_port: int) -> None:
    # gRPC's default SO_REUSEPORT would let it bind beside another SO_REUSEPORT listener.
    other, port = serve("/t.Echo/Call", lambda request, context: request, 0)
    try:
        for taken in (busy_port, port):
            with pytest.raises(OSError, match=f"port {taken} on 127.0.0.1 is in use"):
                serve("/t.Echo/Call", lambda request, context: request, taken)
    finally:
        other.stop(0)


def test_launcher_picks_no_port_and_checks_the_ones_given(busy_port: int) -> None:
    config = DemoConfig(run_dir="unused")
    _preflight.ports(config)
    assert (config.detector_port, config.sink_port) == (0, 0)  # the services bind port 0
    config.sink_port = busy_port
    with pytest.raises(UsageError) as caught:
        _preflight.ports(config)
    assert str(caught.value) == str(port_in_use(busy_port, "--sink-port"))


def test_a_service_that_cannot_bind_says_the_launchers_line() -> None:
    error = _child.bind_error("tracker", 50051, "--sink-port")
    assert isinstance(error, UsageError) and error.exit_code == 2
    assert str(error) == (
        "port 50051 on 127.0.0.1 is in use (--sink-port): stop what holds it, pick another "
        "--sink-port, or leave --sink-port out to use a free port"
    )
    unbound = _child.bind_error("tracker", 0, "--sink-port")
    assert not isinstance(unbound, UsageError) and "no free port" in str(unbound)


def test_model_versions_are_reproducible_and_distinct() -> None:
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    tensor, scale = preprocess(image.tobytes(), 320, 240, 3)
    assert scale == 1.0 and tensor.shape == (1, 3, 240, 320)
    with torch.inference_mode():
        a1, a2, b = build("1.0")(tensor)[0], build("1.0")(tensor)[0], build("2.0")(tensor)[0]
    assert torch.equal(a1, a2)
    assert not (a1.shape == b.shape and torch.equal(a1, b))
    for rows in (a1, b):
        assert rows.shape[1] == 6 and rows.shape[0] <= MAX_DETECTIONS
        assert bool((rows[:, 4] >= 0.3).all())  # above the score threshold


def test_large_frames_are_scaled_and_boxes_mapped_back() -> None:
    image = np.zeros((1080, 1920, 3), np.uint8)
    tensor, scale = preprocess(image.tobytes(), 1920, 1080, 3)
    assert max(tensor.shape[2:]) == MAX_SIDE and scale == pytest.approx(MAX_SIDE / 1920)
    rows = torch.tensor([[10.0, 10.0, 700.0, 400.0, 0.9, 1.0]])
    boxes = np.frombuffer(to_frame(rows, scale, 1920, 1080), np.float32).reshape(-1, 6)
    assert boxes[0, 0] == pytest.approx(30.0) and boxes[0, 2] == 1920  # clipped
    assert boxes[0, 3] == 1080


def test_tracker_keeps_identity_of_a_moving_box() -> None:
    tracker = IoUTracker()
    box = np.array([[10, 10, 50, 50, 0.9, 0]], np.float32)
    assert tracker.update(box) == (1, 1)
    moved = box.copy()
    moved[0, :4] += 5
    assert tracker.update(moved) == (1, 0)  # same track
    far = np.array([[200, 200, 240, 240, 0.9, 0]], np.float32)
    assert tracker.update(far) == (2, 1)  # new track; the old one is only missing
    for _ in range(6):
        tracker.update(far)
    assert tracker.update(far) == (1, 0)  # the missing one was dropped


def _decode_ids_to_base64(node: object) -> object:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId"):
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                _decode_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _decode_ids_to_base64(item)
    return node


def test_span_file_is_otlp_json(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "traces.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}))
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(path)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        with tracer.start_as_current_span("child", attributes={"n": 3}):
            pass
    provider.shutdown()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    spans = [json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0] for line in lines]
    child, outer = spans
    context = parent.get_span_context()
    assert outer["traceId"] == f"{context.trace_id:032x}"  # hex, not base64
    assert outer["spanId"] == f"{context.span_id:016x}"
    assert child["parentSpanId"] == outer["spanId"]
    assert outer["kind"] == 2  # enums as integers (SPAN_KIND_SERVER)
    assert child["attributes"] == [{"key": "n", "value": {"intValue": "3"}}]
    # Apart from the hex ids, it is the protobuf JSON mapping: it parses back.
    request = json_format.ParseDict(
        _decode_ids_to_base64(json.loads(lines[1])), ExportTraceServiceRequest()
    )
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "parent"


def test_waterfall_and_percentile() -> None:
    ms = 1_000_000
    spans = [
        Span("frame-source", "t", "a", "", "capture", 0, 2 * ms, {"visiontel.frame.sequence": 4}),
        Span("detector", "t", "b", "a", "detect", 3 * ms, 9 * ms),
        Span("detector", "t", "c", "b", "preprocess", 3 * ms, 4 * ms),
        Span("tracker", "t", "d", "b", "track", 9 * ms, 10 * ms),
    ]
    lines = waterfall(spans)
    assert "frame 4" in lines[0] and "10.0 ms" in lines[0]
    body = lines[2:]
    assert [line.split("|")[0].split()[-1] for line in body] == [
        "capture", "detect", "preprocess", "track",
    ]  # fmt: skip
    assert body[2].split("|")[0].index("preprocess") > body[1].split("|")[0].index("detect")
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([1.0] * 99 + [100.0], 99) == 1.0
    assert percentile([1.0] * 98 + [100.0] * 2, 99) == 100.0


def test_direct_span_json_equals_the_protobuf_path() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        SpanContext,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
        set_span_in_context,
    )

    from visiontel.demo import _spanjson

    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "unit", "n": 1}, schema_url="https://x/1")
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("scope-a", "1.2", schema_url="https://x/s")
    other = provider.get_tracer("scope-b")
    remote = SpanContext(
        0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "v1")]),
    )  # fmt: skip
    values = {
        "s": "x", "b": True, "i": -3, "f": 0.25, "nan": float("nan"), "inf": float("-inf"),
        "strs": ["a", "b"], "ints": [1, 2], "empty": [], "bytes": b"\x00\xff",
    }  # fmt: skip
    with tracer.start_as_current_span(
        "parent", context=set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.CONSUMER,
        attributes=values, links=[Link(remote, {"why": "batch"})],
    ) as parent:  # fmt: skip
        parent.add_event("evt", {"k": 1}, timestamp=123)
        parent.add_event("bare")
        with other.start_as_current_span("child") as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))
        with tracer.start_as_current_span("ok") as fine:
            fine.set_status(Status(StatusCode.OK))
    spans = memory.get_finished_spans()
    assert len(spans) == 3
    _assert_same_json(_spanjson.request(spans), encode_spans(spans))


def _assert_same_json(direct: dict[str, Any], message: Message) -> None:
    """The directly written JSON equals the encoder's message through the JSON mapping."""
    from visiontel.demo._otlpjson import _hex_ids

    reference = _hex_ids(json_format.MessageToDict(message, use_integers_for_enums=True))
    # NaN never equals itself: compare the JSON texts, sorted so key order does not matter.
    assert json.dumps(direct, sort_keys=True) == json.dumps(reference, sort_keys=True)


def test_direct_log_json_equals_the_protobuf_path() -> None:
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    from visiontel.demo import _logjson

    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "unit", "n": 1}, schema_url="https://x/1")
    )
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    in_trace = set_span_in_context(
        NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1)))
    )
    logger = provider.get_logger("scope-a", "1.2", schema_url="https://x/s")
    logger.emit(
        LogRecord(
            timestamp=123, observed_timestamp=456, context=in_trace, severity_text="INFO",
            severity_number=SeverityNumber.INFO, body="frame 7: 3 detections",
            attributes={"code.function.name": "result", "code.line.number": 117, "f": 0.5},
        )
    )  # fmt: skip
    provider.get_logger("scope-b").emit(
        LogRecord(body={"k": [1, "two"], "b": True}, severity_number=SeverityNumber.WARN)
    )
    logger.emit(LogRecord(timestamp=1, event_name="demo.event"))
    records = memory.get_finished_logs()
    assert len(records) == 3
    direct = _logjson.request(records)
    _assert_same_json(direct, encode_logs(records))
    assert direct["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["traceId"] == f"{0xABC:032x}"
