"""An instrumented inference loop for the collector-fault and load tests: visiontel.torch on a
small CPU model, the SDK's BatchSpanProcessor and OTLP/HTTP exporter, and a counting span
processor that knows what was produced (so what arrived can be compared with it)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from reliability_support import Stopwatch

import visiontel.torch as vt

EXPORT_TIMEOUT_S = 3.0  # the OTLP exporter's own deadline per export (its retries included)


class Counting(SpanProcessor):
    """Spans ended, per trace id (the test's ledger of what was produced)."""

    def __init__(self) -> None:
        self.per_trace: Counter[int] = Counter()
        self.lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        assert span.context is not None
        with self.lock:
            self.per_trace[span.context.trace_id] += 1

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.per_trace.values())


class LogTally(logging.Handler):
    """Counts the SDK's drop messages without keeping the records.

    pytest's own log capture keeps every record, and the exporter's retry warnings carry
    the exception, whose traceback holds the batch being retried: kept records would be
    memory this test charges to the SDK. The nox sessions run pytest with -p no:logging
    and the tests count through this handler instead.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.queue_full = 0  # the SDK's "Queue full, dropping Span."
        self.export_failed = 0  # the exporter giving up on a batch (ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        if "queue full" in record.getMessage().lower():
            self.queue_full += 1
        elif record.name.startswith("opentelemetry.exporter") and record.levelno >= logging.ERROR:
            self.export_failed += 1

    def __enter__(self) -> LogTally:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)

    def snapshot(self) -> tuple[int, int]:
        return self.queue_full, self.export_failed


class SmallDetector(torch.nn.Module):
    """Three top-level stages, like a detector's backbone / neck / head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU())
        self.neck = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(16, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(x)))  # type: ignore[no-any-return]


@dataclass
class Telemetry:
    provider: TracerProvider
    counting: Counting
    model: torch.nn.Module
    tracer: Any = field(init=False)

    def __post_init__(self) -> None:
        self.tracer = self.provider.get_tracer("reliability")

    def shutdown(self) -> None:
        vt.uninstrument_model(self.model)
        self.provider.shutdown()


def telemetry(
    endpoint: str, *, max_queue_size: int = 8192, export_timeout_s: float = EXPORT_TIMEOUT_S
) -> Telemetry:
    """SDK pipeline to an OTLP/HTTP endpoint (host:port or URL) and an instrumented model."""
    torch.set_num_threads(1)
    base = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
    provider = TracerProvider(resource=Resource.create({"service.name": "reliability"}))
    counting = Counting()
    provider.add_span_processor(counting)
    exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=export_timeout_s)
    provider.add_span_processor(
        # The settings visiontel-torch's README gives for this span rate.
        BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue_size,
            max_export_batch_size=2048,
            schedule_delay_millis=500,
        )
    )
    model = vt.instrument_model(
        SmallDetector().eval(),
        name="reliability",
        tracer_provider=provider,
        meter_provider=MeterProvider(),
    )
    return Telemetry(provider, counting, model)


@dataclass
class Window:
    """Frames run between two instants, on wall clock and on process CPU time, and the
    same per one-second chunk (medians over chunks shrug off a neighbour's burst of CPU)."""

    frames: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    worst_gap_s: float = 0.0
    chunks: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def median_frames_per_cpu_s(self) -> float:
        rates = sorted(f / c for f, _, c in self.chunks if c > 0)
        return rates[len(rates) // 2] if rates else 0.0

    @property
    def median_fps(self) -> float:
        rates = sorted(f / w for f, w, _ in self.chunks if w > 0)
        return rates[len(rates) // 2] if rates else 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    @property
    def frames_per_cpu_s(self) -> float:
        return self.frames / self.cpu_s if self.cpu_s else 0.0


class Loop:
    """The application: frames through the instrumented model, one trace per frame, on a
    thread of its own; windows of it are measured while faults come and go."""

    def __init__(self, tel: Telemetry, *, size: int = 64, batch: int = 1) -> None:
        self.tel = tel
        self.input = torch.rand(batch, 3, size, size)
        self.sequence = 0
        self.started_at: dict[int, float] = {}  # frame sequence -> monotonic start
        self.trace_of: dict[int, int] = {}  # trace id -> frame sequence
        self.errors: list[BaseException] = []
        self.watch = Stopwatch()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        with torch.inference_mode():
            while not self.stop.is_set():
                try:
                    self.frame()
                except BaseException as exc:  # the application would see this
                    self.errors.append(exc)
                self.watch.tick()

    def frame(self) -> None:
        seq = self.sequence
        self.started_at[seq] = time.monotonic()
        with self.tel.tracer.start_as_current_span(
            "frame", attributes={"visiontel.frame.sequence": seq}
        ) as span:
            self.trace_of[span.get_span_context().trace_id] = seq
            self.tel.model(self.input)
        self.sequence = seq + 1

    def measure(self, seconds: float) -> Window:
        first, wall, cpu = self.sequence, time.perf_counter(), time.process_time()
        self.watch.reset()
        chunks = []
        end = wall + seconds
        while (now := time.perf_counter()) < end:
            f0, w0, c0 = self.sequence, now, time.process_time()
            time.sleep(min(1.0, end - now))
            chunks.append((self.sequence - f0, time.perf_counter() - w0, time.process_time() - c0))
        return Window(
            frames=self.sequence - first,
            wall_s=time.perf_counter() - wall,
            cpu_s=time.process_time() - cpu,
            worst_gap_s=self.watch.worst,
            chunks=chunks,
        )

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
