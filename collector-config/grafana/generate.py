"""Write the Grafana dashboards of this directory from the compact definitions below.

    python collector-config/grafana/generate.py          # rewrite dashboards/*.json
    python collector-config/grafana/generate.py --check  # exit 1 if a file is stale

The JSON files are committed (Grafana provisions them as they are); this script is
their source, so every panel is built the same way: Prometheus datasource by uid,
exemplars on for latency panels, the $model / $instance variables. The tests run
--check and parse every PromQL expression with promtool.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from generated import write_or_check  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "dashboards"
PROMETHEUS = {"type": "prometheus", "uid": "visiontel-prometheus"}

Panel = dict[str, Any]


def _target(expr: str, legend: str = "", *, ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {
        "datasource": PROMETHEUS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
        **extra,
    }


def timeseries(
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    *,
    exemplars: bool = False,
    description: str = "",
) -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            }
        },
        "targets": [
            _target(expr, legend, ref=chr(ord("A") + i), exemplar=exemplars)
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def heatmap(title: str, expr: str, unit: str, description: str = "") -> Panel:
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "options": {
            "calculate": False,
            "yAxis": {"unit": unit},
            "cellGap": 1,
            "color": {"scheme": "Oranges", "mode": "scheme"},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        },
        "targets": [_target(expr, "{{le}}", format="heatmap", exemplar=True)],
    }


def stat(title: str, expr: str, unit: str) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [_target(expr, instant=True)],
    }


def variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROMETHEUS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
        "sort": 1,
    }


def dashboard(
    uid: str, title: str, description: str, panels: list[Panel], variables: list[dict[str, Any]]
) -> dict[str, Any]:
    laid_out = []
    for index, definition in enumerate(panels):
        width = 24 if definition["type"] == "heatmap" else 12
        panel = {"id": index + 1, **definition}
        panel["gridPos"] = {
            "h": 8,
            "w": width,
            "x": 0 if width == 24 else 12 * (index % 2),
            "y": 8 * index,
        }
        laid_out.append(panel)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["visiontel"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": laid_out,
    }


RATE = "$__rate_interval"
INSTANCE = variable("instance", "label_values(hw_gpu_memory_limit_bytes, instance)", "Node")
MODEL = variable(
    "model", "label_values(visiontel_inference_images_total, visiontel_model_name)", "Model"
)
STAGE = variable(
    "stage", "label_values(visiontel_inference_duration_seconds_bucket, visiontel_stage)", "Stage"
)
GPU_SEL = 'instance=~"$instance"'
MODEL_SEL = 'visiontel_model_name=~"$model"'


def gpu_fleet() -> dict[str, Any]:
    return dashboard(
        "visiontel-gpu-fleet",
        "visiontel / GPU fleet",
        "Every GPU of every node: memory, utilisation, temperature, power, throttling, errors.",
        [
            timeseries(
                "GPU memory used",
                [
                    (
                        f"visiontel:hw_gpu_memory:used_ratio{{{GPU_SEL}}}",
                        "{{instance}} {{hw_name}} {{hw_id}}",
                    )
                ],
                "percentunit",
                description="Alert VisiontelGPUMemoryHigh fires above 90 %.",
            ),
            timeseries(
                "GPU utilisation (general task)",
                [
                    (
                        f'hw_gpu_utilization_ratio{{{GPU_SEL},hw_gpu_task="general"}}',
                        "{{instance}} {{hw_id}}",
                    )
                ],
                "percentunit",
            ),
            timeseries(
                "GPU temperature",
                [
                    (
                        f'hw_temperature_celsius{{{GPU_SEL},hw_sensor_location="gpu"}}',
                        "{{instance}} {{hw_parent}}",
                    )
                ],
                "celsius",
            ),
            timeseries(
                "Power", [(f"hw_power_watts{{{GPU_SEL}}}", "{{instance}} {{hw_id}}")], "watt"
            ),
            timeseries(
                "Active throttle reasons",
                [
                    (
                        f"nvidia_gpu_clock_event_reason_ratio{{{GPU_SEL}}} == 1",
                        "{{instance}} {{hw_id}} {{nvidia_gpu_clock_event_reason}}",
                    )
                ],
                "short",
                description="NVML clock-event reasons currently active (1 = active).",
            ),
            timeseries(
                "ECC errors",
                [
                    (
                        f"sum by (instance, hw_id, error_type) (increase(hw_errors_total{{{GPU_SEL}}}[{RATE}]))",
                        "{{instance}} {{hw_id}} {{error_type}}",
                    )
                ],
                "short",
            ),
            timeseries(
                "GPU memory per process",
                [
                    (
                        f"nvidia_gpu_process_memory_usage_bytes{{{GPU_SEL}}}",
                        "{{instance}} {{hw_id}} pid {{process_pid}}",
                    )
                ],
                "bytes",
            ),
            stat("GPUs reporting", f"count(hw_gpu_memory_limit_bytes{{{GPU_SEL}}})", "short"),
        ],
        [INSTANCE],
    )


def inference_stages() -> dict[str, Any]:
    sel = f'{MODEL_SEL},visiontel_stage=~"$stage"'
    return dashboard(
        "visiontel-inference-stages",
        "visiontel / inference stages",
        "Where inference time goes: per-stage latency distribution, with trace exemplars.",
        [
            heatmap(
                "Stage latency distribution",
                f"sum by (le) (rate(visiontel_inference_duration_seconds_bucket{{{sel}}}[{RATE}]))",
                "s",
                "Click an exemplar to open the trace of that forward in Jaeger.",
            ),
            timeseries(
                "p99 by stage",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, visiontel_stage) "
                        f"(rate(visiontel_inference_duration_seconds_bucket{{{sel}}}[{RATE}])))",
                        "{{visiontel_stage}}",
                    )
                ],
                "s",
                exemplars=True,
            ),
            timeseries(
                "p50 by stage",
                [
                    (
                        "histogram_quantile(0.5, sum by (le, visiontel_stage) "
                        f"(rate(visiontel_inference_duration_seconds_bucket{{{sel}}}[{RATE}])))",
                        "{{visiontel_stage}}",
                    )
                ],
                "s",
            ),
            timeseries(
                "Images per second",
                [
                    (
                        f"sum by (visiontel_model_name, visiontel_model_version) "
                        f"(rate(visiontel_inference_images_total{{{MODEL_SEL}}}[{RATE}]))",
                        "{{visiontel_model_name}} {{visiontel_model_version}}",
                    )
                ],
                "short",
            ),
            timeseries(
                "Detections per image (mean)",
                [
                    (
                        f"visiontel:inference_detections_per_image:mean_5m{{{MODEL_SEL}}}",
                        "{{visiontel_model_name}} {{visiontel_model_version}}",
                    )
                ],
                "short",
            ),
        ],
        [MODEL, STAGE],
    )


def frame_latency() -> dict[str, Any]:
    return dashboard(
        "visiontel-frame-latency",
        "visiontel / pipeline frame latency",
        "Capture-to-result latency of frames across the pipeline, and RED metrics per service.",
        [
            heatmap(
                "Frame latency distribution",
                f"sum by (le) (rate(visiontel_frame_latency_seconds_bucket[{RATE}]))",
                "s",
            ),
            timeseries(
                "Frame latency p50 / p95 / p99",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(visiontel_frame_latency_seconds_bucket[{RATE}])))",
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ],
                "s",
                exemplars=True,
            ),
            timeseries(
                "Spans per second by service",
                [
                    (
                        f"sum by (service_name) (rate(traces_span_metrics_calls_total[{RATE}]))",
                        "{{service_name}}",
                    )
                ],
                "reqps",
            ),
            timeseries(
                "Error ratio by service",
                [("visiontel:span_error_ratio:rate5m", "{{service_name}}")],
                "percentunit",
            ),
            timeseries(
                "Span duration p99 by service",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, service_name) "
                        f"(rate(traces_span_metrics_duration_seconds_bucket[{RATE}])))",
                        "{{service_name}}",
                    )
                ],
                "s",
                exemplars=True,
            ),
        ],
        [],
    )


def canary() -> dict[str, Any]:
    inference = f'{MODEL_SEL},visiontel_stage="inference"'
    return dashboard(
        "visiontel-canary",
        "visiontel / canary vs stable",
        "Every version of a model side by side. The stable version is the one serving most "
        "images; alert VisiontelCanaryLatencyRegression compares the others to it.",
        [
            timeseries(
                "Forward p99 per version",
                [
                    (
                        f"visiontel:inference_duration_seconds:p99_5m{{{inference}}}",
                        "{{visiontel_model_name}} {{visiontel_model_version}}",
                    ),
                    (
                        f"visiontel:inference_duration_seconds:p99_5m:stable{{{MODEL_SEL}}}",
                        "{{visiontel_model_name}} stable",
                    ),
                ],
                "s",
            ),
            timeseries(
                "p99 relative to stable",
                [
                    (
                        f"visiontel:inference_duration_seconds:p99_5m{{{inference}}} "
                        "/ on (visiontel_model_name) group_left () "
                        f"visiontel:inference_duration_seconds:p99_5m:stable{{{MODEL_SEL}}}",
                        "{{visiontel_model_name}} {{visiontel_model_version}}",
                    )
                ],
                "percentunit",
                description="1.2 (120 %) is the alert threshold.",
            ),
            timeseries(
                "Traffic share",
                [
                    (
                        f"visiontel:inference_images:rate5m{{{MODEL_SEL}}} / on (visiontel_model_name) "
                        f"group_left () sum by (visiontel_model_name) "
                        f"(visiontel:inference_images:rate5m{{{MODEL_SEL}}})",
                        "{{visiontel_model_name}} {{visiontel_model_version}}",
                    )
                ],
                "percentunit",
            ),
            timeseries(
                "Detections per image",
                [
                    (
                        f"visiontel:inference_detections_per_image:mean_5m{{{MODEL_SEL}}}",
                        "{{visiontel_model_name}} {{visiontel_model_version}}",
                    ),
                    (
                        f"visiontel:inference_detections_per_image:mean_5m:avg_1d{{{MODEL_SEL}}}",
                        "{{visiontel_model_name}} {{visiontel_model_version}} daily mean",
                    ),
                ],
                "short",
            ),
            timeseries(
                "Forward latency heat by version (p50)",
                [
                    (
                        "histogram_quantile(0.5, sum by (le, visiontel_model_name, visiontel_model_version) "
                        f"(rate(visiontel_inference_duration_seconds_bucket{{{inference}}}[{RATE}])))",
                        "{{visiontel_model_name}} {{visiontel_model_version}}",
                    )
                ],
                "s",
                exemplars=True,
            ),
        ],
        [MODEL],
    )


DASHBOARDS = {
    "gpu-fleet.json": gpu_fleet,
    "inference-stages.json": inference_stages,
    "frame-latency.json": frame_latency,
    "canary-vs-stable.json": canary,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    return write_or_check({OUT / name: text for name, text in render().items()}, argv, __file__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
