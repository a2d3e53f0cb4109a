from __future__ import annotations

import io

import pytest
import torch

import visiontel.torch as vt
from visiontel.torch import _torch_private
from visiontel.torch._threads import forward_depth

from torch_support import Telemetry, TinyDetector, assert_no_hooks


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "grad"])
def test_autograd_modes(telemetry: Telemetry, mode: str) -> None:
    model = telemetry.instrument(TinyDetector(), name=mode, granularity="layer")
    images = torch.randn(1, 3, 8, 8)
    if mode == "inference_mode":
        with torch.inference_mode():
            model(images)
    elif mode == "no_grad":
        with torch.no_grad():
            model(images)
    else:
        out = model(images)
        out[0]["boxes"].sum().backward()
    assert len(telemetry.spans()) == 7


def test_data_parallel_wrapper(telemetry: Telemetry) -> None:
    inner = TinyDetector()
    wrapped = torch.nn.DataParallel(inner)  # on CPU it calls the module directly
    telemetry.instrument(wrapped, name="dp")
    wrapped(torch.randn(2, 3, 8, 8))
    spans = telemetry.by_name()
    root = spans["inference dp"][0]
    assert spans["module"][0].parent.span_id == root.context.span_id
    assert root.attributes["visiontel.detections"] == 6


def test_compiled_model_has_no_graph_breaks_and_same_results(telemetry: Telemetry) -> None:
    import torch._dynamo

    torch.manual_seed(1)
    model = TinyDetector()
    images = torch.randn(1, 3, 8, 8)
    expected = model(images)
    telemetry.instrument(model, name="compiled", granularity="layer")
    explanation = torch._dynamo.explain(model)(images)
    assert explanation.graph_break_count == 0
    # Dynamo traced the hooks as no-ops: none ran for real (a pre-hook that did would leave
    # its forward open, the post-hook being traced)
    assert forward_depth() == 0 and not telemetry.spans()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    telemetry.instrument(compiled, name="outer", granularity="model")
    result = compiled(images)
    for a, b in zip(expected, result):
        assert torch.allclose(a["boxes"], b["boxes"])
    names = {s.name for s in telemetry.spans()}
    # the compiled call's boundary is traced; hooks inside the compiled region stay silent
    assert "inference outer" in names and "inference compiled" not in names
    assert forward_depth() == 0
    torch._dynamo.reset()


@pytest.mark.parametrize("torch_internals", ["used", "not used"])
def test_export_runs_no_hooks_and_the_model_stays_traced(
    telemetry: Telemetry, torch_internals: str
) -> None:
    """Non-strict torch.export runs the module, hooks included: they stay silent, whether
    the check reads torch's compiling flag itself or asks torch.compiler.is_compiling()."""
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    images = torch.randn(1, 3, 8, 8)
    expected = model(images)
    with _torch_private.force_public_api(torch_internals == "not used"):
        telemetry.instrument(model, name="exportable", granularity="layer")
    exported = torch.export.export(model, (images,), strict=False)
    assert forward_depth() == 0 and not telemetry.spans()
    assert torch.equal(exported.module()(images), expected)
    assert torch.equal(model(images), expected)
    assert [s.name for s in telemetry.spans()].count("inference exportable") == 1


def test_compiled_child_is_one_layer_span_and_compiles_once(telemetry: Telemetry) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(2)
    model = TinyDetector()
    images = torch.randn(1, 3, 8, 8)
    expected = model(images)
    model.backbone = torch.compile(model.backbone, backend="eager")  # type: ignore[assignment]
    telemetry.instrument(model, name="partly-compiled", granularity="layer")
    for _ in range(4):  # arming and disarming the probes must not invalidate the graph
        result = model(images)
    assert torch.equal(expected[0]["boxes"], result[0]["boxes"])
    assert counters["stats"]["unique_graphs"] == 1
    names = [s.name for s in telemetry.spans()]
    assert names.count("backbone") == 4  # the compiled module is a leaf: its boundary is timed
    assert not any(name.startswith("backbone.") for name in names)
    torch._dynamo.reset()


def test_data_parallel_tree_uses_hooks_not_forward_wrappers(telemetry: Telemetry) -> None:
    inner = TinyDetector()
    seen: list[tuple[bool, bool]] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(("forward" in vars(inner.neck), bool(inner.neck._forward_pre_hooks)))
            return x

    inner.backbone.append(Probe())
    wrapped = torch.nn.DataParallel(inner)
    telemetry.instrument(wrapped, name="dp-layers", granularity="layer")
    wrapped(torch.randn(2, 3, 8, 8))
    # replicate() copies instance dictionaries, so a wrapped forward would follow a replica
    # to another device bound to the original module: hooks are used instead
    assert seen == [(False, True)]
    assert "module.neck" in telemetry.by_name()
    assert vt.uninstrument_model(wrapped)
    assert_no_hooks(wrapped)


def test_someone_elses_forward_wrapper_is_called_and_restored(telemetry: Telemetry) -> None:
    model = TinyDetector()
    original = model.neck.forward
    calls: list[int] = []

    def theirs(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(x)  # type: ignore[no-any-return]

    model.neck.forward = theirs  # type: ignore[method-assign]
    telemetry.instrument(model, name="foreign", granularity="layer")
    model(torch.randn(1, 3, 8, 8))
    assert calls == [1]
    assert model.neck.forward is theirs  # put back after the sampled forward
    assert "neck" in telemetry.by_name()
    assert vt.uninstrument_model(model)
    assert model.neck.forward is theirs


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_scripted_child_is_one_layer_span_and_keeps_its_script_method(
    telemetry: Telemetry,
) -> None:
    torch.manual_seed(3)
    model = TinyDetector()
    images = torch.randn(1, 3, 8, 8)
    expected = model(images)
    model.neck = torch.jit.script(model.neck)  # type: ignore[assignment]
    script_forward = vars(model.neck)["forward"]
    telemetry.instrument(model, name="scripted", granularity="layer")
    result = model(images)
    assert torch.equal(expected[0]["boxes"], result[0]["boxes"])
    names = [s.name for s in telemetry.spans()]
    assert names.count("neck") == 1 and not any(n.startswith("neck.") for n in names)
    assert vars(model.neck)["forward"] is script_forward
    assert vt.uninstrument_model(model)
    assert vars(model.neck)["forward"] is script_forward
    assert_no_hooks(model)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_scripted_child_in_a_data_parallel_tree_is_skipped_not_fatal(telemetry: Telemetry) -> None:
    inner = TinyDetector()
    inner.neck = torch.jit.script(inner.neck)  # type: ignore[assignment]
    wrapped = torch.nn.DataParallel(inner)
    telemetry.instrument(wrapped, name="dp-scripted", granularity="layer")
    wrapped(torch.randn(1, 3, 8, 8))
    names = {s.name for s in telemetry.spans()}
    assert "module.head" in names and "module.neck" not in names


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_an_instrumented_model_can_be_scripted_and_stays_traced(telemetry: Telemetry) -> None:
    """TorchScript compiles a module's hooks; visiontel's are left out (a scripted module runs
    no Python hooks), so scripting works as on the plain model."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    images = torch.randn(1, 3, 8, 8)
    expected = model(images)
    telemetry.instrument(model, name="scriptable", granularity="layer")
    scripted = torch.jit.script(model)
    assert torch.equal(scripted(images), expected)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)  # and it saves: nothing of visiontel inside
    buffer.seek(0)
    assert torch.equal(torch.jit.load(buffer)(images), expected)
    assert torch.equal(model(images), expected)
    assert [s.name for s in telemetry.spans()].count("inference scriptable") == 1
