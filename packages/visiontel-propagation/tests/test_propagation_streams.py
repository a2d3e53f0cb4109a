"""Stream health: frames received and lost by sequence gap, per stream, at one hop.

Counted with the real SDK's in-memory metric reader; the stage API's hooks are checked
on the module's shared instance, bound to a reader for each test.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import visiontel.propagation as vp
from visiontel._support import env
from visiontel.propagation import _stage, _streams

STREAM = "visiontel.stream.id"


def totals(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    """(metric, stream id) -> cumulative value, for the two stream health counters."""
    data = reader.get_metrics_data()
    out: dict[tuple[str, str], int] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name in (_streams.LOST_METRIC, _streams.RECEIVED_METRIC):
                    for point in metric.data.data_points:
                        out[(metric.name, str(point.attributes[STREAM]))] = int(point.value)
    return out


def lost(reader: InMemoryMetricReader, stream: str = "cam") -> int:
    return totals(reader).get(("visiontel.frames.lost", stream), 0)


def received(reader: InMemoryMetricReader, stream: str = "cam") -> int:
    return totals(reader).get(("visiontel.frames.received", stream), 0)


def health(window: int = 8, max_streams: int = 16) -> tuple[vp.StreamHealth, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    return vp.StreamHealth(provider, window=window, max_streams=max_streams), reader


def feed(h: vp.StreamHealth, sequences: list[int], stream: str = "cam") -> None:
    for sequence in sequences:
        h.observe(vp.FrameIdentity(stream, sequence, 1))


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    """The shared hop instance (what the stage API feeds) on a reader of its own."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(_streams, "_default", vp.StreamHealth(provider, window=16))
    yield reader
    provider.shutdown()


def test_in_order_stream_loses_nothing() -> None:
    h, reader = health()
    feed(h, list(range(100)))
    assert h.end_streams() == 0
    assert received(reader) == 100
    assert lost(reader) == 0


def test_gaps_count_once_they_leave_the_window_or_the_stream_ends() -> None:
    h, reader = health(window=8)
    feed(h, [0, 1, 2, 4, 5])  # 3 missing, still inside the window
    assert lost(reader) == 0
    feed(h, list(range(6, 12)))  # 3 leaves the window (11 - 8 = 3)
    assert lost(reader) == 1
    feed(h, [13])  # 12 missing, inside the window
    assert lost(reader) == 1
    assert h.end_streams("cam") == 1
    assert lost(reader) == 2
    assert received(reader) == 12
    assert h.end_streams("cam") == 0  # ended already
    feed(h, [100, 101])  # an ended stream starts afresh: no loss for 14..99
    h.end_streams()
    assert (received(reader), lost(reader)) == (14, 2)
    assert h.totals() == {"cam": (14, 2)}


def test_totals_are_read_at_collection() -> None:
    """The totals are observed at collection: nothing is recorded per frame."""
    h, reader = health(window=8)
    feed(h, [0, 1, 3])
    assert h.totals() == {"cam": (3, 0)}
    assert received(reader) == 3  # read at collection
    feed(h, list(range(4, 20)))
    assert h.totals() == {"cam": (19, 1)}
    assert (received(reader), lost(reader)) == (19, 1)


def test_a_jump_past_the_window_counts_every_missing_frame() -> None:
    h, reader = health(window=8)
    feed(h, [0, 1, 1000, 1001])
    assert lost(reader) == 998 - 6  # all but 994..999, still inside the window (994..1001)
    h.end_streams()
    assert lost(reader) == 998


def test_a_late_frame_inside_the_window_is_received_once_and_not_lost() -> None:
    h, reader = health(window=8)
    feed(h, [0, 1, 3, 4, 5, 2, 2, 6, 7, 8, 9, 10, 11, 12])  # 2 late, then again
    h.end_streams()
    assert lost(reader) == 0
    assert received(reader) == 13


