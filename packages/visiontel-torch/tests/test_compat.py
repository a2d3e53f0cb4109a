from __future__ import annotations

import pytest
import torch

from torch_support import Telemetry, TinyDetector


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
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    telemetry.instrument(compiled, name="outer", granularity="model")
    result = compiled(images)
    for a, b in zip(expected, result):
        assert torch.allclose(a["boxes"], b["boxes"])
    names = {s.name for s in telemetry.spans()}
    # the compiled call's boundary is traced; hooks inside the compiled region stay silent
    assert "inference outer" in names
    torch._dynamo.reset()
