"""OpenTelemetry SDK set-up for one demo process: traces, metrics and logs.

With no OTLP endpoint every signal goes to ``<run dir>/<service>/<signal>.jsonl`` as OTLP
JSON; with one, the standard OTLP exporters read their settings (endpoint, protocol,
headers, TLS certificates) from the usual ``OTEL_EXPORTER_OTLP_*`` variables. With
telemetry off nothing is installed and every visiontel call runs against the no-op API.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from dataclasses import dataclass

from opentelemetry import _logs, metrics, trace
from opentelemetry import context as otel_context
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from visiontel.cli.version import __version__

SERVICE_NAMES = {"source": "frame-source", "detector": "detector", "sink": "tracker"}
SIGNALS = ("traces", "metrics", "logs")
# Files are read back at the end of the run, so a short interval costs little and
# gives the live collector view a few points per run.
_DEFAULT_METRIC_INTERVAL_MS = 2000

_SEVERITY = {
    logging.DEBUG: SeverityNumber.DEBUG,
    logging.INFO: SeverityNumber.INFO,
    logging.WARNING: SeverityNumber.WARN,
    logging.ERROR: SeverityNumber.ERROR,
    logging.CRITICAL: SeverityNumber.FATAL,
}


class LogBridge(logging.Handler):
    """Python logging records as OpenTelemetry log records, in the current trace context."""

    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__(logging.INFO)
        self._provider = provider
        # One OpenTelemetry logger per logging name, looked up without the provider's lock.
        self._loggers: dict[str, _logs.Logger] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("opentelemetry"):
            return  # the SDK's own complaints would loop back into the exporter
        try:
            logger = self._loggers.get(record.name)
            if logger is None:
                logger = self._provider.get_logger(record.name)
                self._loggers[record.name] = logger
            logger.emit(
                LogRecord(
                    timestamp=int(record.created * 1e9),
                    observed_timestamp=time.time_ns(),
                    context=otel_context.get_current(),
                    severity_text=record.levelname,
                    severity_number=_SEVERITY.get(record.levelno, SeverityNumber.INFO),
                    body=record.getMessage(),
                    attributes={
                        "code.function.name": record.funcName,
                        "code.line.number": record.lineno,
                    },
                )
            )
        except Exception:
            self.handleError(record)


@dataclass
class Telemetry:
    """The providers of one process (all None when telemetry is off)."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None

    def shutdown(self) -> None:
        """Flush and stop every provider (the files are complete afterwards)."""
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                provider.shutdown()


def _exporters(
    run_dir: pathlib.Path, service: str, endpoint: str | None
) -> tuple[SpanExporter, MetricExporter, LogRecordExporter]:
    if not endpoint:
        from visiontel.demo._otlpjson import FileLogExporter, FileMetricExporter, FileSpanExporter

        folder = run_dir / service
        folder.mkdir(parents=True, exist_ok=True)
        return (
            FileSpanExporter(folder / "traces.jsonl"),
            FileMetricExporter(folder / "metrics.jsonl"),
            FileLogExporter(folder / "logs.jsonl"),
        )
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(), OTLPMetricExporter(), OTLPLogExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HTTPLogExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HTTPMetricExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter(), HTTPMetricExporter(), HTTPLogExporter()


def _metric_interval_ms() -> float:
    """``OTEL_METRIC_EXPORT_INTERVAL``; a malformed value is logged and the default used."""
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if not raw:
        return float(_DEFAULT_METRIC_INTERVAL_MS)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        logging.getLogger("visiontel.demo").warning(
            "OTEL_METRIC_EXPORT_INTERVAL=%r is not a positive number of milliseconds; using %s",
            raw[:64],
            _DEFAULT_METRIC_INTERVAL_MS,
        )
        return float(_DEFAULT_METRIC_INTERVAL_MS)
    return value


def setup(role: str, run_id: str, run_dir: pathlib.Path, *, enabled: bool) -> Telemetry:
    """Install global providers for ``role`` (source, detector or sink)."""
    if not enabled:
        return Telemetry()
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
        run_dir, service, os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    interval = _metric_interval_ms()
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _logs.set_logger_provider(logger_provider)
    logging.getLogger().addHandler(LogBridge(logger_provider))
    return Telemetry(tracer_provider, meter_provider, logger_provider)
