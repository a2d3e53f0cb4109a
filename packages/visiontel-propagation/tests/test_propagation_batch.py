"""Fan-in (batch span and its links), fan-out, frame stages and the latency histogram."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.context import Context

import visiontel.propagation as vp


def frames_in(tracing, n, stream="cam-1"):
    """Contexts of n frames as a detector receives them (each its own trace)."""
    out = []
    for i in range(n):
        with vp.start_frame("decode", vp.FrameIdentity.now(stream, i), tracer=tracing.tracer):
            meta: dict[str, str] = {}
            vp.inject_dict(meta)
        out.append(vp.extract_dict(meta))
    return out


def span_id_of(ctx: Context) -> tuple[int, int]:
    sc = trace.get_current_span(ctx).get_span_context()
    return sc.trace_id, sc.span_id


def test_each_frame_is_its_own_trace(tracing):
    frames = frames_in(tracing, 3)
    assert len({span_id_of(c)[0] for c in frames}) == 3
    decode = tracing.named("decode")
    assert all(s.parent is None for s in decode)
    assert decode[0].attributes["visiontel.frame.sequence"] == 0
    assert decode[0].attributes["visiontel.frame.stream_id"] == "cam-1"


def test_start_frame_span_begins_at_capture(tracing):
    frame = vp.FrameIdentity("cam", 1, 1_700_000_000_000_000_000)
    with vp.start_frame("decode", frame, tracer=tracing.tracer):
        assert vp.get_frame() == frame
    assert vp.get_frame() is None
    assert tracing.named("decode")[0].start_time == frame.capture_ns


def test_small_batch_links_every_frame(tracing):
    frames = frames_in(tracing, 8)
    with vp.batch_span(frames, "detect", tracer=tracing.tracer) as batch:
        assert trace.get_current_span() is batch.span
    (span,) = tracing.named("detect")
    assert span.attributes["messaging.batch.message_count"] == 8
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
        span_id_of(c) for c in frames
    ]
    assert batch.linked == 8 and batch.chunks == 0
    # each frame's trace shows the batch it joined
    members = tracing.named("detect member")
    assert len(members) == 8
    for member, ctx in zip(members, frames):
        assert (member.context.trace_id, member.parent.span_id) == span_id_of(ctx)
        assert member.links[0].context.span_id == span.context.span_id
        assert member.attributes["visiontel.frame.age"] >= 0
    # contexts handed back continue each frame's trace under its member span
    for out, member in zip(batch.contexts, members):
        assert span_id_of(out) == (member.context.trace_id, member.context.span_id)
        assert vp.get_frame(out) is not None


@pytest.mark.parametrize("n", [129, 1024])
def test_batches_past_the_link_limit_lose_no_frame(tracing, caplog, n):
    frames = frames_in(tracing, n)
    tracing.exporter.clear()
    with caplog.at_level(logging.DEBUG, logger="visiontel.propagation"):
        with vp.batch_span(frames, "detect", tracer=tracing.tracer, member_spans=False) as batch:
            pass
    (span,) = tracing.named("detect")
    chunks = tracing.named("detect links")
    assert len(span.links) == 128  # what the SDK keeps by default
    assert span.dropped_links == 0 and all(c.dropped_links == 0 for c in chunks)
    assert span.attributes["visiontel.batch.linked_frames"] == 128
    assert span.attributes["visiontel.batch.link_chunks"] == len(chunks) == (n - 1) // 128
    assert all(c.parent.span_id == span.context.span_id for c in chunks)
    linked = [
        (link.context.trace_id, link.context.span_id) for s in [span, *chunks] for link in s.links
    ]
    assert sorted(linked) == sorted(span_id_of(c) for c in frames)  # every frame, once
    # frames past the limit also link back from their own trace, even without member_spans
    members = tracing.named("detect member")
    assert len(members) == n - 128
    assert {m.attributes["visiontel.batch.index"] for m in members} == set(range(128, n))
    assert batch.chunks == len(chunks)
    assert any("link-chunk" in r.getMessage() for r in caplog.records)


def test_link_limit_follows_the_sdk_setting(tracing):
    frames = frames_in(tracing, 10)
    with vp.batch_span(frames, "detect", tracer=tracing.tracer, max_links=4):
        pass
    assert len(tracing.named("detect")[0].links) == 4
    assert [len(c.links) for c in tracing.named("detect links")] == [4, 2]
    with pytest.raises(ValueError, match="max_links"):
        with vp.batch_span(frames, tracer=tracing.tracer, max_links=0):
            pass


def test_frames_without_context_are_counted(tracing):
    frames = [*frames_in(tracing, 2), Context(), vp.extract_dict({"traceparent": "junk"})]
    with vp.batch_span(frames, "detect", tracer=tracing.tracer) as batch:
        pass
    span = tracing.named("detect")[0]
    assert span.attributes["messaging.batch.message_count"] == 4
    assert span.attributes["visiontel.batch.frames_without_context"] == 2 == batch.without_context
    assert len(span.links) == 2
    assert batch.contexts[2] is frames[2]


def test_unsampled_frames_cost_no_member_span(unsampled_tracing):
    t = unsampled_tracing
    frames = frames_in(t, 5)
    assert t.spans() == []  # roots were not sampled
    assert not any(trace.get_current_span(c).get_span_context().trace_flags.sampled for c in frames)
    with vp.batch_span(frames, "detect", tracer=t.tracer) as batch:
        pass
    assert t.named("detect member") == []
    assert batch.contexts == frames  # handed back untouched
    # downstream of an unsampled frame nothing is recorded either
    with vp.continue_frame("track", batch.contexts[0], tracer=t.tracer) as span:
        assert not span.is_recording()
    assert t.spans() == []


def test_batch_span_records_the_exception(tracing):
    frames = frames_in(tracing, 2)
    with pytest.raises(RuntimeError):
        with vp.batch_span(frames, "detect", tracer=tracing.tracer):
            raise RuntimeError("CUDA out of memory")
    span = tracing.named("detect")[0]
    assert span.events[0].name == "exception"
    assert len(tracing.named("detect member")) == 2  # member spans still ended


def test_fan_out_keeps_one_trace(tracing):
    (ctx,) = frames_in(tracing, 1)
    carriers = []
    for _consumer in range(3):
        meta: dict[str, str] = {}
        vp.inject_dict(meta, ctx)
        carriers.append(meta)
    for i, meta in enumerate(carriers):
        with vp.continue_frame(f"consumer {i}", vp.extract_dict(meta), tracer=tracing.tracer):
            pass
    decode = tracing.named("decode")[0]
    consumers = [s for s in tracing.spans() if s.name.startswith("consumer")]
    assert len(consumers) == 3
    assert {s.context.trace_id for s in consumers} == {decode.context.trace_id}
    assert {s.parent.span_id for s in consumers} == {decode.context.span_id}
    assert all(s.attributes["visiontel.frame.sequence"] == 0 for s in consumers)


def test_latency_histogram_at_the_sink(tracing, metric_reader):
    provider, reader = metric_reader
    latency = vp.FrameLatency(provider)
    frame = vp.FrameIdentity("cam-9", 5, 1_000_000_000)
    ctx = vp.set_frame(frame, Context())
    assert latency.record(ctx, now_ns=1_250_000_000) == pytest.approx(0.25)
    assert latency.record(frame, now_ns=1_500_000_000, attributes={"stage": "sink"}) == 0.5
    assert latency.record(Context()) is None  # no identity: nothing recorded
    data = reader.get_metrics_data()
    metrics = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    (metric,) = [m for m in metrics if m.name == "visiontel.frame.latency"]  # + stream health
    assert metric.unit == "s"
    points = {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}
    assert points[(("visiontel.frame.stream_id", "cam-9"),)].sum == pytest.approx(0.25)
    assert points[(("stage", "sink"), ("visiontel.frame.stream_id", "cam-9"))].count == 1
    assert 0.033 in points[(("visiontel.frame.stream_id", "cam-9"),)].explicit_bounds


class _BrokenTracer(trace.Tracer):
    def start_span(self, *args, **kwargs):
        raise RuntimeError("broken SDK")

    def start_as_current_span(self, *args, **kwargs):
        raise RuntimeError("broken SDK")


def test_a_broken_tracer_does_not_stop_the_batch(tracing, caplog):

    frames = frames_in(tracing, 3)
    with caplog.at_level(logging.ERROR, logger="visiontel.propagation"):
        with vp.batch_span(frames, tracer=_BrokenTracer()) as batch:
            ran = True
    assert ran and batch.contexts == frames
    assert not batch.span.get_span_context().is_valid
    assert any("internal error in batch_span" in r.getMessage() for r in caplog.records)


def test_a_broken_tracer_does_not_stop_a_stage(tracing):
    (ctx,) = frames_in(tracing, 1)
    with vp.start_frame("decode", vp.FrameIdentity("c", 1, 2), tracer=_BrokenTracer()) as span:
        assert vp.get_frame() == vp.FrameIdentity("c", 1, 2)
    assert not span.get_span_context().is_valid
    with vp.continue_frame("track", ctx, tracer=_BrokenTracer()) as span:
        assert vp.get_frame() is not None
    assert not span.get_span_context().is_valid


def test_link_limit_set_in_code_on_the_sdk_is_respected(tracing):
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_links=5))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    frames = frames_in(tracing, 12)
    with vp.batch_span(frames, "detect", tracer=provider.get_tracer("t"), member_spans=False):
        pass
    spans = exporter.get_finished_spans()
    batch = next(s for s in spans if s.name == "detect")
    chunks = [s for s in spans if s.name == "detect links"]
    assert len(batch.links) == 5 and [len(c.links) for c in chunks] == [5, 2]
    assert batch.dropped_links == 0 and all(c.dropped_links == 0 for c in chunks)
