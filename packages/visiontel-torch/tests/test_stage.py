from __future__ import annotations

import asyncio

import pytest
import torch
from opentelemetry.trace import StatusCode

from visiontel.torch import _runtime, stage

from torch_support import Telemetry, TinyDetector


@pytest.fixture
def stage_telemetry(telemetry: Telemetry):  # type: ignore[no-untyped-def]
    _runtime.set_default_runtime(
        _runtime.Runtime(telemetry.tracer_provider, telemetry.meter_provider)
    )
    yield telemetry
    _runtime.set_default_runtime(None)


def test_stages_wrap_the_model_span(stage_telemetry: Telemetry) -> None:
    telemetry = stage_telemetry
    model = telemetry.instrument(TinyDetector(), name="det", granularity="model")
    with stage("frame"):
        with stage("preprocess"):
            batch = torch.randn(1, 3, 8, 8)
        with stage("inference-call"):
            out = model(batch)
        with stage("nms", model="det"):
            _ = [o["boxes"] for o in out]
    spans = telemetry.by_name()
    frame = spans["frame"][0]
    for name in ("preprocess", "inference-call", "nms"):
        assert spans[name][0].parent.span_id == frame.context.span_id
    assert spans["inference det"][0].parent.span_id == spans["inference-call"][0].context.span_id
    stages = {
        p.attributes["visiontel.stage"]: p
        for p in telemetry.metric_points("visiontel.inference.duration")
    }
    assert {"frame", "preprocess", "inference-call", "nms", "inference"} <= set(stages)
    assert stages["nms"].attributes["visiontel.model.name"] == "det"


def test_stage_as_decorator_sync_and_async(stage_telemetry: Telemetry) -> None:
    @stage("postprocess")
    def post(x: int) -> int:
        return x + 1

    @stage("track")
    async def track(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert post(1) == 2 and post(2) == 3
    assert asyncio.run(track(4)) == 8
    spans = stage_telemetry.by_name()
    assert len(spans["postprocess"]) == 2
    assert len(spans["track"]) == 1
    assert post.__name__ == "post"


def test_stage_failure_propagates_and_is_recorded(stage_telemetry: Telemetry) -> None:
    with pytest.raises(ZeroDivisionError), stage("nms"):
        _ = 1 / 0
    (span,) = stage_telemetry.spans()
    assert span.status.status_code is StatusCode.ERROR
    (point,) = stage_telemetry.metric_points("visiontel.inference.duration")
    assert point.attributes["error.type"] == "ZeroDivisionError"


def test_stage_name_is_validated() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        stage("")


def test_a_stage_entered_again_folds_its_point_with_the_span_as_exemplar(
    stage_telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage kept and entered per frame records its first point through the SDK, the
    next ones folded into its storage: the same points, each with its span as exemplar."""
    from opentelemetry.sdk.metrics import Histogram as SdkHistogram

    from torch_support import data_points

    records = []
    record = SdkHistogram.record
    monkeypatch.setattr(
        SdkHistogram, "record", lambda self, *a, **k: (records.append(a[0]), record(self, *a, **k))
    )
    nms = stage("nms", model="det")
    seen = []
    for _ in range(4):
        with nms:
            pass
        (span,) = [s for s in stage_telemetry.spans() if s.name == "nms"][-1:]
        (point,) = [
            p
            for name, p in data_points(stage_telemetry.reader)
            if name == "visiontel.inference.duration"
        ]
        seen.append((point.count, [(e.span_id, e.trace_id) for e in point.exemplars]))
        assert point.exemplars[-1].span_id == span.context.span_id
    assert [count for count, _ in seen] == [1, 2, 3, 4]
    assert len(records) == 1, "only the first use goes through Histogram.record"
