"""Histogram points folded into the SDK's storage a batch at a time.

Every case records the same values twice: folded on one meter provider, one by one through
``Histogram.record`` (in the same context: a dropped span's, or a sampled span's, whose
points carry exemplars) on a twin; what the readers collect must be the same, point for
point and exemplar for exemplar. Runs on every OpenTelemetry release of the nox matrix.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from opentelemetry import trace
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    MeterProvider,
)
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import visiontel.torch as vt
from visiontel.torch import _otel_private
from visiontel.torch._points import UNSAMPLED_CONTEXT, SampledPoints, SpanContexts
from visiontel.torch._runtime import runtime_for

from torch_support import TinyDetector, data_points

ATTRIBUTES = {"visiontel.model.name": "det", "visiontel.stage": "inference", "n": 3}
BATCHES = ([0.004, 0.0005, 0.02, 0.004], [0.3], [0.001, 0.001, 7.5, 0.0125, 0.0001])


@pytest.fixture(autouse=True)
def _gate_open() -> Iterator[None]:
    _otel_private._use_public_api(False)
    _otel_private._reset_version_check()
    yield
    _otel_private._use_public_api(False)


def _delta_reader() -> InMemoryMetricReader:
    return InMemoryMetricReader(preferred_temporality={SdkHistogram: AggregationTemporality.DELTA})


def _point_fields(point: Any) -> dict[str, Any]:
    fields = {
        k: v for k, v in vars(point).items() if k not in ("start_time_unix_nano", "time_unix_nano")
    }
    fields["attributes"] = dict(fields["attributes"])
    fields["exemplars"] = [  # all but the time each was offered at
        (e.value, dict(e.filtered_attributes or {}), e.span_id, e.trace_id)
        for e in getattr(point, "exemplars", None) or ()
    ]
    return fields


def _collected(reader: InMemoryMetricReader) -> list[dict[str, Any]]:
    points = [{"metric": name, **_point_fields(point)} for name, point in data_points(reader)]
    return sorted(points, key=repr)


Setup = Callable[[], tuple[MeterProvider, list[InMemoryMetricReader]]]


def _provider(readers: int = 1, delta: bool = False, **kwargs: Any) -> Setup:
    def make() -> tuple[MeterProvider, list[InMemoryMetricReader]]:
        made = [_delta_reader() if delta else InMemoryMetricReader() for _ in range(readers)]
        return MeterProvider(metric_readers=made, **kwargs), made

    return make


CASES: dict[str, Setup] = {
    "one reader": _provider(),
    "delta temporality": _provider(delta=True),
    "two readers": _provider(readers=2),
    "a view keeps one attribute": _provider(
        views=[View(instrument_name="h", attribute_keys={"visiontel.model.name"})]
    ),
    "a view with other buckets": _provider(
        views=[
            View(
                instrument_name="h",
                aggregation=ExplicitBucketHistogramAggregation((0.001, 0.1, 1.0)),
            )
        ]
    ),
    "two views, one exponential": _provider(
        views=[
            View(instrument_name="h", name="h.exact"),
            View(
                instrument_name="h",
                name="h.exponential",
                aggregation=ExponentialBucketHistogramAggregation(),
            ),
        ]
    ),
    "exemplars always off": _provider(exemplar_filter=AlwaysOffExemplarFilter()),
}


def _histogram(provider: MeterProvider) -> Histogram:
    return provider.get_meter("fold-test").create_histogram("h", "s")


SAMPLED_CONTEXT = trace.set_span_in_context(
    trace.NonRecordingSpan(
        trace.SpanContext(
            0x5B8EFFF798038103D269B633813FC60C,
            0xEEE19B7EC3C1B174,
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    )
)
CONTEXTS = {"unsampled": UNSAMPLED_CONTEXT, "sampled": SAMPLED_CONTEXT}


@pytest.mark.parametrize("context_name", sorted(CONTEXTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_batches_equal_recorded_values(case: str, context_name: str) -> None:
    context = CONTEXTS[context_name]
    folded_provider, folded_readers = CASES[case]()
    recorded_provider, recorded_readers = CASES[case]()
    folded, recorded = _histogram(folded_provider), _histogram(recorded_provider)
    memo: dict[str, Any] = {}
    for batch in BATCHES:
        assert _otel_private.fold_points(folded, batch, ATTRIBUTES, (context,), memo)
        for value in batch:
            recorded.record(value, ATTRIBUTES, context=context)
        # collected after every batch: the delta case swaps its aggregations out each time
        for mine, theirs in zip(folded_readers, recorded_readers, strict=True):
            points = _collected(mine)
            assert points == _collected(theirs)
            assert points, "something was recorded"
            with_exemplars = [p for p in points if p["exemplars"]]
            if context is SAMPLED_CONTEXT and "always off" not in case:
                assert with_exemplars, "a sampled span's values are offered as exemplars"
            else:
                assert not with_exemplars


def _span(trace_id: int, span_id: int, sampled: bool = True) -> trace.Span:
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT)
    span_context = trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)
    return trace.NonRecordingSpan(span_context)


class CountedContexts(SpanContexts):
    """``SpanContexts`` that counts the contexts it makes."""

    made = 0

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int):
            CountedContexts.made += 1
        return super().__getitem__(index)


@pytest.mark.parametrize("made", ["as a list", "from spans when read"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_with_their_own_contexts_equal_recorded_values(case: str, made: str) -> None:
    """Sampled forwards finished in one run of later work: one fold, each value with its
    own span's context (sampled ones, a valid unsampled one and the invalid span among
    them, some in one bucket), the contexts given as a list or made from the spans only
    when read (``SpanContexts``, as a run of later work gives them)."""
    spans = [_span(0xA1 + n, 0xB1 + n) for n in range(4)]
    spans += [_span(0xA9, 0xB9, sampled=False), trace.INVALID_SPAN]
    folded_provider, folded_readers = CASES[case]()
    recorded_provider, recorded_readers = CASES[case]()
    folded, recorded = _histogram(folded_provider), _histogram(recorded_provider)
    memo: dict[str, Any] = {}
    for batch in BATCHES:
        chosen = [spans[(index * 5 + len(batch)) % len(spans)] for index in range(len(batch))]
        contexts: Any = CountedContexts(chosen)
        if made == "as a list":
            contexts = [trace.set_span_in_context(span) for span in chosen]
        assert _otel_private.fold_points(folded, batch, ATTRIBUTES, contexts, memo)
        for value, context in zip(batch, contexts, strict=True):
            recorded.record(value, ATTRIBUTES, context=context)
        for mine, theirs in zip(folded_readers, recorded_readers, strict=True):
            points = _collected(mine)
            assert points == _collected(theirs)
            span_ids = {e[2] for p in points for e in p["exemplars"]}
            if "always off" in case:
                assert not span_ids
            else:
                assert span_ids and span_ids <= {0xB1, 0xB2, 0xB3, 0xB4}
            if "other buckets" in case and len(batch) > 1:  # values in several buckets
                assert len(span_ids) > 1, "each value's exemplar names its own span"
    with pytest.raises(ValueError, match="2 contexts for 3 values"):
        _otel_private.fold_points(folded, [0.1, 0.2, 0.3], ATTRIBUTES, contexts[:2], memo)


@pytest.mark.parametrize("case", ["one reader", "exemplars always off"])
def test_contexts_from_spans_are_made_only_for_offered_values(case: str) -> None:
    """A run's sampled points keep their spans: the trace-based filter answers from the
    span itself, and a context is made only for a value offered to the reservoir (the last
    in each bucket), none where exemplars are off."""
    folded_provider, folded_readers = CASES[case]()
    recorded_provider, recorded_readers = CASES[case]()
    folded, recorded = _histogram(folded_provider), _histogram(recorded_provider)
    memo: dict[str, Any] = {}
    first = [1.0]  # the aggregation's first value goes through the SDK, in its context
    many = [1.0 + n / 100 for n in range(40)] + [20.0, 21.0]  # (0, 5] and (10, 25]
    for batch in (first, many):
        # the last value of each bucket is an unsampled span's: the one before is kept
        spans = [_span(0xC1 + n, 0xD1 + n, sampled=n not in {39, 41}) for n in range(len(batch))]
        CountedContexts.made = 0
        contexts = CountedContexts(spans)
        assert _otel_private.fold_points(folded, batch, ATTRIBUTES, contexts, memo)
        for value, span in zip(batch, spans, strict=True):
            recorded.record(value, ATTRIBUTES, context=trace.set_span_in_context(span))
        points = _collected(folded_readers[0])
        assert points == _collected(recorded_readers[0])
    offered = 0 if "off" in case else 2  # the last sampled value of each bucket
    assert CountedContexts.made == offered
    exemplars = sorted((e[0], e[2]) for p in points for e in p["exemplars"])
    assert exemplars == ([(many[38], 0xD1 + 38), (20.0, 0xD1 + 40)] if offered else [])


def test_sampled_points_the_fold_declines_are_recorded_with_their_own_contexts() -> None:
    """Where the fold declines (here: an exemplar filter that may take any value), the
    waiting points go through ``record`` one by one, each in its own span's context."""
    own = [_span(0xA1 + n, 0xB1 + n) for n in range(4)]
    values = [1.0, 7.0, 20.0, 60.0]  # each in a default bucket of its own: four exemplars
    always_on = _provider(exemplar_filter=AlwaysOnExemplarFilter())
    waited_provider, (waited_reader,) = always_on()
    recorded_provider, (recorded_reader,) = always_on()
    waited, recorded = _histogram(waited_provider), _histogram(recorded_provider)
    sampled, memo = SampledPoints(), {}  # one histogram, attributes and memo: one batch
    for value, span in zip(values, own, strict=True):
        sampled.add(waited, (value,), ATTRIBUTES, span, memo)
        recorded.record(value, ATTRIBUTES, context=trace.set_span_in_context(span))
    sampled.record()
    points = _collected(waited_reader)
    assert points == _collected(recorded_reader)
    exemplars = sorted(e[:3:2] for p in points for e in p["exemplars"])
    assert exemplars == list(zip(values, (0xB1, 0xB2, 0xB3, 0xB4), strict=True))


