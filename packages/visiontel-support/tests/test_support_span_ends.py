"""Live spans ended inside ``ends_gathered`` reach the batch processors at its exit."""

from __future__ import annotations

import threading

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from visiontel._support import spanends
from visiontel._support.livespans import LiveSpans, _LiveSpan
from visiontel._support.spanends import ends_gathered, hand_over_many

_SCOPE = ("visiontel.test", "1.0", None)


class _Pipeline:
    def __init__(self, *, batched: bool = True) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        if batched:  # never exports on its own: force_flush shows what is queued
            processor = BatchSpanProcessor(self.exporter, schedule_delay_millis=3_600_000)
        else:
            processor = SimpleSpanProcessor(self.exporter)
        self.provider.add_span_processor(processor)
        tracer = self.provider.get_tracer(*_SCOPE)
        self.spans = LiveSpans(self.provider, tracer, _SCOPE)
        path = self.spans.current_path()
        assert path is not None
        self.gathers = path.on_end_many is not None
        """The SDK's batch processor is laid out as ``_batch_queue`` knows it (1.34 on); on
        older releases every span goes to ``on_end`` at once, inside the block too."""

    def end_spans(self, count: int, prefix: str = "s") -> list[str]:
        names = [f"{prefix}{index}" for index in range(count)]
        for name in names:
            span = self.spans.start(name, {"n": 1})
            assert type(span) is _LiveSpan
            span.end()
        return names

    def exported(self) -> list[str]:
        assert self.provider.force_flush(10_000)
        return [span.name for span in self.exporter.get_finished_spans()]


def test_spans_ended_in_the_block_arrive_at_its_exit_in_order() -> None:
    pipeline = _Pipeline()
    before = pipeline.end_spans(2, "before")
    with ends_gathered():
        inside = pipeline.end_spans(5)
        # waiting, not yet queued
        assert pipeline.exported() == before + ([] if pipeline.gathers else inside)
    assert pipeline.exported() == before + inside
    assert spanends.gathering.spans is None


def test_other_threads_and_unbatched_providers_hand_over_at_once() -> None:
    batched, simple = _Pipeline(), _Pipeline(batched=False)
    elsewhere: list[str] = []
    with ends_gathered():
        worker = threading.Thread(target=lambda: elsewhere.extend(batched.end_spans(3, "w")))
        worker.start()
        worker.join()
        assert batched.exported() == elsewhere  # another thread's spans: not gathered
        assert simple.exported() == []
        names = simple.end_spans(2)
        assert simple.exported() == names  # a provider without batches gets each at once


def test_nested_blocks_gather_into_the_outermost() -> None:
    pipeline = _Pipeline()
    with ends_gathered():
        outer = pipeline.end_spans(1, "outer")
        with ends_gathered():
            inner = pipeline.end_spans(2, "inner")
        assert pipeline.exported() == ([] if pipeline.gathers else outer + inner)
    assert pipeline.exported() == outer + inner


def test_a_long_run_hands_its_spans_over_in_bounded_batches() -> None:
    pipeline = _Pipeline()
    most = spanends._MOST_WAITING
    with ends_gathered():
        names = pipeline.end_spans(most + 3)
        assert pipeline.exported() == (names[:most] if pipeline.gathers else names)
        # several at once, as a forward's layer spans come
        path = pipeline.spans.current_path()
        assert path is not None
        built = [
            path.finished_span(f"many{i}", span.context, None, {}, 1, 2)
            for i, span in enumerate(pipeline.spans.start("x", {}) for _ in range(most))
        ]
        hand_over_many(path, built)
        assert len(pipeline.exported()) == 2 * most + 3  # the 3 waiting and these went in
    assert pipeline.exported()[-2:] == ["many510", "many511"]


def test_a_failing_provider_does_not_keep_the_others_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing, working = _Pipeline(), _Pipeline()
    failing_path = failing.spans.current_path()
    assert failing_path is not None

    def refuse(spans: list[ReadableSpan]) -> None:
        raise RuntimeError("queue refused")

    if not failing.gathers:
        pytest.skip("this SDK's batch processor takes no batches (before 1.34): nothing fails")
    monkeypatch.setattr(failing_path, "on_end_many", refuse)
    with pytest.raises(RuntimeError, match="queue refused"), ends_gathered():
        failing.end_spans(2)
        names = working.end_spans(2)
    assert working.exported() == names
    assert spanends.gathering.spans is None
