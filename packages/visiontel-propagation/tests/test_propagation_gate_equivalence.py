"""The fast paths and the public OpenTelemetry API give the same results everywhere.

Every main propagation path (dict, HTTP, gRPC, message-queue and slot carriers, batch
links, frame identity, stage spans, hand-off) runs twice, once with the gate forced on
and once forced off, and everything observable is compared: carrier contents, the
extracted contexts (keys, span contexts, trace state, baggage, frame) and the finished
spans with their links. Span ids come from a counter, so both runs make the same ones.
"""

from __future__ import annotations

import email.message
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags, TraceState

import visiontel.propagation as vp
from visiontel.propagation import _otel_private

CAMERA = vp.FrameIdentity("rtsp://user:secret@cam-3/main", 77, 1_732_540_000_000_000_001)


class _CountingIds(IdGenerator):
    """Predictable ids, so that the fast and the public run create the same spans."""

    def __init__(self) -> None:
        self._next = 0x1000

    def generate_span_id(self) -> int:
        self._next += 1
        return self._next

    def generate_trace_id(self) -> int:
        self._next += 1
        return self._next << 64 | 0xABC


def _remote(trace_id: int, span_id: int, flags: int, state: TraceState | None = None) -> Context:
    span_context = SpanContext(trace_id, span_id, True, TraceFlags(flags), state)
    return trace.set_span_in_context(NonRecordingSpan(span_context), Context())


def _sample_contexts() -> dict[str, Context]:
    state = TraceState([("vendor", "a1"), ("other", "x")])
    full = _remote(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, 1, state)
    full = baggage.set_baggage("site", "north dock, bay=3", full)
    full = baggage.set_baggage("tenant", "ü-7", full)
    return {
        "everything": vp.set_frame(CAMERA, full),
        "unsampled with frame": vp.set_frame(CAMERA, _remote(5, 6, 0)),
        "trace context only": _remote(7, 8, 1),
        "baggage only": baggage.set_baggage("site", "dock", Context()),
        "frame only": vp.set_frame(CAMERA, Context()),
        "empty": Context(),
    }


def _context_summary(ctx: Context) -> dict[str, object]:
    span = trace.get_current_span(ctx)
    sc = span.get_span_context()
    return {
        "keys": sorted(ctx),
        "span type": type(span).__name__,
        "span context": (type(sc).__name__, *sc[:3], type(sc.trace_flags).__name__),
        "flags": int(sc.trace_flags),
        "trace state": list(sc.trace_state.items()),
        "valid": sc.is_valid,
        "baggage": dict(baggage.get_all(ctx)),
        "frame": vp.get_frame(ctx),
        "other values": {
            key: value
            for key, value in ctx.items()
            if not isinstance(value, Span | dict | vp.FrameIdentity)
        },
    }


def _carriers(ctx: Context, base: Context) -> dict[str, object]:
    """Every carrier's contents and what extracting them gives, on two bases."""
    seen: dict[str, object] = {}
    meta: dict[str, object] = {"shape": (720, 1280, 3), "baggage": "stale=1"}
    vp.inject_dict(meta, ctx)
    seen["dict"] = sorted(meta.items())
    seen["dict extracted"] = _context_summary(vp.extract_dict(meta))
    seen["dict on base"] = _context_summary(vp.extract_dict(meta, base))

    headers: dict[str, str] = {}
    vp.inject_http(headers, ctx)
    as_message = email.message.Message()
    for key, value in headers.items():
        as_message[key.title()] = value
    asgi = [(k.encode(), v.encode()) for k, v in headers.items()]
    seen["http"] = sorted(headers.items())
    seen["http titled"] = _context_summary(
        vp.extract_http({k.title(): v for k, v in headers.items()})
    )
    seen["http message"] = _context_summary(vp.extract_http(as_message, base))
    seen["http asgi"] = _context_summary(vp.extract_http(asgi))

    metadata: list[tuple[str, str | bytes]] = [("user-agent", "grpc-python"), ("traceparent", "x")]
    vp.inject_grpc(metadata, ctx)
    seen["grpc"] = list(metadata)
    seen["grpc extracted"] = _context_summary(vp.extract_grpc(metadata, base))

    mq: list[tuple[str, bytes]] = [("content-type", b"image/jpeg")]
    vp.inject_mq(mq, ctx)
    seen["mq"] = list(mq)
    seen["mq extracted"] = _context_summary(vp.extract_mq(mq))

    slot = vp.pack_slot(ctx)
    seen["slot"] = slot
    seen["slot extracted"] = _context_summary(vp.extract_slot(slot, 0, base))

    token = otel_context.attach(ctx)  # inject's default: the current context
    try:
        current: dict[str, str] = {}
        vp.inject_dict(current)
    finally:
        otel_context.detach(token)
    seen["current"] = sorted(current.items())
    return seen


def _grpc_trace_bin() -> dict[str, object]:
    binary = bytes([0, 0]) + (0x1234).to_bytes(16, "big") + bytes([1])
    binary += (0x56).to_bytes(8, "big") + bytes([2, 1])
    with_frame = [("grpc-trace-bin", binary), ("visiontel-frame", CAMERA.to_header())]
    return {"grpc-trace-bin": _context_summary(vp.extract_grpc(with_frame))}


