"""End to end: a multi-process pipeline -> otelcol-visiontel (local.yaml) -> Jaeger and
Prometheus, read back through each backend's own query API.

Loki cannot be obtained here (docs/collector.md says why), so the logs leg goes to
VictoriaLogs (the collector runs local.yaml with the shipped logs-victorialogs.yaml
overlay) and is read back with LogsQL. Run with `nox -s stack`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from collector_support import CONFIG_DIR, Stack, eventually
from e2e_pipeline import CAMERA_URL, run_pipeline

pytestmark = pytest.mark.e2e
FRAMES = 5


@pytest.fixture(scope="module")
def stack(stack_binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def trace_ids(stack: Stack) -> list[str]:
    return run_pipeline(stack.otlp_grpc, FRAMES)


def test_jaeger_has_each_frame_with_spans_from_every_process(
    stack: Stack, trace_ids: list[str]
) -> None:
    for trace_id in trace_ids:

        def services() -> set[str] | None:
            trace = stack.jaeger_trace(trace_id)
            found = {p["serviceName"] for p in trace.get("processes", {}).values()}
            return found if found >= {"e2e-decoder", "e2e-detector", "e2e-tracker"} else None

        assert eventually(services, f"trace {trace_id} in Jaeger")
        trace = stack.jaeger_trace(trace_id)
        names = {span["operationName"] for span in trace["spans"]}
        assert {"decode", "detect", "track"} <= names
        by_id = {span["spanID"]: span for span in trace["spans"]}
        detect = next(s for s in trace["spans"] if s["operationName"] == "detect")
        parents = [r["spanID"] for r in detect["references"] if r["refType"] == "CHILD_OF"]
        assert parents and by_id[parents[0]]["operationName"] == "decode"
        # local.yaml stripped the camera credentials before Jaeger stored anything.
        tags = {
            t["key"]: t["value"]
            for t in next(s for s in trace["spans"] if s["operationName"] == "decode")["tags"]
        }
        assert tags["visiontel.camera.url"] == "rtsp://10.9.8.7:554/live"
        assert "Cam3raPa55" not in json.dumps(trace)


def test_prometheus_has_inference_and_frame_metrics(stack: Stack, trace_ids: list[str]) -> None:
    def count(query: str) -> float | None:
        result = stack.promql(query)
        return float(result[0]["value"][1]) if result else None

    images = eventually(
        lambda: count('sum(visiontel_inference_images_total{visiontel_model_name="e2e-yolo"})'),
        "visiontel_inference_images_total in Prometheus",
    )
    assert images == FRAMES
    forwards = eventually(
        lambda: count(
            'sum(visiontel_inference_duration_seconds_count{job="e2e-detector",'
            'visiontel_stage="inference",visiontel_model_version="v3"})'
        ),
        "visiontel_inference_duration_seconds_count in Prometheus",
    )
    assert forwards == FRAMES
    frames = eventually(
        lambda: count('sum(visiontel_frame_latency_seconds_count{job="e2e-tracker"})'),
        "visiontel_frame_latency_seconds_count in Prometheus",
    )
    assert frames == FRAMES
    # The shipped rules load into the real server and evaluate without errors.
    groups = stack.get_json(f"http://{stack.prometheus}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    shipped = yaml.safe_load(
        (CONFIG_DIR / "prometheus" / "rules" / "visiontel.rules.yaml").read_text()
    )
    names = [r.get("record") or r["alert"] for group in shipped["groups"] for r in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(names)
    assert all(rule["health"] in ("ok", "unknown") for rule in rules), rules


def test_logs_carry_the_frame_trace_id(stack: Stack, trace_ids: list[str]) -> None:
    # The detector logs once per frame; read back through VictoriaLogs' LogsQL API.
    def records() -> list[dict[str, Any]] | None:
        found = stack.victorialogs.query('"service.name":="e2e-detector"')
        return found if len(found) >= FRAMES else None

    logged = eventually(records, f"{FRAMES} log records in VictoriaLogs")
    assert len(logged) == FRAMES
    assert {r["trace_id"] for r in logged} == set(trace_ids)
    for record in logged:
        assert record["_msg"].startswith("detected ")
        assert "rtsp://10.9.8.7:554/live" in record["_msg"]
        assert record["visiontel.camera.url"] == "rtsp://10.9.8.7:554/live"
        assert "Cam3raPa55" not in json.dumps(record)
        # logs-victorialogs.yaml's VL-Stream-Fields: one stream per service, the
        # per-process id an ordinary field.
        assert record["_stream"] == '{service.name="e2e-detector"}'
        assert record["service.instance.id"] == "e2e-detector-1"
    assert CAMERA_URL not in json.dumps(logged)
