"""An OTLP/HTTP exporter that keeps telemetry on disk while its endpoint is away.

Selected without code: ``OTEL_TRACES_EXPORTER=visiontel_spool`` (and/or
``OTEL_METRICS_EXPORTER``, ``OTEL_LOGS_EXPORTER``). While the endpoint fails, each batch's
serialized request body is written to a bounded spool directory (``VISIONTEL_SPOOL_DIR``,
``VISIONTEL_SPOOL_MAX_BYTES``) and replayed in order when it answers again, by this
process or the next one.
"""

from visiontel.spool._diag import dropped_counts
from visiontel.spool._exporters import SpoolLogExporter, SpoolMetricExporter, SpoolSpanExporter
from visiontel.spool.version import __version__

__all__ = [
    "SpoolLogExporter",
    "SpoolMetricExporter",
    "SpoolSpanExporter",
    "__version__",
    "dropped_counts",
]
