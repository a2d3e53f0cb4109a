from __future__ import annotations

import itertools

import pytest
import torch

import visiontel.torch as vt

from torch_support import Reused, RgbIrFusion, Telemetry, TinyDetector, assert_no_hooks, is_armed


def _children_of(spans, parent):  # type: ignore[no-untyped-def]
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_stage_granularity_builds_a_tree_under_the_root(telemetry: Telemetry) -> None:
    model = telemetry.instrument(TinyDetector(), name="det", version="v2")
    with torch.inference_mode():
        model(torch.randn(2, 3, 16, 16))
    spans = telemetry.spans()
    (root,) = [s for s in spans if s.name == "inference det"]
    assert root.parent is None
    assert root.attributes["visiontel.model.version"] == "v2"
    assert root.attributes["visiontel.batch.size"] == 2
    assert root.attributes["visiontel.input.shapes"] == ("2x3x16x16",)
    assert root.attributes["visiontel.input.dtypes"] == ("float32",)
    assert root.attributes["visiontel.detections"] == 6
    children = _children_of(spans, root)
    assert [c.name for c in sorted(children, key=lambda s: s.start_time)] == [
        "backbone",
        "neck",
        "head",
    ]
    for child in children:
        assert child.context.trace_id == root.context.trace_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    ordered = sorted(children, key=lambda s: s.start_time)
    for earlier, later in itertools.pairwise(ordered):
        assert earlier.end_time <= later.start_time


def test_model_granularity_is_one_span(telemetry: Telemetry) -> None:
    model = telemetry.instrument(TinyDetector(), granularity="model")
    model(torch.randn(1, 3, 8, 8))
    assert [s.name for s in telemetry.spans()] == ["inference TinyDetector"]


def test_layer_granularity_spans_every_leaf(telemetry: Telemetry) -> None:
    model = telemetry.instrument(TinyDetector(), granularity="layer")
    model(torch.randn(1, 3, 8, 8))
    names = {s.name for s in telemetry.spans()}
    assert names == {
        "inference TinyDetector",
        "backbone.0",
        "backbone.1",
        "backbone.2",
        "backbone.3",
        "neck",
        "head",
    }


def test_layer_depth_and_patterns(telemetry: Telemetry) -> None:
    model = telemetry.instrument(TinyDetector(), granularity="layer", layer_depth=1)
    model(torch.randn(1, 3, 8, 8))
    assert {s.name for s in telemetry.spans()} == {
        "inference TinyDetector",
        "backbone",
        "neck",
        "head",
    }
    telemetry.exporter.clear()
    telemetry.instrument(model, granularity="layer", include=["backbone.*"], exclude=["*.1"])
    model(torch.randn(1, 3, 8, 8))
    assert {s.name for s in telemetry.spans()} == {
        "inference TinyDetector",
        "backbone.0",
        "backbone.2",
        "backbone.3",
    }


def test_reused_module_gets_one_span_per_call(telemetry: Telemetry) -> None:
    model = telemetry.instrument(Reused(), granularity="layer")
    model(torch.randn(3, 4))
    block_spans = sorted(telemetry.by_name()["block"], key=lambda s: s.start_time)
    assert len(block_spans) == 2
    assert block_spans[0].end_time <= block_spans[1].start_time
    assert block_spans[1].attributes["visiontel.module.call"] == 2
    assert "visiontel.module.call" not in block_spans[0].attributes


def test_two_stream_model_describes_both_inputs(telemetry: Telemetry) -> None:
    model = telemetry.instrument(RgbIrFusion(), name="fusion")
    model(torch.randn(1, 3, 8, 8), ir=torch.randn(1, 1, 8, 8))
    spans = telemetry.by_name()
    root = spans["inference fusion"][0]
    assert root.attributes["visiontel.input.shapes"] == ("1x3x8x8", "1x1x8x8")
    assert {"rgb", "ir", "fuse"} <= set(spans)
    assert root.attributes["visiontel.detections"] == 5


def test_outputs_are_bit_identical(telemetry: Telemetry) -> None:
    torch.manual_seed(0)
    model = TinyDetector()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        plain = model(images)
        for granularity in ("model", "stage", "layer"):
            telemetry.instrument(model, granularity=granularity)
            traced = model(images)
            for a, b in zip(plain, traced):
                for key in a:
                    assert torch.equal(a[key], b[key])


def test_uninstrument_leaves_no_hook(telemetry: Telemetry) -> None:
    model = TinyDetector()
    telemetry.instrument(model, granularity="layer")
    model(torch.randn(1, 3, 8, 8))
    assert vt.is_instrumented(model)
    assert vt.uninstrument_model(model)
    assert not vt.is_instrumented(model)
    assert_no_hooks(model)
    assert not vt.uninstrument_model(model)


def _probed_detector() -> tuple[TinyDetector, list[int]]:
    """A detector whose backbone records how many pre-hooks ``neck`` has mid-forward."""
    model = TinyDetector()
    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(is_armed(model.neck))
            return x

    model.backbone.append(Probe())
    return model, seen


def test_child_hooks_are_only_armed_during_sampled_forwards(telemetry: Telemetry) -> None:
    model, seen = _probed_detector()
    telemetry.instrument(model, granularity="layer")
    assert not is_armed(model.neck)  # parked between forwards
    model(torch.randn(1, 3, 8, 8))
    assert seen == [True]
    assert not is_armed(model.neck)