def test_a_frame_later_than_the_window_was_lost_and_is_no_restart() -> None:
    h, reader = health(window=8)
    feed(h, [s for s in range(20) if s != 5])
    assert lost(reader) == 1
    feed(h, [5, 20, 21])  # 5 far behind: set aside; 20 goes on from 19
    h.end_streams()
    assert lost(reader) == 1
    assert received(reader) == 21


def test_a_source_restart_resets_the_stream_and_is_no_loss() -> None:
    h, reader = health(window=8)
    feed(h, list(range(1000)))
    feed(h, [0, 997, 1])  # the new run, with a late frame of the old one in between
    feed(h, list(range(2, 100)))
    feed(h, [998])  # a straggler of the old run after the restart: ignored
    feed(h, list(range(100, 110)))
    h.end_streams()
    assert lost(reader) == 0
    assert received(reader) == 1000 + 110


def test_frames_missing_when_the_source_restarts_count_as_lost() -> None:
    h, reader = health(window=8)
    feed(h, [s for s in range(100) if s not in (97, 98)] + [0, 1, 2])
    h.end_streams()
    assert lost(reader) == 2
    assert received(reader) == 98 + 3


def test_a_hop_that_starts_mid_stream_counts_from_its_first_frame() -> None:
    h, reader = health(window=8)
    feed(h, [500, 498, 501, 503])  # 498 arrives late: the stream starts there now
    h.end_streams()
    assert received(reader) == 4
    assert lost(reader) == 2  # 499 and 502


def test_streams_are_counted_apart_and_bounded() -> None:
    h, reader = health(window=8, max_streams=2)
    feed(h, [0, 2, 4], "a")
    feed(h, [0, 1], "b")
    h.end_streams("a")
    assert (received(reader, "a"), lost(reader, "a")) == (3, 2)
    feed(h, [0], "c")  # a is the least recently seen: forgotten to make room
    assert h.streams() == ["b", "c"]
    assert ("visiontel.frames.received", "a") not in totals(reader)  # its series stops
    feed(h, [10, 12], "a")  # a comes back: counted from 0 (a counter reset for rate())
    h.end_streams()
    assert (received(reader, "a"), lost(reader, "a")) == (2, 1)
    assert received(reader, "c") == 1 and "b" not in h.streams()


def test_the_stream_attribute_has_no_credentials() -> None:
    h, reader = health()
    feed(h, [0, 2], "rtsp://user:secret@cam/1")
    h.observe(vp.set_frame(vp.FrameIdentity("rtsp://user:secret@cam/1", 3, 1)))
    h.end_streams()
    assert received(reader, "rtsp://cam/1") == 3
    assert lost(reader, "rtsp://cam/1") == 1
    assert "secret" not in repr(totals(reader))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=32),
    st.lists(st.booleans(), min_size=1, max_size=300),
    st.data(),
)
def test_any_order_within_the_window_counts_exactly_the_true_gaps(
    window: int, kept: list[bool], data: st.DataObject
) -> None:
    """Frames sent (a subset of 0..n), each delayed by less than the window (in frames),
    some duplicated: once the stream ends, lost == the sequence numbers never sent between
    the first and the last frame, received == the frames sent, whatever the order."""
    sent = [sequence for sequence, keep in enumerate(kept) if keep] or [0]
    delays = data.draw(st.lists(st.integers(0, window - 1), min_size=len(sent), max_size=len(sent)))
    duplicated = data.draw(st.sets(st.sampled_from(sent), max_size=5))
    # A frame sorted by sequence + delay arrives at most window - 1 behind the highest.
    order: list[int] = []
    for _, sequence in sorted(zip((s + d for s, d in zip(sent, delays)), sent)):
        order += [sequence, sequence] if sequence in duplicated else [sequence]
    h, reader = health(window=window)
    arrivals: list[int] = []
    for sequence in order:
        arrivals.append(sequence)
        h.observe(vp.FrameIdentity("cam", sequence, 1))
        # Never more lost than the gaps already certain: no late frame counted.
        highest = max(arrivals)
        assert lost(reader) <= sum(1 for s in range(min(arrivals), highest) if s not in sent)
    h.end_streams()
    true_gaps = sum(1 for s in range(min(sent), max(sent) + 1) if s not in sent)
    assert lost(reader) == true_gaps
    assert received(reader) == len(sent)


