"""The compiled per-layer loops (csrc/) against their pure-Python versions.

Every workload runs twice, compiled and with ``_compiled.speedups`` set to None (what
``VISIONTEL_TORCH_PURE_PYTHON=true`` or a missing build gives), and must give the same span
trees, attributes and layer metrics. nox builds the extension and sets
``VISIONTEL_REQUIRE_SPEEDUPS=1``: there a missing build fails instead of skipping.
"""

from __future__ import annotations

import copy
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import torch
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

import visiontel.torch as vt
from visiontel._support.env import env_bool
from visiontel.torch import _compiled, _resolver

from torch_support import Failing, Reused, Telemetry, TinyDetector, loops, make_telemetry

Tree = list[tuple[Any, ...]]


def test_the_environment_chooses_theloops(compiled: ModuleType, monkeypatch: Any) -> None:
    pure = env_bool(_compiled.ENV_PURE_PYTHON, False)  # as nox's session set it
    assert _compiled.speedups is (None if pure else compiled)
    monkeypatch.setenv(_compiled.ENV_PURE_PYTHON, "true")
    assert _compiled._load() is None
    monkeypatch.delenv(_compiled.ENV_PURE_PYTHON)
    assert _compiled._load() is compiled


def _tree(telemetry: Telemetry) -> Tree:
    spans = telemetry.spans()
    by_id = {s.context.span_id: s for s in spans}
    roots = [s for s in spans if s.parent is None]
    assert roots
    for span in spans:
        root = next(r for r in roots if r.context.trace_id == span.context.trace_id)
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
        assert span.context.span_id != 0 and span.context.trace_flags.sampled
        assert span.resource is root.resource
        assert span.instrumentation_scope == root.instrumentation_scope
    return sorted(
        (
            s.name,
            by_id[s.parent.span_id].name if s.parent else None,
            tuple(sorted((k, v) for k, v in s.attributes.items() if "module" in k or "layer" in k)),
            s.status.status_code.name,
        )
        for s in spans
    )


def _layer_points(telemetry: Telemetry) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(sorted(p.attributes.items())), p.count)
        for p in telemetry.metric_points("visiontel.layer.duration")
    )


def _run(model: torch.nn.Module, run: Callable[[torch.nn.Module], Any], **kwargs: Any) -> Any:
    telemetry = make_telemetry()
    telemetry.instrument(model, granularity=kwargs.pop("granularity", "layer"), **kwargs)
    try:
        run(model)
    finally:
        vt.uninstrument_model(model)
    return _tree(telemetry), _layer_points(telemetry)


def _both(model_factory: Callable[[], torch.nn.Module], run: Any, **kwargs: Any) -> Any:
    results = {}
    for chosen in ("compiled", "pure"):
        with loops(_compiled.speedups if chosen == "compiled" else None):
            results[chosen] = _run(model_factory(), run, **kwargs)
    assert results["compiled"] == results["pure"]
    return results["compiled"]


@pytest.fixture
def with_compiled(compiled: ModuleType) -> Iterator[None]:
    with loops(compiled):
        yield


@pytest.mark.usefixtures("with_compiled")
def test_same_spans_for_nested_and_repeated_layers() -> None:
    def twice(model: torch.nn.Module) -> None:
        model(torch.randn(1, 3, 8, 8))
        model(torch.randn(2, 3, 8, 8))

    tree, points = _both(TinyDetector, twice)
    assert len(tree) > 8 and not points
    reused, _ = _both(Reused, lambda m: m(torch.randn(2, 4)))
    calls = [dict(attributes).get("visiontel.module.call") for name, _, attributes, _ in reused]
    assert 2 in calls  # the block's second call is numbered


@pytest.mark.usefixtures("with_compiled")
def test_same_spans_and_histogram_past_the_layer_budget() -> None:
    tree, points = _both(TinyDetector, lambda m: m(torch.randn(1, 3, 8, 8)), max_layer_spans=2)
    root = next(entry for entry in tree if entry[1] is None)
    assert ("visiontel.layers.aggregated", len(points)) in root[2]
    assert len(tree) == 3 and points  # two layer spans, the rest timed into the histogram