def test_unsampled_forward_arms_nothing_and_exports_nothing() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from torch_support import make_telemetry

    telemetry = make_telemetry(ALWAYS_OFF)
    model, seen = _probed_detector()
    telemetry.instrument(model, granularity="layer")
    try:
        model(torch.randn(1, 3, 8, 8))
        assert seen == [0]
        assert telemetry.spans() == []
        # metrics are not sampled: the forward still counts
        (point,) = telemetry.metric_points("visiontel.inference.duration")
        assert point.count == 1
    finally:
        vt.uninstrument_model(model)


def test_nested_instrumented_models_nest_their_spans(telemetry: Telemetry) -> None:
    inner = torch.nn.Sequential(torch.nn.Linear(4, 4))

    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = torch.nn.Linear(4, 4)
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(self.pre(x))  # type: ignore[no-any-return]

    outer = Outer()
    telemetry.instrument(inner, name="inner", granularity="model")
    telemetry.instrument(outer, name="outer", granularity="model")
    outer(torch.randn(1, 4))
    spans = telemetry.by_name()
    assert spans["inference inner"][0].parent.span_id == spans["inference outer"][0].context.span_id


def test_nested_models_in_layer_mode_both_time_their_shared_layers(telemetry: Telemetry) -> None:
    inner = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    outer = torch.nn.Sequential(torch.nn.Linear(4, 4), inner)
    telemetry.instrument(inner, name="inner", granularity="layer")
    telemetry.instrument(outer, name="outer", granularity="layer")
    expected = torch.nn.Sequential(*outer[:1], *inner)
    images = torch.randn(2, 4)
    for _ in range(2):  # the second forward re-arms probes the first one stacked
        assert torch.equal(outer(images), expected(images))
    spans = telemetry.by_name()
    # the outer model times "1.0" and "1.1"; the inner one times the same modules as "0", "1"
    assert len(spans["1.0"]) == len(spans["1.1"]) == 2
    assert len(spans["0"]) == 4  # outer's "0" (its Linear) and inner's "0"
    assert len(spans["inference inner"]) == 2
    for leaf in (outer[0], inner[0], inner[1]):
        assert not is_armed(leaf)
    assert vt.uninstrument_model(inner) and vt.uninstrument_model(outer)
    assert_no_hooks(outer)


def test_layer_span_budget_sends_the_rest_to_a_histogram(telemetry: Telemetry) -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(10)])
    telemetry.instrument(model, name="deep", granularity="layer", max_layer_spans=4)
    model(torch.randn(1, 4))
    spans = telemetry.spans()
    assert len(spans) == 5
    root = next(s for s in spans if s.parent is None)
    assert root.attributes["visiontel.layers.aggregated"] == 6
    points = telemetry.metric_points("visiontel.layer.duration")
    assert sorted(p.attributes["visiontel.module.name"] for p in points) == [
        str(i) for i in range(4, 10)
    ]
    assert all(p.count == 1 and p.sum > 0 for p in points)


def test_root_span_is_current_inside_the_forward(telemetry: Telemetry) -> None:
    from opentelemetry import trace

    captured = []

    class Peek(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            captured.append(trace.get_current_span().get_span_context().span_id)
            return self.lin(x)  # type: ignore[no-any-return]

    model = telemetry.instrument(Peek(), granularity="model")
    model(torch.randn(1, 2))
    (root,) = telemetry.spans()
    assert captured == [root.context.span_id]
    assert trace.get_current_span().get_span_context().span_id != root.context.span_id


@pytest.mark.parametrize("bad", ["everything", "", "Layers"])
def test_bad_granularity_argument_is_a_clear_error(bad: str, telemetry: Telemetry) -> None:
    with pytest.raises(ValueError, match="granularity must be one of model, stage, layer"):
        telemetry.instrument(TinyDetector(), granularity=bad)


def test_instrumenting_a_non_module_says_what_to_do() -> None:
    with pytest.raises(TypeError, match="stage"):
        vt.instrument_model(lambda x: x)


def test_input_descriptions_follow_each_forwards_inputs(telemetry: Telemetry) -> None:
    from visiontel.torch import _inputs

    model = telemetry.instrument(TinyDetector(), name="shapes")
    inputs = ((1, 8, torch.float32), (2, 8, torch.float32), (1, 16, torch.float64))
    for batch, side, dtype in inputs:
        model.to(dtype)(torch.randn(batch, 3, side, side, dtype=dtype))
    roots = telemetry.by_name()["inference shapes"]
    assert [r.attributes["visiontel.input.shapes"] for r in roots] == [
        ("1x3x8x8",),
        ("2x3x8x8",),
        ("1x3x16x16",),
    ]
    assert [r.attributes["visiontel.input.dtypes"] for r in roots] == [
        ("float32",),
        ("float32",),
        ("float64",),
    ]
    assert [r.attributes["visiontel.batch.size"] for r in roots] == [1, 2, 1]
    for size in range(_inputs._MAX_CACHED + 10):  # the signature cache stays bounded
        _inputs.describe_inputs((torch.empty(size, 1),), {}, detailed=True)
    assert len(_inputs.attribute_cache) <= _inputs._MAX_CACHED
