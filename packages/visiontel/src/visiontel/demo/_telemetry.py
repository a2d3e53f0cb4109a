"""OpenTelemetry SDK set-up for one demo process: traces, metrics and logs.

With no OTLP endpoint every signal goes to ``<run dir>/<service>/<signal>.jsonl``, written by
the upstream OTLP JSON file exporters (``opentelemetry-exporter-otlp-json-file``); with one,
the exporters of ``visiontel._support.otlp`` (the set-up every visiontel package shares) read
their settings (protocol per signal, endpoint, headers, TLS certificates) from the usual
``OTEL_EXPORTER_OTLP_*`` variables. With telemetry off nothing is installed and every
visiontel call runs against the no-op API.
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass

from opentelemetry import _logs, metrics, trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from visiontel._support.env import env_float, env_str
from visiontel._support.otlp import otlp_log_exporter, otlp_metric_exporter, otlp_span_exporter
from visiontel.cli.version import __version__
from visiontel.demo._errors import DemoError

SERVICE_NAMES = {"source": "frame-source", "detector": "detector", "sink": "tracker"}
SIGNALS = ("traces", "metrics", "logs")
# Files are read back at the end of the run, so a short interval costs little and
# gives the live collector view a few points per run.
_DEFAULT_METRIC_INTERVAL_MS = 2000


class LogBridge(LoggingHandler):
    """Python logging records as OpenTelemetry log records, in the current trace context.

    The logging instrumentation's handler (the SDK's own ``LoggingHandler`` is deprecated in
    its favour), set for the demo: INFO and up, with the ``code.*`` attributes (the stack's
    log views show ``code.function.name``), and without the SDK's own loggers, whose
    complaints about a failed export would be fed back into that export.
    """

    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__(logging.INFO, provider, log_code_attributes=True)
        self.addFilter(lambda record: not record.name.startswith("opentelemetry"))

    def flush(self) -> None:
        # Telemetry.shutdown flushes the provider; logging's own flush at exit would start
        # a thread to flush it again after it was shut down.
        return None


@dataclass
class Telemetry:
    """The providers of one process (all None when telemetry is off)."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None
    log_handler: LogBridge | None = None
    """Bridges Python logging into ``logger_provider``; ``setup`` puts it on the root logger."""

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None

    def shutdown(self) -> None:
        """Flush and stop every provider (the files are complete afterwards)."""
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                provider.shutdown()


def _exporters(
    run_dir: pathlib.Path, service: str, endpoint: str | None
) -> tuple[SpanExporter, MetricExporter, LogRecordExporter]:
    if not endpoint:
        # The upstream OTLP JSON file exporters: one export request per line, which is
        # what the collector's otlpjsonfile receiver reads back.
        from opentelemetry.exporter.otlp.json.file import FileMetricExporter, FileSpanExporter
        from opentelemetry.exporter.otlp.json.file._log_exporter import FileLogExporter

        folder = run_dir / service
        folder.mkdir(parents=True, exist_ok=True)
        return (
            FileSpanExporter(folder / "traces.jsonl"),
            FileMetricExporter(folder / "metrics.jsonl"),
            FileLogExporter(folder / "logs.jsonl"),
        )
    # The shared OTLP set-up: protocol per signal, and every other OTEL_EXPORTER_OTLP_*
    # variable (endpoint with per-signal overrides, headers, TLS...) read by the upstream
    # exporters themselves. The launcher put the endpoint into OTEL_EXPORTER_OTLP_ENDPOINT.
    try:
        return otlp_span_exporter(), otlp_metric_exporter(), otlp_log_exporter()
    except RuntimeError as exc:  # an exporter package is missing: the message says which
        raise DemoError(str(exc)) from None


def _metric_interval_ms() -> float:
    """``OTEL_METRIC_EXPORT_INTERVAL`` (ms); a malformed value is logged and the default used."""
    return env_float("OTEL_METRIC_EXPORT_INTERVAL", float(_DEFAULT_METRIC_INTERVAL_MS), minimum=1.0)


def build(role: str, run_id: str, run_dir: pathlib.Path) -> Telemetry:
    """The providers and log handler of ``role`` (source, detector or sink), not installed.

    With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set they export OTLP to it, else they write
    ``<run_dir>/<service>/{traces,metrics,logs}.jsonl``.
    """
    service = SERVICE_NAMES[role]
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "visiontel-demo",
            "service.version": __version__,
            "service.instance.id": f"{run_id}-{role}",
            "visiontel.demo.run_id": run_id,
        }
    )
    span_exporter, metric_exporter, log_exporter = _exporters(
        run_dir, service, env_str("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    interval = _metric_interval_ms()
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    return Telemetry(tracer_provider, meter_provider, logger_provider, LogBridge(logger_provider))


def setup(role: str, run_id: str, run_dir: pathlib.Path, *, enabled: bool) -> Telemetry:
    """Install global providers for ``role`` (source, detector or sink), and the log bridge."""
    if not enabled:
        return Telemetry()
    telemetry = build(role, run_id, run_dir)
    assert telemetry.tracer_provider and telemetry.meter_provider and telemetry.logger_provider
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    _logs.set_logger_provider(telemetry.logger_provider)
    if telemetry.log_handler is not None:
        logging.getLogger().addHandler(telemetry.log_handler)
    return telemetry
