"""Library versions this package works with (read by opentelemetry-instrumentation).

The spool instruments no library: it is an exporter, selected through the SDK's
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` / ``OTEL_LOGS_EXPORTER`` entry points.
"""

_instruments: tuple[str, ...] = ()
_supports_metrics = True
