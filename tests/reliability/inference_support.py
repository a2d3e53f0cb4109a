"""An instrumented inference loop for the collector-fault and load tests: visiontel.torch on a
small CPU model, the SDK's BatchSpanProcessor and OTLP/HTTP exporter, and a counting span
processor that knows what was produced (so what arrived can be compared with it)."""

from __future__ import annotations

import gc
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
    """Spans ended, per trace id (the test's ledger of what was produced), or only their
    total (per_trace=False: a ledger growing with every trace would be memory the test
    charges to the SDK)."""

    def __init__(self, per_trace: bool = True) -> None:
        self.per_trace: Counter[int] = Counter()
        self.keep_traces = per_trace
        self.count = 0
        self.lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        assert span.context is not None
        with self.lock:
            self.count += 1
            if self.keep_traces:
                self.per_trace[span.context.trace_id] += 1

    @property
    def total(self) -> int:
        with self.lock:
            return self.count


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
    endpoint: str,
    *,
    max_queue_size: int = 8192,
    export_timeout_s: float = EXPORT_TIMEOUT_S,
    per_trace: bool = True,
) -> Telemetry:
    """SDK pipeline to an OTLP/HTTP endpoint (host:port or URL) and an instrumented model."""
    torch.set_num_threads(1)
    base = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
    provider = TracerProvider(resource=Resource.create({"service.name": "reliability"}))
    counting = Counting(per_trace)
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


# One bare forward of the same model (no instrumentation) every REFERENCE_EVERY frames, on
# the inference thread: the unit in which a frame's CPU cost is given. The thread's CPU time
# per frame alone moves by 20-30 % from one second to the next on a shared 2-core VM (the
# neighbours change how fast a CPU second is); a reference run interleaved with the frames
# slows down with them, so the cost *in bare forwards* keeps only what the frame itself does.
REFERENCE_EVERY = 4


@dataclass(frozen=True)
class Progress:
    """Counters of the inference thread, published after every frame as one object."""

    frames: int = 0
    thread_ns: int = 0  # CPU time of the inference thread
    references: int = 0  # bare forwards run
    reference_ns: int = 0  # their CPU time, garbage collection excluded
    gc_ns: int = 0  # CPU time of garbage collections run on the inference thread


@dataclass
class Window:
    """Frames run between two instants, on wall clock, on process CPU time and on the
    inference thread's own CPU time, and frames / CPU per one-second chunk (medians over
    chunks shrug off a neighbour's burst of CPU)."""

    frames: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    thread_cpu_s: float = 0.0  # the inference thread's CPU time: frames + bare forwards
    references: int = 0
    reference_cpu_s: float = 0.0  # of which the bare forwards (their GC excluded)
    gc_cpu_s: float = 0.0  # garbage collection on the inference thread (part of thread_cpu_s)
    worst_gap_s: float = 0.0
    chunks: list[tuple[int, float, float]] = field(default_factory=list)  # frames, wall, CPU

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

    @property
    def frame_cpu_us(self) -> float:
        """Inference-thread CPU per frame, garbage collection excluded: the model, the spans,
        the span processors' on_end; neither the exporter's thread nor time spent waiting for
        a CPU or the GIL."""
        frame_s = self.thread_cpu_s - self.reference_cpu_s - self.gc_cpu_s
        return 1e6 * frame_s / self.frames if self.frames else 0.0

    @property
    def gc_us_per_frame(self) -> float:
        return 1e6 * self.gc_cpu_s / self.frames if self.frames else 0.0

    @property
    def reference_cpu_us(self) -> float:
        return 1e6 * self.reference_cpu_s / self.references if self.references else 0.0

    @property
    def frame_cost(self) -> float:
        """frame_cpu_us in bare forwards of the same model run on the same thread."""
        ref = self.reference_cpu_us
        return self.frame_cpu_us / ref if ref else 0.0


class Loop:
    """The application: frames through the instrumented model, one trace per frame, on a
    thread of its own (with a bare forward every REFERENCE_EVERY frames, see there); windows
    of it are measured while faults come and go."""

    def __init__(self, tel: Telemetry, *, size: int = 64, batch: int = 1) -> None:
        self.tel = tel
        self.input = torch.rand(batch, 3, size, size)
        self.reference = SmallDetector().eval()  # the same model, not instrumented
        self.reference.load_state_dict(tel.model.state_dict())
        self.sequence = 0
        self.progress = Progress()
        self.gc_ns = 0
        self._gc_started = 0
        self.started_at: dict[int, float] = {}  # frame sequence -> monotonic start
        self.trace_of: dict[int, int] = {}  # trace id -> frame sequence
        self.errors: list[BaseException] = []
        self.watch = Stopwatch()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self.thread.start()

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        """A collection runs on whichever thread allocated last: count the inference
        thread's (the application pays for them), keep them out of the reference."""
        if threading.get_ident() != self.thread.ident:
            return
        if phase == "start":
            self._gc_started = time.thread_time_ns()
        else:
            self.gc_ns += time.thread_time_ns() - self._gc_started

    def _run(self) -> None:
        references = reference_ns = 0
        self.progress = Progress(self.sequence, time.thread_time_ns())
        with torch.inference_mode():
            while not self.stop.is_set():
                try:
                    self.frame()
                except BaseException as exc:  # the application would see this
                    self.errors.append(exc)
                if self.sequence % REFERENCE_EVERY == 0:
                    gc0, t0 = self.gc_ns, time.thread_time_ns()
                    self.reference(self.input)
                    reference_ns += time.thread_time_ns() - t0 - (self.gc_ns - gc0)
                    references += 1
                self.progress = Progress(
                    self.sequence, time.thread_time_ns(), references, reference_ns, self.gc_ns
                )
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
        first = self.progress
        wall, cpu = time.perf_counter(), time.process_time()
        self.watch.reset()
        chunks = []
        end = wall + seconds
        while (now := time.perf_counter()) < end:
            f0, w0, c0 = self.progress.frames, now, time.process_time()
            time.sleep(min(1.0, end - now))  # the chunk's length, not a synchronisation
            chunks.append(
                (self.progress.frames - f0, time.perf_counter() - w0, time.process_time() - c0)
            )
        last = self.progress
        return Window(
            frames=last.frames - first.frames,
            wall_s=time.perf_counter() - wall,
            cpu_s=time.process_time() - cpu,
            thread_cpu_s=(last.thread_ns - first.thread_ns) / 1e9,
            references=last.references - first.references,
            reference_cpu_s=(last.reference_ns - first.reference_ns) / 1e9,
            gc_cpu_s=(last.gc_ns - first.gc_ns) / 1e9,
            worst_gap_s=self.watch.worst,
            chunks=chunks,
        )

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