def test_points_land_where_the_sdk_puts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only the same as the SDK: the values are there (count, sum, min, max, buckets),
    and only the value that creates the aggregation goes through the SDK's entry point."""
    from opentelemetry.sdk.metrics._internal._view_instrument_match import _ViewInstrumentMatch

    through_the_sdk = []
    consume = _ViewInstrumentMatch.consume_measurement
    monkeypatch.setattr(
        _ViewInstrumentMatch,
        "consume_measurement",
        lambda self, m, *a: (through_the_sdk.append(m.value), consume(self, m, *a))[1],
    )
    provider, (reader,) = _provider()()
    histogram = _histogram(provider)
    memo: dict[str, Any] = {}
    for batch in BATCHES:
        _otel_private.fold_points(histogram, batch, ATTRIBUTES, (UNSAMPLED_CONTEXT,), memo)
    assert through_the_sdk == [BATCHES[0][0]]
    values = [value for batch in BATCHES for value in batch]
    (point,) = [p for p in _collected(reader) if p["metric"] == "h"]
    assert point["count"] == len(values) and point["attributes"] == ATTRIBUTES
    assert math.isclose(point["sum"], sum(values))
    assert (point["min"], point["max"]) == (min(values), max(values))
    assert sum(point["bucket_counts"]) == len(values)


