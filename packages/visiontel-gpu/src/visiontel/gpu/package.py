"""Library versions this instrumentation supports (read by opentelemetry-instrumentation)."""

_instruments = ("nvidia-ml-py >= 12.535",)
_supports_metrics = True
