"""FrameBatcher: batches of (context, item), queue depth and wait time, with the real SDK."""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import visiontel.propagation as vp
from visiontel.propagation import _streams


@pytest.fixture
def meter() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    return [
        p
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points
    ]


def depth(reader: InMemoryMetricReader) -> int:
    (point,) = points(reader, "visiontel.batcher.queue.depth")
    assert dict(point.attributes) == {"visiontel.batcher.name": "detector"}
    return int(point.value)


def frame_context(sequence: int) -> otel_context.Context:
    return vp.set_frame(vp.FrameIdentity.now("cam", sequence))


def test_batches_come_out_in_order_with_their_contexts(meter) -> None:
    provider, reader = meter
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher("detector", meter_provider=provider)
    for sequence in range(5):
        batcher.put(frame_context(sequence), sequence * 10)
    assert len(batcher) == 5 and depth(reader) == 5
    first = batcher.next_batch(3, 0.0)
    assert [item for _, item in first] == [0, 10, 20]
    assert [vp.get_frame(ctx).sequence for ctx, _ in first] == [0, 1, 2]  # type: ignore[union-attr]
    assert depth(reader) == 2
    assert [item for _, item in batcher.next_batch(8, 0.0)] == [30, 40]
    assert depth(reader) == 0 and len(batcher) == 0
    (wait,) = points(reader, "visiontel.batcher.wait.duration")
    assert wait.count == 5 and wait.sum > 0
    assert 0.01 in wait.explicit_bounds


def test_wait_time_runs_from_put_to_the_batch_handed_out(meter) -> None:
    provider, reader = meter
    batcher: vp.FrameBatcher[str] = vp.FrameBatcher("detector", meter_provider=provider)
    batcher.put(None, "early")
    time.sleep(0.05)
    batcher.put(None, "late")
    batcher.next_batch(2, 0.0)
    (wait,) = points(reader, "visiontel.batcher.wait.duration")
    assert wait.count == 2
    assert 0.05 <= wait.sum < 0.05 + 2 * 1.0  # early waited 50 ms, late a moment
    assert wait.min < 0.05 <= wait.max


def test_a_batch_waits_at_most_max_wait_after_its_first_frame() -> None:
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher()

    def producer() -> None:
        batcher.put(None, 0)
        time.sleep(0.02)
        batcher.put(None, 1)  # arrives while the batch fills: joins it
        time.sleep(0.5)
        batcher.put(None, 2)  # long after max_wait_s: the next batch

    thread = threading.Thread(target=producer)
    thread.start()
    started = time.monotonic()
    batch = batcher.next_batch(8, 0.2)
    took = time.monotonic() - started
    assert [item for _, item in batch] == [0, 1]
    assert 0.2 <= took < 0.5
    assert [item for _, item in batcher.next_batch(8, 0.0)] == [2]
    thread.join()


def test_a_full_batch_returns_without_waiting() -> None:
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher()
    for item in range(4):
        batcher.put(None, item)
    started = time.monotonic()
    assert len(batcher.next_batch(4, 10.0)) == 4
    assert time.monotonic() - started < 1.0


def test_no_frame_within_timeout_gives_an_empty_batch() -> None:
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher()
    started = time.monotonic()
    assert batcher.next_batch(4, 1.0, timeout=0.05) == []
    assert time.monotonic() - started < 0.5


def test_capacity_holds_producers_back(meter) -> None:
    provider, reader = meter
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher("detector", capacity=2, meter_provider=provider)
    batcher.put(None, 0)
    batcher.put(None, 1)
    with pytest.raises(queue.Full, match="detector"):
        batcher.put(None, 2, timeout=0.05)
    done = threading.Event()

    def blocked_put() -> None:
        batcher.put(None, 2)
        done.set()

    thread = threading.Thread(target=blocked_put, daemon=True)
    thread.start()
    assert not done.wait(0.05)  # still full
    assert [item for _, item in batcher.next_batch(1, 0.0)] == [0]
    assert done.wait(5)
    thread.join()
    assert depth(reader) == 2


def test_close_drains_then_ends() -> None:
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher()
    batcher.put(None, 7)
    waiter: list[list[tuple[otel_context.Context, int]]] = []
    batcher.close()
    assert [item for _, item in batcher.next_batch(4, 1.0)] == [7]
    thread = threading.Thread(target=lambda: waiter.append(batcher.next_batch(4, 1.0)), daemon=True)
    thread.start()
    thread.join(5)
    assert waiter == [[]]
    with pytest.raises(RuntimeError, match="close"):
        batcher.put(None, 8)


