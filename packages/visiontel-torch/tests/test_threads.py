from __future__ import annotations

import threading

import torch

from torch_support import Telemetry, TinyDetector, is_armed


def test_concurrent_threads_get_their_own_traces(telemetry: Telemetry) -> None:
    model = telemetry.instrument(TinyDetector(), name="shared", granularity="layer")
    tracer = telemetry.tracer_provider.get_tracer("test")
    per_thread = 10
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(worker_id: int) -> None:
        try:
            start.wait()
            for frame in range(per_thread):
                with tracer.start_as_current_span(f"frame {worker_id}/{frame}"):
                    with torch.inference_mode():
                        model(torch.randn(1, 3, 8, 8))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    spans = telemetry.spans()
    frames = [s for s in spans if s.name.startswith("frame ")]
    assert len(frames) == 4 * per_thread
    layer_names = {"backbone.0", "backbone.1", "backbone.2", "backbone.3", "neck", "head"}
    for frame in frames:
        trace_spans = [s for s in spans if s.context.trace_id == frame.context.trace_id]
        (root,) = [s for s in trace_spans if s.name == "inference shared"]
        assert root.parent.span_id == frame.context.span_id
        layers = [s for s in trace_spans if s.parent and s.parent.span_id == root.context.span_id]
        # exactly this forward's layers: nothing from another thread leaked in
        assert sorted(s.name for s in layers) == sorted(layer_names)
    # and nothing is left armed once every thread is done
    assert not is_armed(model.neck)


def test_sampled_and_unsampled_threads_share_a_model() -> None:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    import visiontel.torch as vt

    from torch_support import make_telemetry

    telemetry = make_telemetry(ParentBased(TraceIdRatioBased(0.5)))
    model = telemetry.instrument(TinyDetector(), name="mixed", granularity="layer")
    tracer = telemetry.tracer_provider.get_tracer("test")

    def worker() -> None:
        for _ in range(20):
            with tracer.start_as_current_span("frame"):
                model(torch.randn(1, 3, 8, 8))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        spans = telemetry.spans()
        roots = [s for s in spans if s.name == "inference mixed"]
        frames = [s for s in spans if s.name == "frame"]
        assert 0 < len(frames) < 60
        assert len(roots) == len(frames)
        for root in roots:
            layers = [s for s in spans if s.parent and s.parent.span_id == root.context.span_id]
            assert len(layers) == 6
        (duration,) = telemetry.metric_points("visiontel.inference.duration")
        assert duration.count == 60
    finally:
        vt.uninstrument_model(model)
