"""One stage of the three-process pipeline test (run as a script, not collected).

    python pipeline_stage.py sink     OUT_DIR FRAMES
    python pipeline_stage.py detector OUT_DIR FRAMES BATCH SINK_PORT
    python pipeline_stage.py decoder  OUT_DIR FRAMES DETECTOR_PORT

Each stage exports its spans as JSON lines to OUT_DIR/<stage>.jsonl; servers print
"PORT <n>" once listening. Transport: real gRPC over localhost with generic
handlers (raw bytes, no generated code); context travels in gRPC metadata.
"""

from __future__ import annotations

import json
import pathlib
import queue
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

import visiontel.propagation as vp


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: pathlib.Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                record = {
                    "name": span.name,
                    "service": span.resource.attributes["service.name"],
                    "trace_id": f"{span.context.trace_id:032x}",
                    "span_id": f"{span.context.span_id:016x}",
                    "parent": f"{span.parent.span_id:016x}" if span.parent else None,
                    "links": [
                        [f"{ln.context.trace_id:032x}", f"{ln.context.span_id:016x}"]
                        for ln in span.links
                    ],
                    "attributes": dict(span.attributes or {}),
                }
                self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def tracing(out: pathlib.Path, stage: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": stage}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(out / f"{stage}.jsonl")))
    return provider


def serve(service: str, method: str, handler) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(4))
    rpc = grpc.unary_unary_rpc_method_handler(handler)  # no (de)serializers: raw bytes
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: rpc}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    return server, port


def sink(out: pathlib.Path, frames: int) -> None:
    provider = tracing(out, "sink")
    tracer = provider.get_tracer("sink")
    reader = InMemoryMetricReader()
    latency = vp.FrameLatency(MeterProvider(metric_readers=[reader]))
    received = threading.Semaphore(0)

    def result(request: bytes, context: grpc.ServicerContext) -> bytes:
        ctx = vp.extract_grpc(context.invocation_metadata())
        with vp.continue_frame("track", ctx, tracer=tracer, kind=SpanKind.SERVER):
            latency.record(ctx)
        received.release()
        return b"ok"

    server, _ = serve("visiontel.Sink", "Result", result)
    for _ in range(frames):
        if not received.acquire(timeout=60):
            break
    server.stop(1).wait()
    points = [
        {"count": p.count, "attributes": dict(p.attributes), "sum": p.sum}
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == vp.LATENCY_METRIC
        for p in m.data.data_points
    ]
    (out / "latency.json").write_text(json.dumps(points))
    provider.shutdown()


def detector(out: pathlib.Path, frames: int, batch_size: int, sink_port: int) -> None:
    provider = tracing(out, "detector")
    tracer = provider.get_tracer("detector")
    inbox: queue.Queue[tuple[bytes, object]] = queue.Queue()

    def submit(request: bytes, context: grpc.ServicerContext) -> bytes:
        inbox.put((request, vp.extract_grpc(context.invocation_metadata())))
        return b"queued"

    server, _ = serve("visiontel.Detector", "Submit", submit)
    channel = grpc.insecure_channel(f"127.0.0.1:{sink_port}")
    send = channel.unary_unary("/visiontel.Sink/Result")
    done = 0
    while done < frames:
        items = [inbox.get(timeout=60) for _ in range(min(batch_size, frames - done))]
        with vp.batch_span([c for _, c in items], "detect batch", tracer=tracer) as batch:
            detections = [payload.upper() for payload, _ in items]  # the "model"
        for payload, ctx in zip(detections, batch.contexts):
            with vp.continue_frame("send result", ctx, tracer=tracer, kind=SpanKind.CLIENT):
                metadata: list[tuple[str, str | bytes]] = []
                vp.inject_grpc(metadata)
                send(payload, metadata=metadata, timeout=30)
        done += len(items)
    channel.close()
    server.stop(1).wait()
    provider.shutdown()


def decoder(out: pathlib.Path, frames: int, detector_port: int) -> None:
    provider = tracing(out, "decoder")
    tracer = provider.get_tracer("decoder")
    with grpc.insecure_channel(f"127.0.0.1:{detector_port}") as channel:
        submit = channel.unary_unary("/visiontel.Detector/Submit")
        for sequence in range(frames):
            frame = vp.FrameIdentity.now("cam-1", sequence)
            with vp.start_frame("decode", frame, tracer=tracer):
                metadata: list[tuple[str, str | bytes]] = []
                vp.inject_grpc(metadata)
                submit(b"frame %d" % sequence, metadata=metadata, timeout=30)
    provider.shutdown()


if __name__ == "__main__":
    role, out_dir, count, *rest = sys.argv[1:]
    path, n = pathlib.Path(out_dir), int(count)
    if role == "sink":
        sink(path, n)
    elif role == "detector":
        detector(path, n, int(rest[0]), int(rest[1]))
    else:
        decoder(path, n, int(rest[0]))
