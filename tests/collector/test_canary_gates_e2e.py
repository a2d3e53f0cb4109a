"""The canary gates of collector-config/canary/ against a real Prometheus, fed by
`visiontel demo` in canary mode through otelcol-visiontel (local.yaml).

Each demo run gets a collector (local.yaml, traces and logs to its debug exporter: only
metrics matter here) and a Prometheus of its own, so one run's versions never count as
another's "stable". Every gate's query is rendered as Argo Rollouts
and Flagger render it and judged by the templates' own conditions (canary_gates.py): a
healthy canary passes every gate, an over-detecting one fails the detections gate, a slow
one the latency gate; a canary that gets no frames fails the traffic gate, and synthetic
GPU and error series (sent as OTLP, like the SDK would) fail the GPU and error gates.
Run with `nox -s stack`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from canary_gates import argo_metrics, argo_phase, flagger_passes, flagger_render, flagger_value
from collector_support import CONFIG_DIR, Stack, load_yaml
from otlp_json import histogram_metric, metrics, post, sum_metric

pytestmark = pytest.mark.e2e

CANARY_DIR = CONFIG_DIR / "canary"
NAMESPACE, TARGET = "visiontel-demo", "detector"  # the demo's service.namespace / .name
JOB = f"{NAMESPACE}/{TARGET}"
# Random-weight versions detect differently (1.0 and 2.0 by 3x on synthetic frames): this
# pair detects alike (8.0 and 8.0 per frame over the first 60), as a retrained model would.
MODEL, STABLE, CANARY = "tinydet", "1.1", "2.1"
FRAMES, FPS = 240, 20
WINDOW = "1m"  # covers a whole run: evaluated right after its last scrape
# The p99 of a ~10 ms CPU forward on a shared 2-core machine, with the demo's three processes,
# the collector and Prometheus on it, moves by up to 1.6x between two equal models (1.58
# measured); the default 1.2 is for a model server of its own. The test overrides it as a
# user would (Argo arg, Flagger thresholdRange); the slow canary measures ~3.7.
MAX_P99_RATIO = 2.0
GATES = ("canary-traffic", "p99-latency-ratio", "error-ratio", "detections-drift", "gpu-memory")


class Verdict(NamedTuple):
    argo: str  # Successful | Failed | Inconclusive | Error
    argo_result: list[float]
    flagger_value: float | None
    flagger_pass: bool


def _demo_command() -> list[str]:
    script = pathlib.Path(sys.executable).parent / "visiontel"
    found = str(script) if script.exists() else shutil.which("visiontel")
    return [found] if found else [sys.executable, "-m", "visiontel.cli"]


def _wait(stack: Stack, query: str, expected: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        result = stack.promql(query)
        value = float(result[0]["value"][1]) if result else None
        if value == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{query} = {value}, expected {expected}")


def evaluate_gates(stack: Stack, canary: str) -> dict[str, Verdict]:
    """Every gate for `canary`, as Argo (AnalysisTemplate) and Flagger (MetricTemplates) judge."""
    template = load_yaml(CANARY_DIR / "argo" / "analysis-template.yaml")
    args = {
        "job": JOB, "model-name": MODEL, "canary-version": canary, "window": WINDOW,
        "prometheus-address": f"http://{stack.prometheus}", "max-p99-ratio": str(MAX_P99_RATIO),
    }  # fmt: skip
    argo = {m["name"]: m for m in argo_metrics(template, args)}
    flagger_docs = [
        doc for doc in load_yaml_all(CANARY_DIR / "flagger" / "metric-templates.yaml") if doc
    ]
    canary_spec = load_yaml(CANARY_DIR / "flagger" / "canary.yaml")["spec"]["analysis"]["metrics"]
    model = {
        "name": TARGET, "namespace": NAMESPACE, "target": TARGET, "service": TARGET,
        "ingress": TARGET, "route": TARGET, "interval": WINDOW,
    }  # fmt: skip
    verdicts = {}
    for gate in GATES:
        metric = argo[gate]
        assert metric["provider"]["prometheus"]["address"] == f"http://{stack.prometheus}"
        result = [
            float(s["value"][1]) for s in stack.promql(metric["provider"]["prometheus"]["query"])
        ]
        spec = next(m for m in canary_spec if m["name"] == gate)
        doc = next(d for d in flagger_docs if d["metadata"]["name"] == spec["templateRef"]["name"])
        # The example Canary's variables, pointed at the demo's model and canary.
        assert set(spec["templateVariables"]) == {"model", "canary_version"}
        variables = {"model": MODEL, "canary_version": canary}
        value = flagger_value(
            stack.promql(flagger_render(doc["spec"]["query"], {**model, "variables": variables}))
        )
        limits = {"max": MAX_P99_RATIO} if gate == "p99-latency-ratio" else spec["thresholdRange"]
        verdicts[gate] = Verdict(
            argo_phase(metric, result), result, value, flagger_passes(value, limits)
        )
    return verdicts


def load_yaml_all(path: pathlib.Path) -> list[Any]:
    import yaml

    return list(yaml.safe_load_all(path.read_text()))


def _run_demo(stack: Stack, workdir: pathlib.Path, canary: str, fault: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VISIONTEL_DEMO_"))}
    command = [
        *_demo_command(), "demo", "--otlp-endpoint", f"http://{stack.otlp_http}",
        "--frames", str(FRAMES), "--fps", str(FPS), "--model", MODEL, "--model-version", STABLE,
        "--canary-version", canary, "--canary-fraction", "0.5", "--output", str(workdir),
    ]  # fmt: skip
    if fault:
        command += ["--canary-fault", fault]
    result = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    _wait(stack, f'sum(visiontel_inference_images_total{{job="{JOB}"}})', FRAMES)


def _synthetic_gpu_canary(stack: Stack, canary: str) -> None:
    """A canary process on a GPU at 97 % memory whose forwards fail 30 % of the time,
    sent as cumulative OTLP points twice, so rate() has an increase to see."""
    resource = {
        "service.name": TARGET, "service.namespace": NAMESPACE,
        "service.instance.id": "gpu-node-1",
    }  # fmt: skip
    gpu = {"hw.id": "GPU-0", "hw.name": "NVIDIA A100", "hw.vendor": "NVIDIA"}
    model = {"visiontel.model.name": MODEL, "visiontel.model.version": canary}
    forward = {**model, "visiontel.stage": "inference"}
    for images in (100, 200):
        failed = images * 3 // 7
        post(stack.otlp_http, "metrics", metrics(resource, [
            sum_metric("visiontel.inference.images", "{image}", images, model),
            histogram_metric("visiontel.inference.duration", "s", [0.01] * images, [0.02], forward),
            histogram_metric("visiontel.inference.duration", "s", [0.01] * failed, [0.02],
                             {**forward, "error.type": "RuntimeError"}),
            sum_metric("hw.gpu.memory.usage", "By", 77_600_000_000, gpu, monotonic=False),
            sum_metric("hw.gpu.memory.limit", "By", 80_000_000_000, gpu, monotonic=False),
        ]))  # fmt: skip
        _wait(
            stack,
            f'sum(visiontel_inference_images_total{{visiontel_model_version="{canary}"}})',
            images,
        )
        time.sleep(2)


def _start(workdir: pathlib.Path) -> Stack:
    """otelcol-visiontel with local.yaml and Prometheus with the shipped config, from stack.py."""
    stack = Stack(workdir)
    override = workdir / "no-traces-no-logs.yaml"
    override.write_text(json.dumps({
        "exporters": {"debug": {"verbosity": "basic"}},
        "service": {"pipelines": {
            "traces": {"exporters": ["debug"]}, "logs": {"exporters": ["debug"]},
        }},
    }))  # fmt: skip
    env = stack.collector_env()
    try:
        stack.start_otelcol("otelcol", [CONFIG_DIR / "local.yaml", override], env)
        # The ports it runs on (fresh ones, had one been taken), for Prometheus and the demo.
        stack.otlp_http = env["VISIONTEL_OTLP_HTTP_ENDPOINT"]
        stack.exporter = env["VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT"]
        stack.collector_metrics_port = int(env["VISIONTEL_OTELCOL_METRICS_PORT"])
        stack.start_prometheus()
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module")
def prometheus_binary(otelcol: pathlib.Path) -> None:
    """Only the collector and Prometheus of the stack (no Jaeger, Zipkin or log store)."""
    value = os.environ.get("VISIONTEL_PROMETHEUS", "")
    if not value:
        pytest.skip("needs stack: the canary gates need Prometheus: run `nox -s stack`")
    assert os.access(value, os.X_OK), f"VISIONTEL_PROMETHEUS={value} is not an executable"


@pytest.fixture(scope="module")
def verdicts(
    prometheus_binary: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, Verdict]]]:
    found: dict[str, dict[str, Verdict]] = {}
    for name, canary, fault in (
        ("healthy", CANARY, None),
        ("overdetect", CANARY, "overdetect"),  # each run has a Prometheus of its own
        ("slow", CANARY, "slow"),
    ):
        # A p99 over ~120 forwards is about their second slowest: one stall of another
        # process on this shared 2-core machine can put a healthy canary past the limit
        # (2.74 was seen once in CI). A healthy run whose latency gate fails is run once
        # more, in a fresh stack, and that run is judged; the slow canary (4-5x) on one.
        for attempt in range(2 if name == "healthy" else 1):
            workdir = tmp_path_factory.mktemp(name)
            stack = _start(workdir)
            try:
                _run_demo(stack, workdir, canary, fault)
                found[name] = evaluate_gates(stack, canary)
                if name == "healthy":
                    found["no frames"] = evaluate_gates(stack, "3.0-never-served")
                    _synthetic_gpu_canary(stack, "2.0-gpu")
                    found["gpu and errors"] = evaluate_gates(stack, "2.0-gpu")
            finally:
                stack.stop()
            latency = found[name]["p99-latency-ratio"]
            if name != "healthy" or (latency.argo == "Successful" and latency.flagger_pass):
                break
            print(f"healthy run {attempt + 1}: p99 ratio {latency.argo_result}")
    for name, gates in found.items():  # the figures, for the log of the run
        for gate, verdict in gates.items():
            print(f"{name:<15} {gate:<18} {verdict}")
    yield found


def _phases(gates: dict[str, Verdict]) -> dict[str, tuple[str, bool]]:
    return {gate: (v.argo, v.flagger_pass) for gate, v in gates.items()}


def test_healthy_canary_passes_every_gate(verdicts: dict[str, dict[str, Verdict]]) -> None:
    assert _phases(verdicts["healthy"]) == {gate: ("Successful", True) for gate in GATES}


def test_overdetecting_canary_fails_the_detections_gate(
    verdicts: dict[str, dict[str, Verdict]],
) -> None:
    phases = _phases(verdicts["overdetect"])
    assert phases["detections-drift"] == ("Failed", False)
    assert phases["canary-traffic"] == ("Successful", True)
    assert phases["error-ratio"] == ("Successful", True)


def test_slow_canary_fails_the_latency_gate(verdicts: dict[str, dict[str, Verdict]]) -> None:
    phases = _phases(verdicts["slow"])
    assert phases["p99-latency-ratio"] == ("Failed", False)
    assert phases["detections-drift"] == ("Successful", True)
    assert phases["canary-traffic"] == ("Successful", True)


def test_canary_without_frames_never_passes(verdicts: dict[str, dict[str, Verdict]]) -> None:
    gates = verdicts["no frames"]
    assert gates["canary-traffic"].argo == "Failed" and not gates["canary-traffic"].flagger_pass
    for gate in ("p99-latency-ratio", "error-ratio", "detections-drift"):
        # No data: Argo pauses (Inconclusive), Flagger counts a failed check.
        assert (gates[gate].argo, gates[gate].flagger_pass) == ("Inconclusive", False), gate


def test_gpu_memory_and_error_gates_fail(verdicts: dict[str, dict[str, Verdict]]) -> None:
    gates = verdicts["gpu and errors"]
    assert gates["gpu-memory"].argo_result == [pytest.approx(0.97)]
    assert (gates["gpu-memory"].argo, gates["gpu-memory"].flagger_pass) == ("Failed", False)
    assert (gates["error-ratio"].argo, gates["error-ratio"].flagger_pass) == ("Failed", False)
    assert gates["canary-traffic"].argo == "Successful"
    # The healthy demo canary has no GPU series: the gate reads 0, not "no data".
    assert verdicts["healthy"]["gpu-memory"].argo_result == [0.0]
