"""OTEL_PROPAGATORS=tracecontext,baggage,visiontel_frame through opentelemetry.propagate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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


def run(propagators: str) -> dict:
    env = {**os.environ, "OTEL_PROPAGATORS": propagators}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


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
