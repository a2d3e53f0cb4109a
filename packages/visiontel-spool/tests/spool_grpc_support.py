"""A real OTLP/gRPC receiver on loopback for visiontel-spool's tests: the three Export
services of opentelemetry-proto's generated servicers, switched between answering
("ok"), UNAVAILABLE ("unavailable"), INVALID_ARGUMENT ("reject"), RESOURCE_EXHAUSTED
with or without RetryInfo ("exhausted", "exhausted-retry") and not answering ("hang")."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from spool_support import span_names

SIGNAL_OF = {"TraceService": "traces", "MetricsService": "metrics", "LogsService": "logs"}


@dataclass
class GrpcCall:
    signal: str
    metadata: dict[str, str]
    body: bytes  # the request as received, serialized again


@dataclass
class GrpcReceiver:
    server: grpc.Server
    port: int
    mode: str = "ok"
    hang_s: float = 30.0
    calls: list[GrpcCall] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Event = field(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        self.mode = mode
        self.changed.set()
        self.changed = threading.Event()

    def bodies(self, signal: str) -> list[bytes]:
        with self.lock:
            return [c.body for c in self.calls if c.signal == signal]

    def span_names(self) -> list[str]:
        return [n for body in self.bodies("traces") for n in span_names(body)]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)  # polling the receiver's record, not synchronising threads
        return condition()

    def handle(self, signal: str, request: Any, context: grpc.ServicerContext, reply: Any) -> Any:
        with self.lock:
            self.attempts += 1
        mode, changed = self.mode, self.changed
        if mode == "hang":
            changed.wait(self.hang_s)  # the client's deadline has passed by then
            context.abort(grpc.StatusCode.UNAVAILABLE, "was hanging")
        if mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "collector down")
        if mode == "reject":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        if mode == "exhausted-retry":
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", b"\x0a\x02\x08\x01"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "later")
        if mode == "exhausted":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too large")
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.calls.append(GrpcCall(signal, metadata, request.SerializeToString()))
        return reply


def start_grpc_receiver(address: str = "127.0.0.1:0") -> GrpcReceiver:
    """On a loopback port (the one it bound is returned: no race for one), or on a Unix
    socket ("unix:PATH"), which a test can stop and start again at the same address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    port = server.add_insecure_port(address)
    receiver = GrpcReceiver(server, port)

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
            reply = trace_service_pb2.ExportTraceServiceResponse()
            return receiver.handle("traces", request, context, reply)

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
            reply = metrics_service_pb2.ExportMetricsServiceResponse()
            return receiver.handle("metrics", request, context, reply)

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
            reply = logs_service_pb2.ExportLogsServiceResponse()
            return receiver.handle("logs", request, context, reply)

    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    server.start()
    return receiver


def stop_grpc_receiver(receiver: GrpcReceiver) -> None:
    receiver.set("ok")  # release hanging handlers
    receiver.server.stop(grace=None)
