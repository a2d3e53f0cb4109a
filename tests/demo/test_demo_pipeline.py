"""Acceptance: `visiontel demo --frames 50` on the embedded default, checked from its files.

One run (module fixture, about half a minute on two busy cores, most of it importing torch)
serves every test here: the files must hold one trace per frame across the three
services with the stage spans, the metrics of every instrumentation and the logs.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
from typing import Any

import pytest
from demo_support import clean_env, run_visiontel

FRAMES = 50
SERVICES = ("frame-source", "detector", "tracker")
FRAME_SPANS = (
    "capture", "detect", "preprocess", "inference tinydet", "backbone", "neck", "head", "nms",
    "postprocess", "send result", "track", "associate",
)  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("demo")
    result = run_visiontel("demo", "--frames", str(FRAMES), cwd=cwd, env=clean_env())
    runs = list((cwd / "visiontel-output").iterdir()) if (cwd / "visiontel-output").exists() else []
    return {"result": result, "runs": runs}


def _lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for item in items:
        value = item["value"]
        out[item["key"]] = next(iter(value.values())) if value else None
    return out


def _spans(run_dir: pathlib.Path) -> list[dict[str, Any]]:
    spans = []
    for service in SERVICES:
        for request in _lines(run_dir / service / "traces.jsonl"):
            for rs in request["resourceSpans"]:
                resource = _attrs(rs["resource"]["attributes"])
                assert resource["service.name"] == service
                for scope in rs["scopeSpans"]:
                    for span in scope["spans"]:
                        spans.append(
                            {
                                **span,
                                "service": service,
                                "attrs": _attrs(span.get("attributes", [])),
                            }
                        )
    return spans


@pytest.fixture(scope="module")
def run_dir(demo: dict[str, Any]) -> pathlib.Path:
    result = demo["result"]
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert len(demo["runs"]) == 1, demo["runs"]
    return demo["runs"][0]


def test_exit_code_progress_and_waterfall(demo: dict[str, Any], run_dir: pathlib.Path) -> None:
    out = demo["result"].stdout
    assert "Traceback" not in out + demo["result"].stderr
    assert re.search(rf"frames {FRAMES}/{FRAMES} +[0-9.]+ fps +latency p50 +[0-9.]+ ms +p99", out)
    waterfall = out[out.index("Trace waterfall") :]
    rows = [line for line in waterfall.splitlines()[2:] if "|" in line and " ms" in line]
    for service in SERVICES:
        assert any(line.strip().startswith(service) for line in rows), (service, waterfall)
    for name in ("capture", "detect", "preprocess", "inference tinydet", "nms", "track"):
        assert any(f" {name} " in line for line in rows), (name, waterfall)
    assert "Per-stage latency" in out
    assert "no GPU found" in out or "GPU (last reading)" in out


def test_one_trace_per_frame_across_three_services(run_dir: pathlib.Path) -> None:
    spans = _spans(run_dir)
    by_trace: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for span in spans:
        assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"]), span["traceId"]
        assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"]), span["spanId"]
        by_trace[span["traceId"]].append(span)
    roots = [s for s in spans if s["name"] == "capture"]
    assert len(roots) == FRAMES
    # OTLP/JSON writes 64-bit integers as strings.
    sequences = sorted(int(r["attrs"]["visiontel.frame.sequence"]) for r in roots)
    assert sequences == list(range(FRAMES))
    assert len({r["traceId"] for r in roots}) == FRAMES  # each frame its own trace
    for root in roots:
        members = by_trace[root["traceId"]]
        assert {s["service"] for s in members} == set(SERVICES)
        ids = {s["spanId"] for s in members}
        orphans = [
            s["name"] for s in members if s.get("parentSpanId") and s["parentSpanId"] not in ids
        ]
        assert not orphans, orphans
        names = collections.Counter(s["name"] for s in members)
        for name in FRAME_SPANS:
            assert names[name] == 1, (name, names)


def test_stage_spans_carry_model_and_stage(run_dir: pathlib.Path) -> None:
    spans = _spans(run_dir)
    stages = collections.Counter(
        s["attrs"].get("visiontel.stage") for s in spans if s["service"] == "detector"
    )
    assert stages["preprocess"] == FRAMES
    assert stages["inference"] == FRAMES
    assert stages["postprocess"] == FRAMES
    inference = [s for s in spans if s["name"] == "inference tinydet"]
    assert {s["attrs"]["visiontel.model.version"] for s in inference} == {"1.0"}
    detect = {s["spanId"]: s for s in spans if s["name"] == "detect"}
    # The model's span nests under the frame's detect span: context crossed two hops.
    assert all(s["parentSpanId"] in detect for s in inference)


def _metrics(run_dir: pathlib.Path, service: str) -> dict[str, list[dict[str, Any]]]:
    """Data points of each metric in the last export (cumulative: the totals)."""
    last: dict[str, list[dict[str, Any]]] = {}
    for request in _lines(run_dir / service / "metrics.jsonl"):
        for rm in request["resourceMetrics"]:
            for scope in rm["scopeMetrics"]:
                for metric in scope["metrics"]:
                    data = metric.get("histogram") or metric.get("sum") or metric.get("gauge")
                    last[metric["name"]] = data["dataPoints"]
    return last


def test_metrics_of_every_instrumentation(run_dir: pathlib.Path) -> None:
    detector = _metrics(run_dir, "detector")
    images = sum(int(p["asInt"]) for p in detector["visiontel.inference.images"])
    assert images == FRAMES
    durations = detector["visiontel.inference.duration"]
    by_stage = {_attrs(p["attributes"])["visiontel.stage"]: int(p["count"]) for p in durations}
    assert by_stage["inference"] == FRAMES and by_stage["preprocess"] == FRAMES
    assert "visiontel.inference.detections" in detector
    tracker = _metrics(run_dir, "tracker")
    latency = tracker["visiontel.frame.latency"]
    assert sum(int(p["count"]) for p in latency) == FRAMES
    assert all(float(p["sum"]) > 0 for p in latency)
    source = _metrics(run_dir, "frame-source")
    assert sum(int(p["asInt"]) for p in source["visiontel.demo.frames.sent"]) == FRAMES


def test_logs_join_their_frame_traces(run_dir: pathlib.Path) -> None:
    traces = {s["traceId"] for s in _spans(run_dir) if s["name"] == "capture"}
    records = [
        record
        for request in _lines(run_dir / "tracker" / "logs.jsonl")
        for rl in request["resourceLogs"]
        for scope in rl["scopeLogs"]
        for record in scope["logRecords"]
    ]
    per_frame = [r for r in records if re.match(r"frame \d+: ", r["body"]["stringValue"])]
    assert len(per_frame) == FRAMES
    assert {r["traceId"] for r in per_frame} == traces
    detector_logs = (run_dir / "detector" / "logs.jsonl").read_text()
    assert "serving tinydet" in detector_logs


def test_files_are_what_the_upstream_otlp_json_file_exporter_writes(run_dir: pathlib.Path) -> None:
    # Decoded and re-encoded by the upstream OTLP/JSON codec (what
    # opentelemetry-exporter-otlp-json-file writes with), every line comes back key for key.
    from opentelemetry.proto_json.collector.logs.v1.logs_service import ExportLogsServiceRequest
    from opentelemetry.proto_json.collector.metrics.v1.metrics_service import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto_json.collector.trace.v1.trace_service import (
        ExportTraceServiceRequest,
    )

    decoders = {
        "traces": ExportTraceServiceRequest,
        "metrics": ExportMetricsServiceRequest,
        "logs": ExportLogsServiceRequest,
    }
    for service in SERVICES:
        for signal, decoder in decoders.items():
            lines = _lines(run_dir / service / f"{signal}.jsonl")
            assert lines, (service, signal)
            for line in lines:
                assert decoder.from_dict(line).to_dict() == line, (service, signal)
