"""set_grpc_trace_response and force-trace over a real gRPC server (port 0)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import SpanKind

import visiontel.propagation as vp

TRACERESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
Handler = Callable[[bytes, grpc.ServicerContext], bytes]


class Service:
    """A detector service behind a generic handler; ratio 0, so only forced calls are traced."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(
            sampler=vp.ForceTraceSampler(ParentBasedTraceIdRatio(0.0), max_per_s=100)
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("grpc-test")
        self.server = grpc.server(ThreadPoolExecutor(2))
        handler = grpc.method_handlers_generic_handler(
            "test.Detector",
            {
                "Detect": grpc.unary_unary_rpc_method_handler(self.detect),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "Quiet": grpc.unary_unary_rpc_method_handler(self.quiet),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")  # the server binds and holds it
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def _context(self, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        metadata = context.invocation_metadata()
        ctx = vp.extract_grpc(metadata)
        # what OTEL_PROPAGATORS=...,visiontel_force_trace does inside an instrumentation
        return vp.ForceTracePropagator().extract(dict(metadata), context=ctx)

    def detect(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.tracer.start_as_current_span(
            "detect", context=self._context(context), kind=SpanKind.SERVER
        ):
            context.set_trailing_metadata((("x-model", "ssdlite"),))
            assert vp.set_grpc_trace_response(context)
            return b"%d boxes" % len(request)

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.tracer.start_as_current_span(
            "fail", context=self._context(context), kind=SpanKind.SERVER
        ):
            vp.set_grpc_trace_response(context)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not an image")
        raise AssertionError("abort returns only by raising")

    def quiet(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        # no span at all: nothing to hand back, nothing set
        return b"yes" if vp.set_grpc_trace_response(context) else b"no"

    def call(self, method: str, metadata: tuple[tuple[str, str], ...] = ()):  # type: ignore[no-untyped-def]
        stub = self.channel.unary_unary(f"/test.Detector/{method}")
        return stub.with_call(b"jpeg", metadata=metadata, timeout=10)

    def spans(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)
        self.provider.shutdown()


@pytest.fixture
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.close()


def _traceresponse(metadata) -> re.Match[str]:  # type: ignore[no-untyped-def]
    values = [v for k, v in metadata if k == "traceresponse"]
    assert len(values) == 1, metadata
    match = TRACERESPONSE.fullmatch(values[0])
    assert match, values
    return match


def test_the_trailing_metadata_carries_the_trace_and_keeps_the_handlers_own(service):
    reply, call = service.call("Detect", (("visiontel-force-trace", "1"),))
    assert reply == b"4 boxes"
    trailing = call.trailing_metadata()
    assert ("x-model", "ssdlite") in trailing
    match = _traceresponse(trailing)
    (span,) = service.spans("detect")
    assert match.group(1) == f"{span.context.trace_id:032x}"
    assert match.group(2) == f"{span.context.span_id:016x}"
    assert int(match.group(3), 16) & 1 == 1
    assert span.attributes["visiontel.force_trace"] is True


def test_an_unsampled_call_gets_its_trace_id_too(service):
    _, call = service.call("Detect")
    match = _traceresponse(call.trailing_metadata())
    assert int(match.group(3), 16) & 1 == 0  # not sampled: ratio 0, no header
    assert int(match.group(1), 16) != 0  # but a real trace id, for the logs
    assert service.spans("detect") == []


def test_a_failed_call_carries_it_in_the_error(service):
    with pytest.raises(grpc.RpcError) as raised:
        service.call("Fail", (("visiontel-force-trace", "1"),))
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    match = _traceresponse(error.trailing_metadata())
    (span,) = service.spans("fail")
    assert match.group(1) == f"{span.context.trace_id:032x}"


def test_no_span_sets_nothing(service):
    reply, call = service.call("Quiet")
    assert reply == b"no"
    assert [k for k, _ in call.trailing_metadata() if k == "traceresponse"] == []