def _span_summary(span: ReadableSpan) -> dict[str, object]:
    attributes = dict(span.attributes or {})
    attributes.pop("visiontel.frame.age", None)  # depends on the clock
    return {
        "name": span.name,
        "kind": span.kind,
        "ids": (span.context.trace_id, span.context.span_id, int(span.context.trace_flags)),
        "parent": None if span.parent is None else (span.parent.trace_id, span.parent.span_id),
        "parent remote": None if span.parent is None else span.parent.is_remote,
        "attributes": attributes,
        "links": [
            (
                link.context.trace_id,
                link.context.span_id,
                int(link.context.trace_flags),
                dict(link.context.trace_state),
                dict(link.attributes or {}),
                link.dropped_attributes,
            )
            for link in span.links
        ],
        "dropped links": span.dropped_links,
    }


def _spans_and_handoff() -> dict[str, object]:
    """Batch links and chunks, stage spans and hand-off, on a fresh provider."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=_CountingIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("equivalence")
    seen: dict[str, object] = {}
    try:
        with vp.start_frame("decode", CAMERA, tracer=tracer):
            sent: dict[str, str] = {}
            vp.inject_dict(sent)
        arrived = vp.extract_dict(sent)
        with vp.continue_frame("detect", arrived, tracer=tracer):
            pass
        frames = [vp.extract_dict(sent)]
        for n in range(1, 7):  # sampled and unsampled frames, one with no context at all
            carrier: dict[str, str] = {}
            vp.inject_dict(carrier, vp.set_frame(CAMERA._replace(sequence=n), _remote(n, n, n % 2)))
            frames.append(vp.extract_dict(carrier) if n != 4 else Context())
        frames.append(Context({"foreign": "value"}))
        with vp.batch_span(frames, "infer", tracer=tracer, max_links=3) as batch:
            seen["batch"] = (batch.linked, batch.chunks, batch.without_context)
        seen["batch contexts"] = [_context_summary(c) for c in batch.contexts]
        with vp.batch_span(frames, "infer links only", tracer=tracer, member_spans=False) as batch:
            seen["links only"] = (batch.linked, batch.chunks, batch.without_context)
        seen["handoff"] = _handoff(arrived)
        seen["spans"] = [_span_summary(span) for span in exporter.get_finished_spans()]
    finally:
        provider.shutdown()
    return seen


def _handoff(ctx: Context) -> list[object]:
    def observe() -> dict[str, object]:
        return _context_summary(otel_context.get_current())

    results: list[object] = []
    thread = threading.Thread(target=vp.bind(lambda: results.append(observe()), ctx))
    thread.start()
    thread.join()
    token = otel_context.attach(ctx)
    try:
        with vp.ContextThreadPoolExecutor(max_workers=1) as pool:
            results.append(pool.submit(observe).result())
        handed: vp.ContextQueue[str] = vp.ContextQueue(queue.Queue())
        handed.put("frame")
    finally:
        otel_context.detach(token)
    item, received = handed.get()
    results.append((item, _context_summary(received)))
    return results


def _everything() -> dict[str, object]:
    base = baggage.set_baggage("tenant", "base", Context({"caller-key": "kept"}))
    observed: dict[str, object] = {
        name: _carriers(ctx, base) for name, ctx in _sample_contexts().items()
    }
    observed.update(_grpc_trace_bin())
    observed.update(_spans_and_handoff())
    return observed


@pytest.fixture
def gate() -> Iterator[Callable[[bool], None]]:
    yield _otel_private._force
    _otel_private._force(None)  # the next use decides afresh


def _run_with(gate: Callable[[bool], None], fast: bool, scenario: Callable[[], Any]) -> Any:
    gate(fast)
    assert _otel_private.fast_paths_enabled() is fast
    return scenario()


def test_fast_and_public_paths_give_the_same_results(gate):
    fast = _run_with(gate, True, _everything)
    public = _run_with(gate, False, _everything)
    assert fast.keys() == public.keys()
    for name in fast:
        assert fast[name] == public[name], name


def test_the_comparison_sees_what_it_should(gate):
    """Guard against comparing two empty results: the scenario really carries things."""
    observed = _run_with(gate, False, _everything)
    everything = observed["everything"]
    assert ("tracestate", "vendor=a1,other=x") in everything["dict"]
    extracted = everything["dict on base"]
    assert extracted["baggage"] == {"tenant": "ü-7", "site": "north dock, bay=3"}
    assert extracted["other values"] == {"caller-key": "kept"}
    assert extracted["frame"] == CAMERA._replace(stream_id="rtsp://cam-3/main")
    assert observed["batch"] == (3, 1, 2) and observed["links only"] == (6, 0, 2)
    names = [span["name"] for span in observed["spans"]]
    assert names.count("infer member") == 4 and "infer links" in names
    assert any(span["links"] for span in observed["spans"] if span["name"] == "infer")


@pytest.mark.parametrize("fast", [True, False])
def test_each_path_alone_is_right(gate, fast, tracing):
    """Beyond agreeing with each other, both paths give the right answer."""
    gate(fast)
    ctx = _sample_contexts()["everything"]
    extracted = vp.extract_grpc(_grpc_metadata(ctx))
    sc = trace.get_current_span(extracted).get_span_context()
    assert (sc.trace_id, sc.span_id, sc.is_remote, sc.trace_flags.sampled) == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0xF067AA0BA902B7,
        True,
        True,
    )
    assert sc.trace_state.to_header() == "vendor=a1,other=x"
    assert baggage.get_all(extracted) == {"site": "north dock, bay=3", "tenant": "ü-7"}
    with vp.batch_span([extracted, Context()], tracer=tracing.tracer) as batch:
        pass
    (span,) = tracing.named("infer batch")
    assert [link.context for link in span.links] == [sc]
    assert (batch.linked, batch.without_context) == (1, 1)


def _grpc_metadata(ctx: Context) -> list[tuple[str, str | bytes]]:
    metadata: list[tuple[str, str | bytes]] = []
    vp.inject_grpc(metadata, ctx)
    return metadata