@pytest.mark.usefixtures("with_compiled")
def test_same_spans_when_a_layer_raises() -> None:
    def failing(model: torch.nn.Module) -> None:
        with pytest.raises(ValueError):
            model(torch.randn(2, 4))

    tree, _ = _both(lambda: Failing(ValueError("bad input")), failing)
    assert {status for *_, status in tree} == {"ERROR", "UNSET"}


@pytest.mark.usefixtures("with_compiled")
def test_same_spans_at_stage_granularity_with_containers_on_trial() -> None:
    from ultralytics.nn.tasks import DetectionModel

    def predict(model: torch.nn.Module) -> None:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, 64, 64))
            model(torch.zeros(1, 3, 64, 64))

    yolo = lambda: DetectionModel("yolov8n.yaml", verbose=False)  # noqa: E731
    tree, _ = _both(yolo, predict, granularity="stage")
    assert len({name for name, *_ in tree}) > 5


def test_same_spans_under_span_limits_and_a_custom_id_generator(compiled: ModuleType) -> None:
    class Counting(IdGenerator):
        def __init__(self) -> None:
            self.span_ids = 0

        def generate_span_id(self) -> int:
            self.span_ids += 1
            return self.span_ids

        def generate_trace_id(self) -> int:
            return 0xABC

    trees = {}
    for chosen in (compiled, None):
        exporter, ids = InMemorySpanExporter(), Counting()
        provider = TracerProvider(id_generator=ids, span_limits=SpanLimits(max_span_attributes=1))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        model = Reused()
        with loops(chosen):
            vt.instrument_model(model, granularity="layer", tracer_provider=provider)
            try:
                model(torch.randn(2, 4))
                assert vt.flush()
            finally:
                vt.uninstrument_model(model)
        spans = exporter.get_finished_spans()
        assert ids.span_ids == len(spans)  # every span id came from the provider's generator
        trees[chosen is None] = sorted(
            (s.name, s.context.span_id, s.parent.span_id if s.parent else 0, dict(s.attributes))
            for s in spans
            if s.parent is not None
        )
    assert trees[False] == trees[True]
    assert all(len(attributes) == 1 for *_, attributes in trees[False])


def test_batched_spans_reach_the_exporter(compiled: ModuleType) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    model = TinyDetector()
    with loops(compiled):
        vt.instrument_model(model, granularity="layer", tracer_provider=provider)
        try:
            model(torch.randn(1, 3, 8, 8))
            assert vt.flush()
            provider.force_flush()
        finally:
            vt.uninstrument_model(model)
    spans = exporter.get_finished_spans()
    layers = [s for s in spans if s.parent is not None]
    assert layers and len({s.context.trace_id for s in spans}) == 1


def test_the_resolver_thread_builds_only_a_small_forwards_spans_compiled(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[tuple[int, int]] = []
    original = _resolver.Resolver._materialise_compiled

    def counted(resolver: Any, module: Any, record: Any, *args: Any) -> None:
        built.append((threading.get_ident(), len(record.stamps or ())))
        original(resolver, module, record, *args)

    monkeypatch.setattr(_resolver.Resolver, "_materialise_compiled", counted)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    small = TinyDetector()
    big = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(40)))  # 80 stamps
    with loops(compiled):
        vt.instrument_model(small, granularity="stage", tracer_provider=provider)
        vt.instrument_model(big, granularity="layer", tracer_provider=provider)
        try:
            with torch.no_grad():
                small(torch.randn(1, 3, 8, 8))
                big(torch.randn(2, 4))
            wanted = {"inference TinyDetector", "inference Sequential"}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # no flush(): the resolver thread's later work
                provider.force_flush()
                if wanted <= {span.name for span in exporter.get_finished_spans()}:
                    break
                time.sleep(0.05)
        finally:
            vt.uninstrument_model(small)
            vt.uninstrument_model(big)
    names = [span.name for span in exporter.get_finished_spans()]
    assert names.count("inference Sequential") == 1
    assert set(map(str, range(40))) <= set(names)  # every Linear's span
    assert len(built) == 1  # the small forward's, on the resolver thread; the big one in Python
    ((thread, stamps),) = built
    assert thread != threading.get_ident() and 0 < stamps <= 32


# -- the C pieces on their own ----------------------------------------------------------------


class _State:
    record: Any = None


class _Record:
    def __init__(self, stamps: list[Any] | None, events: Any = None) -> None:
        self.stamps, self.events = stamps, events


