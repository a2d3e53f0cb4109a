"""What visiontel emits over OTLP, and the name each gets in Prometheus.

The Prometheus names are not computed here: test_prometheus.py sends every metric
to the real collector and reads them back from its prometheus exporter, so this table
(and the copy in docs/collector.md) is checked against the collector itself. The rules
and dashboards may only use names from this table.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    otel: str
    kind: str  # counter | updown | gauge | histogram
    unit: str
    prometheus: str  # base name; histograms add _bucket, _sum, _count


GPU = {"hw.id": "GPU-0", "hw.name": "NVIDIA A100", "hw.vendor": "NVIDIA"}
MODEL = {
    "visiontel.model.name": "yolo",
    "visiontel.model.version": "v1",
    "visiontel.stage": "inference",
}

CATALOG: dict[Metric, dict[str, str]] = {
    # visiontel-torch
    Metric(
        "visiontel.inference.duration", "histogram", "s", "visiontel_inference_duration_seconds"
    ): MODEL,
    Metric(
        "visiontel.inference.images", "counter", "{image}", "visiontel_inference_images_total"
    ): MODEL,
    Metric(
        "visiontel.inference.detections",
        "histogram",
        "{detection}",
        "visiontel_inference_detections",
    ): MODEL,
    Metric("visiontel.layer.duration", "histogram", "s", "visiontel_layer_duration_seconds"): MODEL,
    # visiontel-propagation
    Metric("visiontel.frame.latency", "histogram", "s", "visiontel_frame_latency_seconds"): {},
    Metric("visiontel.frames.received", "counter", "{frame}", "visiontel_frames_received_total"): {
        "visiontel.stream.id": "camera-0"
    },
    Metric("visiontel.frames.lost", "counter", "{frame}", "visiontel_frames_lost_total"): {
        "visiontel.stream.id": "camera-0"
    },
    Metric("visiontel.batcher.queue.depth", "updown", "{frame}", "visiontel_batcher_queue_depth"): {
        "visiontel.batcher.name": "detector"
    },
    Metric(
        "visiontel.batcher.wait.duration",
        "histogram",
        "s",
        "visiontel_batcher_wait_duration_seconds",
    ): {"visiontel.batcher.name": "detector"},
    Metric(
        "visiontel.propagation.rejected",
        "counter",
        "{value}",
        "visiontel_propagation_rejected_total",
    ): {},
    # visiontel-gpu: OpenTelemetry hardware semantic conventions
    Metric("hw.gpu.utilization", "gauge", "1", "hw_gpu_utilization_ratio"): {
        **GPU,
        "hw.gpu.task": "general",
    },
    Metric("hw.gpu.memory.usage", "updown", "By", "hw_gpu_memory_usage_bytes"): GPU,
    Metric("hw.gpu.memory.limit", "updown", "By", "hw_gpu_memory_limit_bytes"): GPU,
    Metric("hw.gpu.memory.utilization", "gauge", "1", "hw_gpu_memory_utilization_ratio"): GPU,
    Metric("hw.gpu.io", "counter", "By", "hw_gpu_io_bytes_total"): {
        **GPU,
        "network.io.direction": "receive",
    },
    Metric("hw.power", "gauge", "W", "hw_power_watts"): {**GPU, "hw.type": "gpu"},
    Metric("hw.energy", "counter", "J", "hw_energy_joules_total"): {**GPU, "hw.type": "gpu"},
    Metric("hw.temperature", "gauge", "Cel", "hw_temperature_celsius"): {
        "hw.id": "GPU-0/temperature/gpu",
        "hw.parent": "GPU-0",
        "hw.sensor_location": "gpu",
    },
    Metric("hw.errors", "counter", "{error}", "hw_errors_total"): {
        **GPU,
        "hw.type": "gpu",
        "error.type": "uncorrected",
    },
    Metric("hw.status", "updown", "1", "hw_status"): {**GPU, "hw.type": "gpu", "hw.state": "ok"},
    # visiontel-gpu: NVIDIA extensions
    Metric("nvidia.gpu.clock.speed", "gauge", "Hz", "nvidia_gpu_clock_speed_hertz"): {
        **GPU,
        "nvidia.gpu.clock.domain": "sm",
    },
    Metric("nvidia.gpu.clock.event_reason", "gauge", "1", "nvidia_gpu_clock_event_reason_ratio"): {
        **GPU,
        "nvidia.gpu.clock.event_reason": "hw_thermal_slowdown",
    },
    Metric(
        "nvidia.gpu.memory_controller.utilization",
        "gauge",
        "1",
        "nvidia_gpu_memory_controller_utilization_ratio",
    ): GPU,
    Metric(
        "nvidia.gpu.pcie.throughput", "gauge", "By/s", "nvidia_gpu_pcie_throughput_bytes_per_second"
    ): GPU,
    Metric("nvidia.gpu.pcie.replays", "counter", "{replay}", "nvidia_gpu_pcie_replays_total"): GPU,
    Metric(
        "nvidia.gpu.memory.remapped_rows", "updown", "{row}", "nvidia_gpu_memory_remapped_rows"
    ): GPU,
    Metric(
        "nvidia.gpu.process.memory.usage", "updown", "By", "nvidia_gpu_process_memory_usage_bytes"
    ): {**GPU, "process.pid": "4242"},
    Metric(
        "nvidia.gpu.process.utilization", "gauge", "1", "nvidia_gpu_process_utilization_ratio"
    ): {**GPU, "process.pid": "4242"},
    Metric(
        "visiontel.gpu.collection.errors",
        "counter",
        "{error}",
        "visiontel_gpu_collection_errors_total",
    ): {},
    # spanmetrics connector of gateway.yaml (namespace traces.span.metrics, unit s)
    Metric("traces.span.metrics.calls", "counter", "{call}", "traces_span_metrics_calls_total"): {
        "service.name": "detector",
        "span.name": "detect",
        "status.code": "STATUS_CODE_ERROR",
    },
    Metric(
        "traces.span.metrics.duration", "histogram", "s", "traces_span_metrics_duration_seconds"
    ): {"service.name": "detector", "span.name": "detect", "status.code": "STATUS_CODE_UNSET"},
}


def prometheus_names() -> set[str]:
    """Every series name a rule or dashboard may select."""
    names: set[str] = set()
    for metric in CATALOG:
        if metric.kind == "histogram":
            names.update(metric.prometheus + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(metric.prometheus)
    return names