def test_close_wakes_a_waiting_consumer() -> None:
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher()
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(batcher.next_batch(4, 0.0)), daemon=True)
    thread.start()
    time.sleep(0.05)
    batcher.close()
    thread.join(5)
    assert result == [[]]


def test_no_context_means_the_current_one() -> None:
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher()
    token = otel_context.attach(frame_context(42))
    try:
        batcher.put(None, 0)
    finally:
        otel_context.detach(token)
    ((ctx, _),) = batcher.next_batch(1, 0.0)
    frame = vp.get_frame(ctx)
    assert frame is not None and (frame.stream_id, frame.sequence) == ("cam", 42)


def test_bad_arguments_say_what_to_pass() -> None:
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher()
    with pytest.raises(ValueError, match="max_size"):
        batcher.next_batch(0, 0.0)
    with pytest.raises(ValueError, match="max_wait_s"):
        batcher.next_batch(1, -1.0)
    with pytest.raises(ValueError, match="capacity"):
        vp.FrameBatcher(capacity=-1)
    with pytest.raises(ValueError, match="name"):
        vp.FrameBatcher("")


def test_every_frame_from_many_producers_comes_out_once() -> None:
    batcher: vp.FrameBatcher[tuple[int, int]] = vp.FrameBatcher(capacity=8)
    producers = [
        threading.Thread(target=lambda p=p: [batcher.put(None, (p, i)) for i in range(200)])
        for p in range(4)
    ]
    for thread in producers:
        thread.start()
    seen: list[tuple[int, int]] = []
    while len(seen) < 800:
        batch = batcher.next_batch(16, 0.001, timeout=5)
        assert batch, "a frame went missing"
        assert len(batch) <= 16
        seen += [item for _, item in batch]
    for thread in producers:
        thread.join()
    assert sorted(seen) == [(p, i) for p in range(4) for i in range(200)]
    for p in range(4):  # each producer's frames stay in its order
        assert [i for q, i in seen if q == p] == list(range(200))


def test_batch_span_on_a_batch_links_and_counts_every_frame(
    tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = InMemoryMetricReader()
    monkeypatch.setattr(
        _streams, "_default", vp.StreamHealth(MeterProvider(metric_readers=[reader]))
    )
    batcher: vp.FrameBatcher[bytes] = vp.FrameBatcher()
    for sequence in (0, 1, 3):
        with vp.start_frame(
            "capture", vp.FrameIdentity.now("cam", sequence), tracer=tracing.tracer
        ):
            carrier: dict[str, str] = {}
            vp.inject_dict(carrier)
        batcher.put(vp.extract_dict(carrier), b"jpeg")
    batch = batcher.next_batch(8, 0.0)
    with vp.batch_span([ctx for ctx, _ in batch], "infer batch", tracer=tracing.tracer) as span:
        assert span.linked == 3
    assert len(tracing.named("infer batch member")) == 3
    vp.end_streams()
    assert [int(p.value) for p in points(reader, "visiontel.frames.received")] == [3]
    assert [int(p.value) for p in points(reader, "visiontel.frames.lost")] == [1]


def test_a_dropped_batcher_stops_reporting_its_depth(meter) -> None:
    provider, reader = meter
    batcher: vp.FrameBatcher[int] = vp.FrameBatcher("detector", meter_provider=provider)
    batcher.put(None, 1)
    assert depth(reader) == 1
    del batcher
    gc.collect()
    assert points(reader, "visiontel.batcher.queue.depth") == []


def test_batchers_sharing_a_meter_provider_each_report_their_depth(meter) -> None:
    provider, reader = meter
    detector: vp.FrameBatcher[int] = vp.FrameBatcher("detector", meter_provider=provider)
    encoder: vp.FrameBatcher[int] = vp.FrameBatcher("encoder", meter_provider=provider)
    detector.put(None, 1)
    for item in range(3):
        encoder.put(None, item)
    depths = {
        p.attributes["visiontel.batcher.name"]: p.value
        for p in points(reader, "visiontel.batcher.queue.depth")
    }
    assert depths == {"detector": 1, "encoder": 3}