@pytest.mark.parametrize(
    "why",
    ["exemplars always on", "a negative value", "not a plain attribute", "gate shut", "no SDK"],
)
def test_the_sdk_records_when_folding_could_differ(why: str) -> None:
    """Each of these leaves the storage untouched and answers False: the caller records."""
    kwargs: dict[str, Any] = {}
    if why == "exemplars always on":  # every value may become an exemplar: the SDK decides
        kwargs["exemplar_filter"] = AlwaysOnExemplarFilter()
    provider, (reader,) = _provider(**kwargs)()
    histogram: Any = _histogram(provider)
    values, attributes = [0.01, 0.02], dict(ATTRIBUTES)
    if why == "a negative value":
        values.append(-1.0)
    if why == "not a plain attribute":
        attributes["shapes"] = ("1x3", "1x3")
    if why == "gate shut":
        _otel_private._use_public_api(True)
    if why == "no SDK":
        histogram = trace  # not an SDK histogram at all
    memo: dict[str, Any] = {}
    assert not _otel_private.fold_points(histogram, values, attributes, (UNSAMPLED_CONTEXT,), memo)
    assert _collected(reader) == []


def _unsampled_model(
    reader: InMemoryMetricReader, boxes_per_image: int = 1
) -> tuple[Any, TracerProvider]:
    """A model instrumented with nothing sampled and spans in a batch processor."""
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[reader])
    model = vt.instrument_model(
        TinyDetector(boxes_per_image=boxes_per_image),
        name="det",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    return model, tracer_provider


def _run_unsampled(
    forwards: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[dict[str, Any]], int]:
    """``forwards`` unsampled forwards, spans batched: (points collected, SDK records)."""
    records = 0
    sdk_record = SdkHistogram.record

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal records
        records += 1
        sdk_record(self, *args, **kwargs)

    monkeypatch.setattr(SdkHistogram, "record", counted)
    reader = InMemoryMetricReader()
    model, tracer_provider = _unsampled_model(reader, boxes_per_image=3)
    try:
        for _ in range(forwards):
            model(torch.randn(2, 3, 8, 8))
        assert vt.flush(10.0)
        points = [p for p in _collected(reader) if p["metric"] != "visiontel.inference.images"]
    finally:
        vt.uninstrument_model(model)
        tracer_provider.shutdown()
    for point in points:  # durations differ run to run; their count does not
        if point["metric"] == "visiontel.inference.duration":
            point.update(sum=None, min=None, max=None, bucket_counts=None)
    return points, records


def test_an_unsampled_model_records_its_points_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folded, folded_records = _run_unsampled(7, monkeypatch)
    _otel_private._use_public_api(True)
    recorded, public_records = _run_unsampled(7, monkeypatch)
    assert folded == recorded
    by_metric = {p["metric"]: p for p in folded}
    assert by_metric["visiontel.inference.duration"]["count"] == 7
    assert by_metric["visiontel.inference.detections"]["count"] == 14  # one per image
    assert by_metric["visiontel.inference.detections"]["sum"] == 42
    assert public_records == 7 + 14
    assert folded_records == 0, "the folded path adds to the storage without record()"


def _duration_count(reader: InMemoryMetricReader) -> int:
    return sum(
        point.count for name, point in data_points(reader) if name == "visiontel.inference.duration"
    )


def _image_total(reader: InMemoryMetricReader) -> int:
    return sum(
        point.value for name, point in data_points(reader) if name == "visiontel.inference.images"
    )


def test_waiting_points_stay_bounded_without_collections() -> None:
    """Nobody flushes or collects: the resolver thread records the waiting points (once 256
    wait, or when it next wakes), so memory stays bounded where no reader ever collects."""
    from visiontel.torch import _model

    reader = InMemoryMetricReader()
    model, tracer_provider = _unsampled_model(reader)
    try:
        hooks = _model.instrumentation_of(model)
        assert hooks is not None
        waiting = hooks._unsampled._durations
        with torch.inference_mode():
            for _ in range(300):
                model(torch.randn(1, 3, 8, 8))
        deadline = time.monotonic() + 10
        while len(waiting) >= 256 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(waiting) < 256
        assert _duration_count(reader) == 300  # the collection records the rest
    finally:
        vt.uninstrument_model(model)
        tracer_provider.shutdown()


def test_no_point_is_lost_between_threads_and_collections() -> None:
    """Four inference threads append while collections record what waits, concurrently."""
    reader = InMemoryMetricReader()
    model, tracer_provider = _unsampled_model(reader)
    per_thread, seen = 150, []
    stop = threading.Event()

    def infer() -> None:
        with torch.inference_mode():
            for _ in range(per_thread):
                model(torch.randn(1, 3, 8, 8))

    def collect() -> None:
        while not stop.wait(0.002):
            seen.append(_duration_count(reader))

    try:
        threads = [threading.Thread(target=infer) for _ in range(4)]
        collector = threading.Thread(target=collect)
        collector.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        collector.join()
        assert vt.flush(10.0)
        assert _duration_count(reader) == 4 * per_thread
        assert _image_total(reader) == 4 * per_thread
        assert seen == sorted(seen), "cumulative counts only grow"
    finally:
        vt.uninstrument_model(model)
        tracer_provider.shutdown()


def test_an_uninstrumented_model_s_last_points_still_count() -> None:
    """Points waiting when the model is uninstrumented (and its instrumentation collected)
    are still recorded; the batch is forgotten after that."""
    import gc

    from visiontel.torch import _model

    reader = InMemoryMetricReader()
    model, tracer_provider = _unsampled_model(reader)
    hooks = _model.instrumentation_of(model)
    assert hooks is not None
    unsampled = hooks._runtime.metrics.unsampled
    batches_before = len(unsampled._batches)
    try:
        with torch.inference_mode():
            for _ in range(5):
                model(torch.randn(1, 3, 8, 8))
        vt.uninstrument_model(model)
        del hooks
        gc.collect()
        assert _duration_count(reader) == 5  # the collection records what waited
        assert _image_total(reader) == 5  # its images too, waiting the same way
        assert vt.flush(10.0)
        # the duration, image and detection batches: all retired, then forgotten
        assert len(unsampled._batches) == batches_before - 3
    finally:
        tracer_provider.shutdown()


def _run_sampled(
    forwards: int, granularity: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], list[Any], int, list[int]]:
    """``forwards`` sampled forwards and a stage each, spans batched: (points by metric,
    the spans, SDK records, values per fold of the duration histogram)."""
    records, folds = 0, []
    sdk_record, fold = SdkHistogram.record, _otel_private._fold

    def counted_record(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal records
        records += 1
        sdk_record(self, *args, **kwargs)

    def counted_fold(histogram: Any, values: Any, *args: Any) -> bool:
        if histogram.name == "visiontel.inference.duration":
            folds.append(len(values))
        return fold(histogram, values, *args)

    monkeypatch.setattr(SdkHistogram, "record", counted_record)
    monkeypatch.setattr(_otel_private, "_fold", counted_fold)
    reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    runtime = runtime_for(tracer_provider, meter_provider)  # the model's
    model = vt.instrument_model(
        TinyDetector(boxes_per_image=3),
        name="det",
        granularity=granularity,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    post = vt.stage("post", model="det", _runtime=runtime)
    try:
        with torch.inference_mode():
            for _ in range(forwards):
                model(torch.randn(2, 3, 8, 8))
                with post:
                    pass
        assert vt.flush(10.0)
        tracer_provider.force_flush()
        by_metric: dict[str, Any] = {}
        for name, point in data_points(reader):
            stage = dict(point.attributes).get("visiontel.stage")
            by_metric[name if stage in {None, "inference"} else f"{name} {stage}"] = point
    finally:
        vt.uninstrument_model(model)
        tracer_provider.shutdown()
    return by_metric, list(exporter.get_finished_spans()), records, folds


@pytest.mark.parametrize("granularity", ["model", "stage"])
def test_sampled_points_are_folded_at_the_end_of_the_later_work(
    granularity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampled forwards finished as later work leave their points to the end of the run:
    the same points and exemplars as one ``record`` each, each exemplar naming its own
    forward's span and carrying that span's duration."""
    points, spans, folded_records, folds = _run_sampled(6, granularity, monkeypatch)
    _otel_private._use_public_api(True)
    public, public_spans, public_records, _ = _run_sampled(6, granularity, monkeypatch)
    # folded: only the stage's first point went through record() (a stage object used once
    # records directly, _StageEnd.complete)
    assert folded_records == 1
    assert public_records == 6 + 12 + 6  # durations, detections per image, the stage's
    # the model's six and the stage's last five, folded a batch per attribute set and run
    # of later work (one run here, unless the resolver thread woke in the middle)
    assert sum(folds) == 11 and len(folds) < 11, folds
    for name in (
        "visiontel.inference.duration",
        "visiontel.inference.detections",
        "visiontel.inference.duration post",
    ):
        assert points[name].count == public[name].count
    assert points["visiontel.inference.detections"].sum == 36
    # folded, and recorded one by one (the public API: each value with its own context)
    for run_points, run_spans in ((points, spans), (public, public_spans)):
        _assert_exemplars_name_their_spans(run_points, run_spans)


def _assert_exemplars_name_their_spans(points: dict[str, Any], spans: list[Any]) -> None:
    by_span_id = {span.context.span_id: span for span in spans}
    for name, span_name in (
        ("visiontel.inference.duration", "inference det"),
        ("visiontel.inference.duration post", "post"),
    ):
        exemplars = points[name].exemplars
        assert exemplars, name
        for exemplar in exemplars:
            span = by_span_id[exemplar.span_id]
            assert span.name == span_name
            assert span.context.trace_id == exemplar.trace_id
            assert span.end_time is not None and span.start_time is not None
            assert math.isclose(exemplar.value, (span.end_time - span.start_time) / 1e9)
