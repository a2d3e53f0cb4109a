"""OTEL_TRACES_SAMPLER=visiontel_force_trace and OTEL_PROPAGATORS=...,visiontel_force_trace
through the SDK's own configurator, in a fresh interpreter.

The entry points are those of the installed visiontel-propagation (its pyproject.toml).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from typing import Any

import pytest

# group -> (name, object reference): exactly what pyproject.toml declares.
ENTRY_POINTS = {
    "opentelemetry_traces_sampler": (
        "visiontel_force_trace",
        "visiontel.propagation:force_trace_sampler",
    ),
    "opentelemetry_propagator": (
        "visiontel_force_trace",
        "visiontel.propagation:ForceTracePropagator",
    ),
}

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from opentelemetry import propagate, trace
    from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    _OTelSDKConfigurator().configure()
    provider = trace.get_tracer_provider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = trace.get_tracer("entry-point-test")
    out = {"sampler": provider.sampler.get_description()}
    for name, headers in (("plain", {}), ("forced", {"visiontel-force-trace": "1"})):
        with tracer.start_as_current_span(name, context=propagate.extract(headers)) as span:
            out[name] = span.is_recording()
    out["attributes"] = {s.name: dict(s.attributes) for s in exporter.get_finished_spans()}
    print(json.dumps(out))
    """
)


def _run(script: str, env: dict[str, str]) -> tuple[Any, str]:
    """The script's JSON answer, and its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PROPAGATORS="tracecontext,baggage,visiontel_force_trace",
        OTEL_TRACES_SAMPLER="visiontel_force_trace",
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    env.update(extra)
    return env


def test_the_sdk_configures_force_trace_from_the_environment():
    out, _ = _run(SCRIPT, _env())
    assert out["sampler"].startswith("ForceTrace{ParentBased{root:TraceIdRatioBased{0.0}")
    assert out["plain"] is False
    assert out["forced"] is True
    assert out["attributes"] == {"forced": {"visiontel.force_trace": True}}


def test_without_the_propagator_the_header_does_nothing():
    env = _env(OTEL_PROPAGATORS="tracecontext,baggage")
    out, _ = _run(SCRIPT, env)
    assert (out["plain"], out["forced"]) == (False, False)


def test_a_malformed_ratio_is_logged_once_and_1_used():
    env = _env(OTEL_TRACES_SAMPLER_ARG="sometimes")
    out, stderr = _run(SCRIPT, env)
    assert out["sampler"].startswith("ForceTrace{ParentBased{root:TraceIdRatioBased{1.0}")
    assert (out["plain"], out["forced"]) == (True, True)
    assert stderr.count("OTEL_TRACES_SAMPLER_ARG='sometimes'") == 1, stderr


def test_the_package_imports_without_the_sdk_until_the_sampler_is_used():
    script = textwrap.dedent(
        """
        import json, sys
        import visiontel.propagation as vp
        before = sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))
        vp.ForceTraceSampler
        after = "opentelemetry.sdk.trace.sampling" in sys.modules
        print(json.dumps({"before": before, "after": after}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out, _ = _run(script, env)
    assert out == {"before": [], "after": True}


@pytest.mark.parametrize("group", sorted(ENTRY_POINTS))
def test_installed_metadata_declares_the_entry_points(group):
    name, ref = ENTRY_POINTS[group]
    found = [
        ep.value
        for ep in entry_points(group=group, name=name)
        if ep.dist is not None and ep.dist.name == "visiontel-propagation"
    ]
    assert found == [ref], (
        f'add `{name} = "{ref}"` under [project.entry-points.{group}] in '
        "packages/visiontel-propagation/pyproject.toml and reinstall the package"
    )
