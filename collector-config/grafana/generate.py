"""Write the Grafana dashboards of this directory from the definitions below.

    python collector-config/grafana/generate.py          # rewrite dashboards/*.json
    python collector-config/grafana/generate.py --check  # exit 1 if a file is stale

The JSON files are committed (Grafana provisions them as they are); this script is
their source. Panels are built with grafana-foundation-sdk through panels.py, so every
panel is built the same way: Prometheus datasource by uid, exemplars on for latency
panels, the $model / $instance / $stage variables. The tests run --check, parse every
PromQL expression with promtool, and (tests/collector/test_dashboards_on_data.py) run
every panel's queries against a real Prometheus after a demo run.
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from generated import write_or_check  # noqa: E402

try:
    from panels import dashboard_json, heatmap_panel, stat, timeseries, variable
except ModuleNotFoundError as exc:  # the SDK, which `nox -s collector` installs
    sys.exit(f"{exc}: pip install 'grafana-foundation-sdk==1769699379!11.6.0' (docs/collector.md)")

OUT = HERE / "dashboards"


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


def gpu_fleet() -> str:
    return dashboard_json(
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
                description="Alert VisiontelGPUMemoryHigh fires above 90 % (red line).",
                threshold=0.9,
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
                description="Alert VisiontelGPUTemperatureHigh fires above 85 °C (red line).",
                threshold=85,
            ),
            timeseries(
                "Power", [(f"hw_power_watts{{{GPU_SEL}}}", "{{instance}} {{hw_id}}")], "watt"
            ),
            timeseries(
                "Active throttle reasons",
                [
                    (
                        f"nvidia_gpu_clock_event_reason_ratio{{{GPU_SEL}}}",
                        "{{instance}} {{hw_id}} {{nvidia_gpu_clock_event_reason}}",
                    )
                ],
                "short",
                # Every reason, not only the active ones (`== 1`): a GPU with none active
                # would show "No data", which reads as broken collection.
                description="NVML clock-event reasons, 1 = active, 0 = not; sort the "
                "legend by max to see which were active. sw_power_cap alone is normal "
                "under load.",
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


def inference_stages() -> str:
    sel = f'{MODEL_SEL},visiontel_stage=~"$stage"'
    return dashboard_json(
        "visiontel-inference-stages",
        "visiontel / inference stages",
        "Where inference time goes: per-stage latency distribution, with trace exemplars.",
        [
            heatmap_panel(
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


def frame_latency() -> str:
    return dashboard_json(
        "visiontel-frame-latency",
        "visiontel / pipeline frame latency",
        "Capture-to-result latency of frames across the pipeline, and RED metrics per service.",
        [
            heatmap_panel(
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
                description="Alert VisiontelFrameLatencyHigh fires when p99 stays above 1 s "
                "(red line).",
                threshold=1,
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
                description="Alert VisiontelErrorRateHigh fires above 5 % (red line).",
                threshold=0.05,
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
            timeseries(
                "Frames per second by stream, at each hop",
                [("visiontel:frames_received:rate5m", "{{job}} {{visiontel_stream_id}}")],
                "short",
                description="visiontel.frames.received: every frame a hop extracted, sampled "
                "or not.",
            ),
            timeseries(
                "Frames lost by stream, at each hop",
                [("visiontel:frames_lost:ratio_5m", "{{job}} {{visiontel_stream_id}}")],
                "percentunit",
                description="Sequence gaps seen by a hop (reordering within its window is not "
                "loss). Alert VisiontelFramesLost fires above 1 % (red line).",
                threshold=0.01,
            ),
            timeseries(
                "Batcher queue depth",
                [
                    (
                        "max by (job, visiontel_batcher_name) (visiontel_batcher_queue_depth)",
                        "{{job}} {{visiontel_batcher_name}}",
                    )
                ],
                "short",
            ),
            timeseries(
                "Batcher wait p99",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, job, visiontel_batcher_name) "
                        f"(rate(visiontel_batcher_wait_duration_seconds_bucket[{RATE}])))",
                        "{{job}} {{visiontel_batcher_name}}",
                    )
                ],
                "s",
                description="From a frame's arrival in the batcher to its batch being taken.",
            ),
        ],
        [],
    )


def canary() -> str:
    inference = f'{MODEL_SEL},visiontel_stage="inference"'
    return dashboard_json(
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
                description="1.2 (120 %, red line) is the alert threshold.",
                threshold=1.2,
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
    return {name: build() for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    return write_or_check({OUT / name: text for name, text in render().items()}, argv, __file__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
