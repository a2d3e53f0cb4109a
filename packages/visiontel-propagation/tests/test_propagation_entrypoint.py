"""OTEL_PROPAGATORS=tracecontext,baggage,visiontel_frame through opentelemetry.propagate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

SCRIPT = textwrap.dedent(
    """
    import json
    from opentelemetry import baggage, propagate, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    import visiontel.propagation as vp

    frame = vp.FrameIdentity("gate 4", 9, 1_700_000_000_000_000_000)
    sc = SpanContext(0xABC, 0xDEF, True, TraceFlags(1))
    ctx = trace.set_span_in_context(NonRecordingSpan(sc))
    ctx = vp.set_frame(frame, baggage.set_baggage("site", "north", ctx))
    carrier = {}
    propagate.inject(carrier, context=ctx)
    out = propagate.extract(carrier)
    print(json.dumps({
        "fields": sorted(propagate.get_global_textmap().fields),
        "carrier": carrier,
        "frame": vp.get_frame(out),
        "trace_id": trace.get_current_span(out).get_span_context().trace_id,
        "baggage": dict(baggage.get_all(out)),
    }))
    """
)


def python(script: str, **env: str) -> Any:
    """Run ``script`` in a fresh interpreter and return the JSON it prints."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run(propagators: str) -> dict:
    return python(SCRIPT, OTEL_PROPAGATORS=propagators)


def test_registered_propagator_is_used_by_opentelemetry():
    result = run("tracecontext,baggage,visiontel_frame")
    assert result["fields"] == ["baggage", "traceparent", "tracestate", "visiontel-frame"]
    assert result["carrier"]["visiontel-frame"] == "gate%204;9;1700000000000000000"
    assert result["frame"] == ["gate 4", 9, 1_700_000_000_000_000_000]
    assert result["trace_id"] == 0xABC
    assert result["baggage"] == {"site": "north"}


def test_without_it_the_frame_does_not_travel():
    result = run("tracecontext,baggage")
    assert "visiontel-frame" not in result["carrier"]
    assert result["frame"] is None
    assert result["trace_id"] == 0xABC


def test_entry_point_metadata():
    from importlib.metadata import entry_points

    group = entry_points(group="opentelemetry_propagator")
    (ep,) = [e for e in group if e.name == "visiontel_frame"]
    from visiontel.propagation import FramePropagator

    assert ep.load() is FramePropagator


METRIC_SCRIPT = textwrap.dedent(
    """
    import json
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    import visiontel.propagation as vp

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    vp.extract_mq([("traceparent", b"00-nonsense")])
    vp.extract_mq([("traceparent", b"00-nonsense")])
    vp.extract_slot(b"XXXX" + bytes(252))
    points = [
        {"attributes": dict(p.attributes), "value": p.value}
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "visiontel.propagation.rejected"
        for p in m.data.data_points
    ]
    print(json.dumps(points))
    """
)


def test_rejections_are_a_metric():
    done = subprocess.run(
        [sys.executable, "-c", METRIC_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    points = {
        (p["attributes"]["visiontel.carrier"], p["attributes"]["visiontel.reason"]): p["value"]
        for p in python(METRIC_SCRIPT)
    }
    assert points == {("mq", "traceparent_malformed"): 2, ("slot", "bad_magic"): 1}
