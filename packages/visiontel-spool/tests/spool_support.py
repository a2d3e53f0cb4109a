"""Helpers of visiontel-spool's tests (a uniquely named module: every distribution's tests
share one pytest session, so helpers cannot be imported from conftest): a real OTLP/HTTP
receiver on loopback that a test switches between answering, failing, resetting and
hanging, and readers of what it received."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes  # decompressed


@dataclass
class Receiver:
    """mode: "ok" (200), "fail" (503), "reject" (400), "reset" (connection closed without
    an answer, as a refused connection looks to the exporter), "hang" (no answer until the
    mode changes or hang_s passes)."""

    server: http.server.ThreadingHTTPServer
    mode: str = "ok"
    hang_s: float = 30.0
    requests: list[Request] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Event = field(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def set(self, mode: str) -> None:
        self.mode = mode
        self.changed.set()
        self.changed = threading.Event()

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]

    def span_names(self) -> list[str]:
        names = []
        with self.lock:
            bodies = [r.body for r in self.requests if r.path == "/v1/traces"]
        for body in bodies:
            names.extend(span_names(body))
        return names

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)  # polling the receiver's record, not synchronising threads
        return condition()


def span_names(body: bytes) -> list[str]:
    request = ExportTraceServiceRequest.FromString(body)
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def log_bodies(body: bytes) -> list[str]:
    request = ExportLogsServiceRequest.FromString(body)
    return [
        r.body.string_value
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    ]


def metric_names(body: bytes) -> list[str]:
    request = ExportMetricsServiceRequest.FromString(body)
    return [
        m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    ]


def batches(count: int, per_batch: int = 10, pad: int = 600) -> list[list[ReadableSpan]]:
    """`count` batches of finished spans named "b<batch>-<i>", each with a padding attribute."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("full")
    out = []
    for b in range(count):
        for i in range(per_batch):
            tracer.start_span(f"b{b:03d}-{i}", attributes={"pad": "p" * pad}).end()
        out.append(list(memory.get_finished_spans()))
        memory.clear()
    return out


def _handler(receiver_ref: list[Receiver]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            receiver = receiver_ref[0]
            with receiver.lock:
                receiver.attempts += 1
            mode, changed = receiver.mode, receiver.changed
            if mode == "reset":
                self.close_connection = True
                self.connection.close()
                return
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if mode == "hang":
                # The client has given up by the time this returns: answering "ok" then
                # would store a batch the exporter counts as unsent (a duplicate later).
                changed.wait(receiver.hang_s)
                mode = "fail"
            if mode == "ok":
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    data = gzip.decompress(data)
                elif encoding == "deflate":
                    data = zlib.decompress(data)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.requests.append(Request(self.path, headers, data))
                status = 200
            else:
                status = 400 if mode == "reject" else 503
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def start_receiver() -> Receiver:
    ref: list[Receiver] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(ref))
    server.daemon_threads = True
    ref.append(Receiver(server))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return ref[0]


def stop_receiver(receiver: Receiver) -> None:
    receiver.set("ok")  # release hanging handlers
    receiver.server.shutdown()
    receiver.server.server_close()