def test_stages_of_one_hop_count_a_frame_once(shared: InMemoryMetricReader, tracing) -> None:
    latency = vp.FrameLatency()
    for sequence in (0, 1, 3):
        with vp.start_frame(
            "capture", vp.FrameIdentity.now("cam", sequence), tracer=tracing.tracer
        ):
            carrier: dict[str, str] = {}
            vp.inject_dict(carrier)
        ctx = vp.extract_dict(carrier)
        with vp.continue_frame("preprocess", ctx, tracer=tracing.tracer):
            pass
        with vp.continue_frame("infer", ctx, tracer=tracing.tracer):
            vp.observe_frame()  # the current context carries the frame too
        latency.record(ctx)
        vp.record_frame_latency(ctx)
    assert received(shared) == 3
    assert vp.end_streams() == 1
    assert lost(shared) == 1


def test_a_sink_that_only_records_latency_counts_its_frames(shared: InMemoryMetricReader) -> None:
    for sequence in (0, 2, 3):
        vp.record_frame_latency(vp.set_frame(vp.FrameIdentity.now("cam", sequence)))
    vp.end_streams()
    assert received(shared) == 3
    assert lost(shared) == 1


def test_batch_members_count_sampled_or_not(
    shared: InMemoryMetricReader, unsampled_tracing
) -> None:
    tracer = unsampled_tracing.tracer
    contexts = []
    for sequence in (0, 1, 2, 5):
        with vp.start_frame(
            "capture", vp.FrameIdentity.now("cam", sequence), tracer=tracer
        ) as span:
            assert not span.is_recording()
            carrier: dict[str, str] = {}
            vp.inject_dict(carrier)
        contexts.append(vp.extract_dict(carrier))
    with vp.batch_span(contexts, tracer=tracer) as batch:
        assert not batch.span.is_recording()
    vp.end_streams()
    assert received(shared) == 4
    assert lost(shared) == 2


