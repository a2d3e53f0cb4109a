"""Library versions this instrumentation supports (read by opentelemetry-instrumentation)."""

_instruments = ("torch >= 2.4",)
_supports_metrics = True
