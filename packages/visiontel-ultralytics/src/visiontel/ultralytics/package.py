"""Library versions this instrumentation supports (read by opentelemetry-instrumentation)."""

_instruments = ("ultralytics >= 8.3.0",)
_supports_metrics = True

# The newest release the test matrix has run; newer ones are attempted, and anything the
# instrumentation cannot find in them is reported once and left untouched.
TESTED_NEWEST = "8.4.190"