@pytest.fixture
def sample_every(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VISIONTEL_FRAME_SAMPLE_EVERY", "3")
    _stage._reset_sampling()
    yield
    monkeypatch.delenv("VISIONTEL_FRAME_SAMPLE_EVERY")
    _stage._reset_sampling()


def test_one_in_n_frames_is_traced_and_every_frame_counted(
    sample_every: None, tracing, shared: InMemoryMetricReader
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    exporter = InMemorySpanExporter()
    downstream_provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    downstream_provider.add_span_processor(SimpleSpanProcessor(exporter))
    downstream_tracer = downstream_provider.get_tracer("detector")
    latency_reader = InMemoryMetricReader()
    latency = vp.FrameLatency(MeterProvider(metric_readers=[latency_reader]))
    traces = set()
    for sequence in range(9):
        frame = vp.FrameIdentity.now("cam", sequence)
        with vp.start_frame("capture", frame, tracer=tracing.tracer) as span:
            assert span.get_span_context().is_valid  # a trace id to pass on either way
            assert span.is_recording() == (sequence % 3 == 0)
            traces.add(span.get_span_context().trace_id)
            carrier: dict[str, str] = {}
            vp.inject_dict(carrier)
        sampled_flag = int(carrier["traceparent"].rsplit("-", 1)[1], 16) & 1
        assert sampled_flag == (sequence % 3 == 0)
        ctx = vp.extract_dict(carrier)
        with vp.continue_frame("detect", ctx, tracer=downstream_tracer) as stage:
            assert stage.is_recording() == (sequence % 3 == 0)
        latency.record(ctx)
    assert len(traces) == 9  # each frame its own trace, recorded or not
    assert [s.attributes["visiontel.frame.sequence"] for s in tracing.named("capture")] == [0, 3, 6]
    assert len(exporter.get_finished_spans()) == 3
    assert received(shared) == 9
    points = [
        p
        for rm in latency_reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "visiontel.frame.latency"
        for p in m.data.data_points
    ]
    assert sum(p.count for p in points) == 9
    downstream_provider.shutdown()


def test_frames_kept_by_one_in_n_still_go_through_the_sdk_sampler(
    sample_every: None, unsampled_tracing
) -> None:
    for sequence in range(6):
        with vp.start_frame(
            "capture", vp.FrameIdentity.now("cam", sequence), tracer=unsampled_tracing.tracer
        ) as span:
            assert not span.is_recording()
    assert unsampled_tracing.spans() == []


def test_one_in_n_keeps_a_given_parents_trace(sample_every: None, tracing) -> None:
    with tracing.tracer.start_as_current_span("stream") as parent:
        parent_ctx = trace.set_span_in_context(parent)
        with vp.start_frame(
            "capture", vp.FrameIdentity.now("cam", 1), tracer=tracing.tracer, parent=parent_ctx
        ) as span:
            assert not span.is_recording()
            assert span.get_span_context().trace_id == parent.get_span_context().trace_id


def test_a_malformed_sample_every_is_logged_and_every_frame_traced(
    monkeypatch: pytest.MonkeyPatch, tracing, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VISIONTEL_FRAME_SAMPLE_EVERY", "0")
    env.reset()
    _stage._reset_sampling()
    try:
        with caplog.at_level(logging.WARNING, logger="visiontel"):
            for sequence in range(3):
                with vp.start_frame(
                    "capture", vp.FrameIdentity.now("cam", sequence), tracer=tracing.tracer
                ):
                    pass
        assert len(tracing.named("capture")) == 3
        assert "VISIONTEL_FRAME_SAMPLE_EVERY" in caplog.text
    finally:
        monkeypatch.delenv("VISIONTEL_FRAME_SAMPLE_EVERY")
        _stage._reset_sampling()


def test_window_and_stream_bounds_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VISIONTEL_FRAME_REORDER_WINDOW", "16")
    monkeypatch.setenv("VISIONTEL_FRAME_MAX_STREAMS", "many")
    env.reset()
    with caplog.at_level(logging.WARNING, logger="visiontel"):
        h = vp.StreamHealth(MeterProvider())
    assert h.window == 16
    assert h.max_streams == 1024
    assert "VISIONTEL_FRAME_MAX_STREAMS" in caplog.text
    with pytest.raises(ValueError, match="window"):
        vp.StreamHealth(MeterProvider(), window=0)


def test_nothing_is_counted_without_a_frame_identity() -> None:
    h, reader = health()
    h.observe(None)  # the current context carries no frame
    h.observe(trace.set_span_in_context(trace.INVALID_SPAN))
    assert totals(reader) == {}


def test_memory_per_stream_stays_within_the_window() -> None:
    h, _ = health(window=8)
    feed(h, [s for s in range(5000) if s % 3])
    (state,) = h._streams.values()
    assert state.seen.bit_length() <= 8  # one bit per frame of the window, no more


def test_hops_sharing_a_meter_provider_are_all_reported() -> None:
    """The SDK ignores a second observable instrument of the same name on a meter: the
    instances of one provider share one callback, summed per stream."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first, second = vp.StreamHealth(provider), vp.StreamHealth(provider)
    feed(first, [0, 1, 2], "a")
    feed(second, [0, 2], "b")
    feed(second, [5], "a")
    second.end_streams()
    assert (received(reader, "a"), received(reader, "b"), lost(reader, "b")) == (4, 2, 1)
    del second
    gc.collect()
    assert received(reader, "a") == 3 and ("visiontel.frames.received", "b") not in totals(reader)
