"""One trace per frame across three processes, whatever OTEL_PROPAGATORS says.

source --HTTP--> detector --gRPC--> sink, each a separate interpreter configured only by
the OTEL_PROPAGATORS it is started with (tests/propagators_stage.py). For tracecontext,
b3multi, b3 and jaeger (OpenTelemetry's own propagator packages): exactly one trace per
frame spanning the three processes, capture -> detect -> sink as parent and children,
the frame identity intact at every hop, and on the wire the configured format only,
which OpenTelemetry's own ``propagate.extract`` reads as we do.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections import defaultdict
from typing import Any

import pytest

STAGE = str(pathlib.Path(__file__).with_name("propagators_stage.py"))
FRAMES = 4
STREAM = "rtsp://cam-4/main"  # the stage's stream id, credentials stripped

# OTEL_PROPAGATORS -> (the trace keys that must be on the wire, keys that must not be)
CONFIGURATIONS = {
    "tracecontext": ({"traceparent"}, {"x-b3-traceid", "b3", "uber-trace-id"}),
    "b3multi": ({"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}, {"traceparent", "b3"}),
    "b3": ({"b3"}, {"traceparent", "x-b3-traceid", "uber-trace-id"}),
    "jaeger": ({"uber-trace-id"}, {"traceparent", "x-b3-traceid", "b3"}),
}


def start(env: dict[str, str], *args: object) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, STAGE, *map(str, args)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        proc.wait(timeout=30)
        pytest.fail(f"{args[0]} did not start: {line!r}")
    return proc, int(line.split()[1])


def read(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def run_pipeline(out: pathlib.Path, propagators: str) -> None:
    env = {**os.environ, "OTEL_PROPAGATORS": propagators}
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER"):  # nothing but the propagator
        env.pop(name, None)
    started: list[subprocess.Popen[str]] = []
    try:
        sink, sink_port = start(env, "sink", out, FRAMES)
        started.append(sink)
        detector, detector_port = start(env, "detector", out, FRAMES, sink_port)
        started.append(detector)
        source = subprocess.run(
            [sys.executable, STAGE, "source", str(out), str(FRAMES), str(detector_port)],
            env=env,
            timeout=120,
            check=False,
        )
        assert source.returncode == 0
        assert detector.wait(timeout=60) == 0
        assert sink.wait(timeout=60) == 0
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.mark.parametrize("propagators", list(CONFIGURATIONS))
def test_one_trace_per_frame_across_three_processes(tmp_path, propagators):
    run_pipeline(tmp_path, propagators)
    spans = [
        span for role in ("source", "detector", "sink") for span in read(tmp_path / f"{role}.jsonl")
    ]
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        traces[span["context"]["trace_id"]].append(span)
    captures = [s for s in spans if s["name"] == "capture"]
    assert len(captures) == FRAMES
    assert len(traces) == FRAMES, f"{len(traces)} traces for {FRAMES} frames"
    sequences = set()
    for capture in captures:
        members = {s["name"]: s for s in traces[capture["context"]["trace_id"]]}
        assert sorted(members) == ["capture", "detect", "sink"]
        assert {s["resource"]["attributes"]["service.name"] for s in members.values()} == {
            "source",
            "detector",
            "sink",
        }
        # parent and children: capture -> detect -> sink
        assert capture["parent_id"] is None
        assert members["detect"]["parent_id"] == capture["context"]["span_id"]
        assert members["sink"]["parent_id"] == members["detect"]["context"]["span_id"]
        # the frame identity, intact at every hop
        sequence = capture["attributes"]["visiontel.frame.sequence"]
        sequences.add(sequence)
        for hop in ("detect", "sink"):
            attributes = members[hop]["attributes"]
            assert attributes["visiontel.frame.sequence"] == sequence
            assert attributes["visiontel.frame.stream_id"] == STREAM
            assert attributes["visiontel.frame.age"] > 0
    assert sequences == set(range(FRAMES))

    # The configured format, and only it, travelled (plus the frame identity).
    # OpenTelemetry's own propagate.extract (any instrumentation library) reads the same.
    wanted, unwanted = CONFIGURATIONS[propagators]
    records = read(tmp_path / "detector.wire.jsonl") + read(tmp_path / "sink.wire.jsonl")
    assert len(records) == 2 * FRAMES
    for record in records:
        keys = set(record["keys"])
        assert wanted <= keys and not unwanted & keys, keys
        assert "visiontel-frame" in keys
        assert record["otel_agrees"] is True
    frames = [r["frame"] for r in read(tmp_path / "sink.wire.jsonl")]
    assert sorted(f[1] for f in frames) == list(range(FRAMES))
    assert {f[0] for f in frames} == {STREAM}
