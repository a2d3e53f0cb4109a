"""One process of tests/test_propagators_cross_process.py (run as a script, not collected).

    python propagators_stage.py sink     OUT_DIR FRAMES
    python propagators_stage.py detector OUT_DIR FRAMES SINK_PORT
    python propagators_stage.py source   OUT_DIR FRAMES DETECTOR_PORT

source --HTTP--> detector --gRPC--> sink. Nothing here names a propagator: each process
follows the OTEL_PROPAGATORS it was started with, through opentelemetry.propagate's
global propagator, as any instrumented service would. Spans go to OUT_DIR/<role>.jsonl
through the SDK's ConsoleSpanExporter (one JSON object per line); what arrived on the
wire goes to OUT_DIR/<role>.wire.jsonl. Servers bind port 0 and print "PORT <n>".
"""

from __future__ import annotations

import http.client
import http.server
import json
import pathlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import SpanKind

import visiontel.propagation as vp

STREAM = "rtsp://user:secret@cam-4/main"  # sent without its credentials


def _one_line(span: ReadableSpan) -> str:
    return json.dumps(json.loads(span.to_json())) + "\n"


def setup(out: pathlib.Path, role: str) -> tuple[TracerProvider, Any]:
    """The SDK, exporting every span to OUT_DIR/<role>.jsonl as it ends."""
    spans = (out / f"{role}.jsonl").open("w", encoding="utf-8")
    provider = TracerProvider(resource=Resource.create({"service.name": role}))
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=spans, formatter=_one_line))
    )
    trace.set_tracer_provider(provider)
    return provider, (out / f"{role}.wire.jsonl").open("w", encoding="utf-8")


def same_trace(ours: Context, carrier: Any) -> bool:
    """Whether OpenTelemetry's own global propagator (what any instrumentation library in
    this process uses) reads the same, valid span context from ``carrier`` as we did."""
    theirs = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    mine = trace.get_current_span(ours).get_span_context()
    return mine.is_valid and (theirs.trace_id, theirs.span_id) == (mine.trace_id, mine.span_id)


def sink(out: pathlib.Path, frames: int) -> None:
    provider, wire = setup(out, "sink")
    received = threading.Semaphore(0)
    lock = threading.Lock()

    def result(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = context.invocation_metadata()
        ctx = vp.extract_grpc(metadata)
        with vp.continue_frame("sink", ctx, kind=SpanKind.SERVER):
            pass
        frame = vp.get_frame(ctx)
        with lock:
            keys = sorted({key for key, _ in metadata if not key.startswith(("grpc-", ":"))})
            agrees = same_trace(ctx, dict(metadata))
            wire.write(json.dumps({"keys": keys, "frame": frame, "otel_agrees": agrees}) + "\n")
            wire.flush()
        received.release()
        return b"ok"

    server = grpc.server(ThreadPoolExecutor(2))
    rpc = grpc.unary_unary_rpc_method_handler(result)  # raw bytes: no generated code
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Sink", {"Put": rpc}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    for _ in range(frames):
        if not received.acquire(timeout=60):
            break
    server.stop(1).wait()
    provider.shutdown()


def detector(out: pathlib.Path, frames: int, sink_port: int) -> None:
    provider, wire = setup(out, "detector")
    channel = grpc.insecure_channel(f"127.0.0.1:{sink_port}")
    put = channel.unary_unary("/t.Sink/Put")
    handled = threading.Semaphore(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ctx = vp.extract_http(self.headers)
            with vp.continue_frame("detect", ctx, kind=SpanKind.SERVER):
                metadata: list[tuple[str, str | bytes]] = []
                vp.inject_grpc(metadata)
                put(body.upper(), metadata=metadata, timeout=30)
            keys = sorted(k.lower() for k in self.headers)
            agrees = same_trace(ctx, self.headers)
            wire.write(json.dumps({"keys": keys, "otel_agrees": agrees}) + "\n")
            wire.flush()
            self.send_response(204)
            self.end_headers()
            handled.release()

        def log_message(self, format: str, *args: Any) -> None:  # keep stderr quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    for _ in range(frames):
        if not handled.acquire(timeout=60):
            break
    server.shutdown()
    channel.close()
    provider.shutdown()


def source(out: pathlib.Path, frames: int, detector_port: int) -> None:
    provider, _ = setup(out, "source")
    connection = http.client.HTTPConnection("127.0.0.1", detector_port, timeout=30)
    for sequence in range(frames):
        with vp.start_frame("capture", vp.FrameIdentity.now(STREAM, sequence)):
            headers: dict[str, str] = {"Content-Type": "application/octet-stream"}
            vp.inject_http(headers)
            connection.request("POST", "/detect", body=b"frame %d" % sequence, headers=headers)
            response = connection.getresponse()
            response.read()
            assert response.status == 204, response.status
    connection.close()
    provider.shutdown()


if __name__ == "__main__":
    role, out_dir, count, *rest = sys.argv[1:]
    path, n = pathlib.Path(out_dir), int(count)
    if role == "sink":
        sink(path, n)
    elif role == "detector":
        detector(path, n, int(rest[0]))
    else:
        source(path, n, int(rest[0]))
