"""A writer process for the restart and kill tests: spools span batches through
SpoolSpanExporter (its endpoint is down), printing each batch number once export() returned.

    python spool_child.py FIRST COUNT exit|hold [PAD_BYTES]

Batch b holds n = 1 + (b * 7919) % 13 spans named "b<b>/<n>-<i>", so a reader can tell a
whole batch from a part of one. "exit" shuts the exporter down at the end, "hold" waits
for stdin to close (the test kills it before or after that).
"""

from __future__ import annotations

import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from visiontel.spool import SpoolSpanExporter


def batch_size(b: int) -> int:
    return 1 + (b * 7919) % 13


def main() -> None:
    first, count, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    pad = "x" * int(sys.argv[4]) if len(sys.argv) > 4 else ""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("child")
    exporter = SpoolSpanExporter()
    print("ready", flush=True)
    for b in range(first, first + count):
        n = batch_size(b)
        for i in range(n):
            tracer.start_span(f"b{b:06d}/{n}-{i:03d}", attributes={"pad": pad}).end()
        exporter.export(memory.get_finished_spans())
        memory.clear()
        print(b, flush=True)
    if mode == "exit":
        exporter.shutdown()
    else:
        sys.stdin.read()


if __name__ == "__main__":
    main()
