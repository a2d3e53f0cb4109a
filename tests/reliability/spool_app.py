"""The application of the spool restart row: spans at a steady rate through the SDK's
BatchSpanProcessor and the exporter the SDK loads for OTEL_TRACES_EXPORTER=visiontel_spool.

    python spool_app.py TAG RATE_HZ

Spans are named "<TAG>-<n>". After each batch the exporter accepted (sent or spooled),
one line "ack <first n> <last n> <count>" goes to stdout, so the test knows which spans the
application had handed over when it was killed. Closing stdin shuts the SDK down cleanly.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence

from opentelemetry.sdk._configuration import _import_exporters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class Acking(SpanExporter):
    """Reports every batch its exporter accepted (stdout is the test's ledger)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS and spans:
            numbers = [int(str(s.name).rsplit("-", 1)[1]) for s in spans]
            print(f"ack {min(numbers)} {max(numbers)} {len(numbers)}", flush=True)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def main() -> None:
    tag, rate = sys.argv[1], float(sys.argv[2])
    name = os.environ.get("OTEL_TRACES_EXPORTER", "")
    (exporter_class,) = _import_exporters([name], [], [])[0].values()  # the SDK's loading
    provider = TracerProvider(resource=Resource.create({"service.name": "spool-app"}))
    processor = BatchSpanProcessor(
        Acking(exporter_class()), schedule_delay_millis=200, max_export_batch_size=512
    )
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("spool-app")
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    n, started = 0, time.monotonic()
    while not stop.is_set():
        tracer.start_span(f"{tag}-{n}").end()
        n += 1
        ahead = n / rate - (time.monotonic() - started)
        if ahead > 0:
            stop.wait(ahead)  # the pace of the application, not a synchronisation
    provider.shutdown()
    print(f"done {n}", flush=True)


if __name__ == "__main__":
    main()
