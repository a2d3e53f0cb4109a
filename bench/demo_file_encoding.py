"""The demo's file output: the upstream OTLP JSON encoder and logging handler against the
demo's own, which issue 19 removed.

The demo used to write spans and log records to OTLP/JSON with encoders of its own
(``_spanjson``, ``_logjson``) and to bridge Python logging with a handler of its own. This
measures what replacing them with ``opentelemetry-exporter-otlp-json-file``'s encoder and
``opentelemetry-instrumentation-logging``'s handler costs, in thread CPU per item, in
interleaved repeats. The old modules are read from git (``--old-commit``, default the last
commit that had them), so nothing of them stays in the source tree.

    python bench/demo_file_encoding.py [--old-commit 4cc2a2d] [--repeats 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable

from opentelemetry.exporter.otlp.json.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from visiontel.demo._telemetry import LogBridge

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = "packages/visiontel/src/visiontel/demo"
COMPACT = (",", ":")


def _old_modules(commit: str, folder: pathlib.Path) -> dict[str, types.ModuleType]:
    """``_spanjson``, ``_logjson`` and ``_telemetry`` of ``commit``, loaded from ``folder``."""
    modules: dict[str, types.ModuleType] = {}
    for name in ("_spanjson", "_logjson", "_telemetry"):
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:{DEMO}/{name}.py"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        # _logjson imports _spanjson from the package: point it at the old copy.
        text = text.replace("from visiontel.demo._spanjson import", "from old_spanjson import")
        path = folder / f"old{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"old{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"old{name}"] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


class _Discard(LogRecordExporter):
    def export(self, batch: object) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def _per_item_us(work: Callable[[], object], items: int) -> float:
    start = time.thread_time()
    work()
    return (time.thread_time() - start) / items * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-commit", default="4cc2a2d", help="a commit with the old encoders")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved repeats")
    args = parser.parse_args()

    resource = Resource.create({"service.name": "detector", "service.namespace": "bench"})
    spans_memory = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans_memory))
    tracer = tracer_provider.get_tracer("visiontel.torch", "0.1")
    for frame in range(43):  # 43 frames of a dozen spans: ~the demo's per-frame shape
        attributes = {"visiontel.frame.sequence": frame, "visiontel.model.version": "1.0"}
        with tracer.start_as_current_span("detect", attributes=attributes):
            for stage in range(11):
                with tracer.start_as_current_span(f"stage {stage}", attributes={"n": 1}):
                    pass
    spans = spans_memory.get_finished_spans()

    logs_memory = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs_memory))
    frames_log = logging.getLogger("visiontel.demo.tracker.frames")
    frames_log.propagate = False
    frames_log.setLevel(logging.INFO)
    frames_log.handlers = [LogBridge(logger_provider)]
    with tracer.start_as_current_span("track"):
        for frame in range(500):
            frames_log.info("frame %d: %d detections, %d active tracks (%d new)", frame, 3, 4, 1)
    records = logs_memory.get_finished_logs()

    discard = LoggerProvider(resource=resource)
    discard.add_log_record_processor(SimpleLogRecordProcessor(_Discard()))

    def handler_cost(handler: logging.Handler) -> Callable[[], object]:
        def emit_all() -> None:
            frames_log.handlers = [handler]
            with tracer.start_as_current_span("track"):
                for frame in range(len(records)):
                    frames_log.info("frame %d: %d detections", frame, 3)

        return emit_all

    with tempfile.TemporaryDirectory() as scratch:
        old = _old_modules(args.old_commit, pathlib.Path(scratch))
        cases: dict[str, tuple[Callable[[], object], int]] = {
            "span, demo's own encoder": (
                lambda: json.dumps(old["_spanjson"].request(spans), separators=COMPACT),
                len(spans),
            ),
            "span, upstream encoder": (
                lambda: json.dumps(encode_spans(spans).to_dict(), separators=COMPACT),
                len(spans),
            ),
            "log record, demo's own encoder": (
                lambda: json.dumps(old["_logjson"].request(records), separators=COMPACT),
                len(records),
            ),
            "log record, upstream encoder": (
                lambda: json.dumps(encode_logs(records).to_dict(), separators=COMPACT),
                len(records),
            ),
            "log call, demo's own handler": (
                handler_cost(old["_telemetry"].LogBridge(discard)),
                len(records),
            ),
            "log call, instrumentation's handler": (
                handler_cost(LogBridge(discard)),
                len(records),
            ),
        }
        timings: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, (work, items) in cases.items():
                timings[name].append(_per_item_us(work, items))
    load = os.getloadavg()[0]
    print(f"{len(spans)} spans, {len(records)} log records, {args.repeats} interleaved repeats, "
          f"load {load:.1f}; thread CPU per item (us)")  # fmt: skip
    for name, values in timings.items():
        print(f"  {name:<38} median {statistics.median(values):6.1f}  min {min(values):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