def test_stamped_forward_stamps_around_the_call_and_when_it_raises(compiled: ModuleType) -> None:
    state, calls = _State(), []

    def forward(*args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        if kwargs.get("fail"):
            raise KeyError("inside")
        return "out"

    acquired: list[str] = []
    stamped = compiled.StampedForward([forward], state, 7, lambda _e, site: acquired.append(site))
    assert stamped(1, x=2) == "out"  # no record: a plain call
    state.record = _Record(None)
    assert stamped(3) == "out"  # a record without stamps (unsampled): a plain call
    stamps: list[Any] = []
    state.record = _Record(stamps)
    before = time.perf_counter_ns()
    assert stamped(4, y=5) == "out"
    with pytest.raises(KeyError):
        stamped(fail=True)
    after = time.perf_counter_ns()
    assert calls == [((1,), {"x": 2}), ((3,), {}), ((4,), {"y": 5}), ((), {"fail": True})]
    assert [s[0] for s in stamps] == [7, ~7, 7, ~7]
    times = [s[1] for s in stamps]
    assert before <= times[0] <= times[1] <= times[2] <= times[3] <= after  # perf_counter_ns
    assert [s[2] for s in stamps] == [None] * 4 and not acquired
    state.record = _Record(stamps := [], events="cuda")
    stamped(6)
    assert acquired == ["layer start", "layer end"] and len(stamps) == 2


def test_forward_swap_restores_what_was_there(compiled: ModuleType) -> None:
    module = torch.nn.Linear(2, 2)
    inner: list[Any] = [None]
    swap = compiled.ForwardSwap(module, "wrapper", inner)
    compiled.install_all([swap])
    assert vars(module)["forward"] == "wrapper"
    assert inner[0] == torch.nn.Linear.forward.__get__(module)  # the class's, bound
    compiled.install_all([swap])  # twice: still one wrapper, inner unchanged
    compiled.uninstall_all([swap])
    assert "forward" not in vars(module)
    own = lambda x: x  # noqa: E731 (an instance forward set by someone else)
    module.forward = own  # type: ignore[method-assign]
    swap.install()
    assert inner[0] is own and vars(module)["forward"] == "wrapper"
    module.forward = "stacked on top"  # type: ignore[assignment, method-assign]
    swap.uninstall()  # not ours any more: left alone
    assert vars(module)["forward"] == "stacked on top"


def test_an_armed_module_copies_and_pickles_as_plain(compiled: ModuleType) -> None:
    module = torch.nn.Linear(2, 2)
    inner: list[Any] = [module.forward]
    module.forward = compiled.StampedForward(inner, _State(), 0, lambda *_: None)  # type: ignore[method-assign]
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert "forward" not in vars(clone) or not isinstance(
            vars(clone)["forward"], compiled.StampedForward
        )
        assert torch.equal(clone(torch.ones(1, 2)), module(torch.ones(1, 2)))


def test_layer_spans_refuses_malformed_stamps(compiled: ModuleType) -> None:
    from opentelemetry.trace import SpanContext

    from visiontel.torch._otel_private import fast_path_for

    provider = TracerProvider()
    path = fast_path_for(provider)
    assert path is not None
    root = SpanContext(1, 2, is_remote=False)
    args = (("a", "b"), ("Linear", "ReLU"), 10, root, 0, 100, *path.span_parts)
    with pytest.raises(IndexError):
        compiled.layer_spans([(3, 1, None)], *args)
    with pytest.raises(TypeError):
        compiled.layer_spans(["not a stamp"], *args)
    ended, aggregated = compiled.layer_spans([(0, 10, None), (~0, 20, None)], *args)
    assert [(s.name, s.start_time, s.end_time, s.parent) for s in ended] == [("a", 10, 20, root)]
    assert aggregated == []
    # b's end was never stamped: closed with a's end; then a second a, whose end is missing
    ended, _ = compiled.layer_spans(
        [(0, 10, None), (1, 12, None), (~0, 20, None), (0, 30, None)], *args
    )
    assert [(s.name, s.start_time, s.end_time) for s in ended] == [
        ("b", 12, 20),
        ("a", 10, 20),
        ("a", 30, 100),
    ]
    assert [dict(s.attributes) for s in ended] == [
        {"visiontel.module.class": "ReLU", "visiontel.module.incomplete": True},
        {"visiontel.module.class": "Linear"},
        {
            "visiontel.module.class": "Linear",
            "visiontel.module.call": 2,
            "visiontel.module.incomplete": True,
        },
    ]
    assert ended[0].parent == ended[1].context and ended[2].parent == root


def test_layer_span_ids_drawn_at_once_are_those_the_sdk_would_draw(
    compiled: ModuleType,
) -> None:
    """One ``getrandbits`` call for a forward's span ids gives the ids its
    ``RandomIdGenerator`` would give span by span, in order; over the budget none is drawn."""
    import random

    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.trace import SpanContext

    from visiontel.torch._otel_private import fast_path_for

    path = fast_path_for(TracerProvider())
    assert path is not None
    root = SpanContext(1, 2, is_remote=False)
    names, classes = ("a", "b", "c"), ("Linear", "ReLU", "Linear")
    stamps = [(0, 10, None), (1, 11, None), (~1, 12, None), (2, 13, None), (~2, 14, None)]
    stamps += [(~0, 15, None)]
    for budget, made in ((10, 3), (2, 2)):
        random.seed(1234)
        ended, aggregated = compiled.layer_spans(
            stamps, names, classes, budget, root, 0, 100, *path.span_parts
        )
        random.seed(1234)
        expected = [RandomIdGenerator().generate_span_id() for _ in range(made)]
        by_start = sorted(ended, key=lambda span: span.start_time)
        assert [span.context.span_id for span in by_start] == expected
        assert len(aggregated) == 3 - made
        after = random.getrandbits(64)
        random.seed(1234)
        for _ in range(made):
            random.getrandbits(64)
        assert random.getrandbits(64) == after, "exactly one id drawn per span"
        assert all(type(span.context) is SpanContext for span in ended)
        assert all(span.context.trace_id == 1 and not span.context.is_remote for span in ended)


def test_finished_spans_are_freed_without_the_cyclic_collector(compiled: ModuleType) -> None:
    import gc
    import weakref

    from opentelemetry.trace import SpanContext

    from visiontel.torch._otel_private import fast_path_for

    path = fast_path_for(TracerProvider())
    assert path is not None
    root = SpanContext(1, 2, is_remote=False)
    args = (("a",), ("Linear",), 10, root, 0, 100, *path.span_parts)
    ended, _ = compiled.layer_spans([(0, 10, None), (~0, 20, None)], *args)
    span = ended[0]
    assert not gc.is_tracked(span) and not gc.is_tracked(vars(span))
    gone = weakref.ref(span)
    gc.disable()
    try:
        del span, ended
        assert gone() is None  # reference counting alone freed it
    finally:
        gc.enable()


def test_thread_record_is_per_thread_and_keeps_nothing_after_a_forward(
    compiled: ModuleType,
) -> None:
    import threading

    state = compiled.ThreadRecord()
    assert state.record is None
    mine, theirs = object(), object()
    state.record = mine
    seen: list[Any] = []

    def other() -> None:
        seen.append(state.record)  # another thread's record is not this one's
        state.record = theirs
        seen.append(state.record)
        stamped = compiled.StampedForward([lambda: "out"], state, 0, lambda *_: None)
        state.record = _Record(stamps := [])
        seen.append((stamped(), len(stamps)))  # the wrapper reads this thread's record
        state.record = None

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert seen == [None, theirs, ("out", 2)]
    assert state.record is mine
    state.record = None
    assert state.record is None
    del state.record  # deleting twice is fine too
    with pytest.raises(TypeError):
        compiled.ThreadRecord(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_keeps_no_other_threads_records(compiled: ModuleType) -> None:
    import threading

    from visiontel.torch import _threads

    with loops(compiled):
        state = _threads.thread_state()
    entered, release = threading.Event(), threading.Event()

    def mid_forward() -> None:
        state.record = object()  # a forward in flight on another thread
        entered.set()
        release.wait(10)
        state.record = None

    worker = threading.Thread(target=mid_forward)
    worker.start()
    entered.wait(10)
    state.record = mine = object()
    try:
        assert state.threads() == 2
        pid = os.fork()
        if pid == 0:  # the child: only this thread's record is left
            os._exit(0 if state.threads() == 1 and state.record is mine else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert state.threads() == 2  # the parent keeps both
    finally:
        release.set()
        worker.join()
        state.record = None
    assert state.threads() == 0
