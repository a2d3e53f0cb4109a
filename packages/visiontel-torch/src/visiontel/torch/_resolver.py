"""Turns stamps into spans, and finishes the per-forward work in batches.

* **Later work.** When spans are exported in batches anyway (every span processor is the
  SDK's ``BatchSpanProcessor``), the end of a forward or stage (its duration and detection
  points, its root span's end, its layer spans) is one ``deque.append``. Every 64 items the
  inference thread runs them in one go, warm, instead of each right after a forward has
  evicted the interpreter's caches; the resolver thread finishes what is left waiting
  every 0.5 s. Doing all of it on the resolver thread was measured slower: each of the
  forward's operator calls releases the GIL, and taking it back from a busy resolver cost
  more than the work (docs/benchmarks.md). The spans a run ends reach the batch processors
  together at its end (``visiontel._support.spanends``). A metric collection and ``flush()``
  first finish whatever is pending, so readers and exporters see the same points and spans
  as before.
* **GPU forwards.** A forward with CUDA events waits on the resolver thread (polling
  ``query()``, never synchronising) until its events completed, then gets its child spans
  with explicit start and end times and its root span ends. That queue is bounded: when it
  is full the forward keeps its root span but loses its child detail, counted in
  ``visiontel.torch.dropped``. Inference never waits.
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from visiontel._support.spanends import ends_gathered
from visiontel.torch import _compiled
from visiontel.torch._children import (
    BatchedChildren,
    Children,
    ChildSpan,
    SdkChildren,
    children_for,
)
from visiontel.torch._inflight import InFlight
from visiontel.torch._metrics import InferenceMetrics
from visiontel.torch._record import ForwardRecord
from visiontel.torch._safety import report_internal_error
from visiontel.torch._volume import VolumeWatch

_POLL_S = 0.002  # GPU events pending: how often to query them
_IDLE_S = 0.5  # otherwise: how often the thread finishes later work left waiting
_MAX_QUEUE = 1024
_LATER_BATCH = 64  # later work runs on the thread that queued it once this many wait
# The resolver shares the GIL with the inference thread. A thread that waits for the GIL
# gets it only after the switch interval (5 ms by default), so the resolver hands it over
# itself every few spans and after every item of later work: inference never queues
# behind a long batch of span creation.
_SPANS_PER_YIELD = 4
# The compiled loop (``_speedups.layer_spans``) builds a span in a few µs and cannot hand
# the GIL over midway: on the resolver thread it takes a forward only while that forward's
# spans, built in one go, hold the GIL about as long as the Python loop holds it between
# two hand-overs (16 spans in C against 4 in Python, measured in docs/benchmarks.md).
_COMPILED_STAMPS_WHILE_HANDING_OVER = 32

LaterWork = tuple[Callable[..., None], tuple[Any, ...]]


class Resolver:
    def __init__(
        self,
        metrics: InferenceMetrics,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self._metrics = metrics
        self._submitted: collections.deque[ForwardRecord] = collections.deque()
        self._later: collections.deque[LaterWork] = collections.deque()
        self._later_lock = threading.Lock()  # one drainer at a time: flush() waits on it
        self._draining = 0  # the ident of the thread running later work now, else 0
        self._wake = threading.Event()
        self._waiting: list[tuple[float, ForwardRecord]] = []
        self._lock = threading.Lock()  # starting the thread
        self._in_flight = InFlight()
        self._thread: threading.Thread | None = None
        self._thread_ident = 0
        self.volume = VolumeWatch(tracer_provider)
        self._tracer_provider = tracer_provider
        self._children: Children | None = None
        self._children_provider: object = None
        self.gpu_timeouts = 0
        atexit.register(self.flush, 2.0)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))

    def _after_fork(self) -> None:
        """The parent's thread and its work do not exist in a forked child."""
        self._lock = threading.Lock()
        self._later_lock = threading.Lock()
        self._draining = 0
        self._wake = threading.Event()
        self._in_flight.reset()
        self._waiting.clear()
        self._submitted.clear()
        self._later.clear()
        self._metrics.unsampled.clear()
        self._metrics.sampled.clear()
        self._thread = None

    def later(self, function: Callable[..., None], *args: Any) -> None:
        """Run ``function(*args)`` later: in a batch on this thread, or on the resolver's.

        Queued by later work on the thread running it (a span that work ends hands itself
        over to the processors as later work), it runs at once: it would run in this same
        run anyway, one queue round trip on.
        """
        if self._draining == threading.get_ident():
            function(*args)
            return
        pending = self._later
        pending.append((function, args))
        if len(pending) >= _LATER_BATCH:
            if self._later_lock.acquire(blocking=False):  # else the resolver is on it
                try:
                    self._run_later(handing_over=False)
                finally:
                    self._later_lock.release()
        elif self._thread is None:
            self._ensure_thread()

    def wake_for_points(self) -> None:
        """Many unsampled points wait: have the resolver thread record them now."""
        if self._thread is None:
            self._ensure_thread()
        self._wake.set()

    def drain_later(self) -> None:
        """Finish every pending item of later work now, on the calling thread."""
        with self._later_lock:
            self._run_later(handing_over=False)

    def submit(self, record: ForwardRecord) -> bool:
        """Queue ``record``; False (and nothing queued) when the resolver is saturated."""
        if len(self._submitted) >= _MAX_QUEUE:
            return False
        self._in_flight.add()
        self._submitted.append(record)
        if self._thread is None:
            self._ensure_thread()
        return True

    def _children_for(self, record: ForwardRecord) -> Children:
        provider = self._tracer_provider or trace.get_tracer_provider()
        children = self._children
        if (
            provider is not self._children_provider
            or children is None
            or (isinstance(children, SdkChildren) and children.stale())
        ):
            children = self._children = children_for(provider, record.tracer)
            self._children_provider = provider
        return children

    def resolve_inline(self, record: ForwardRecord) -> None:
        """Materialise a forward that has no GPU events now, on the calling thread.

        With nothing to wait for, there is no reason to queue it on its own: it runs where
        it is called (the inference thread, or the resolver thread as later work).
        """
        try:
            self._materialise(record, with_gpu=False)
        except Exception as exc:
            report_internal_error("inline resolve", exc)
            _end_quietly(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Finish the later work, then wait until every queued forward became spans."""
        self.drain_later()
        if self._in_flight.idle():  # nothing queued: no reason to wake the thread
            return True
        self._wake.set()
        return self._in_flight.wait(timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="visiontel-torch-resolver", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        self._thread_ident = threading.get_ident()
        while True:
            self._wake.wait(_POLL_S if self._waiting else _IDLE_S)
            self._wake.clear()
            while self._submitted:
                self._waiting.append((time.monotonic(), self._submitted.popleft()))
            if self._waiting:
                self._resolve_ready()
            if self._later or self._metrics.unsampled.waiting():
                with self._later_lock:
                    self._run_later(handing_over=True)

    def _run_later(self, handing_over: bool) -> None:
        self._draining = threading.get_ident()
        try:
            with ends_gathered():  # the run's spans reach the processors together
                self._run_pending(handing_over)
        except Exception as exc:  # a processor failed to take them
            report_internal_error("later work's spans", exc)
        finally:
            self._draining = 0

    def _run_pending(self, handing_over: bool) -> None:
        pending, sampled = self._later, self._metrics.sampled
        while pending:
            try:
                function, args = pending.popleft()
            except IndexError:  # another drainer took the last one
                break
            try:
                function(*args)
                if sampled.due():
                    sampled.record()
            except Exception as exc:
                report_internal_error("later work", exc)
            if handing_over:
                time.sleep(0)
        try:  # what this run left: sampled points, a batch per histogram and attribute set
            sampled.record()
        except Exception as exc:
            report_internal_error("sampled points", exc)
        try:  # unsampled forwards' waiting points, a batch per attribute set
            self._metrics.unsampled.record()
        except Exception as exc:
            report_internal_error("unsampled points", exc)

    def _resolve_ready(self) -> None:
        still_waiting: list[tuple[float, ForwardRecord]] = []
        now = time.monotonic()
        for queued_at, record in self._waiting:
            try:
                events_ready = _events_done(record)
                timed_out = not events_ready and now - queued_at > record.table.gpu_timeout_s
                if not events_ready and not timed_out:
                    still_waiting.append((queued_at, record))
                    continue
                if timed_out:
                    self.gpu_timeouts += 1
                self._materialise(record, with_gpu=events_ready)
            except Exception as exc:
                report_internal_error("resolver", exc)
                _end_quietly(record)
            if record.events is not None:
                record.events.release(record.gpu_events())
            self._in_flight.done()
        self._waiting = still_waiting

    def _materialise_compiled(
        self, compiled: Any, record: ForwardRecord, children: SdkChildren
    ) -> None:
        """``_materialise`` for a forward without GPU times, by ``_speedups.layer_spans``."""
        table = record.table
        to_wall = record.wall_start_ns - record.perf_start_ns
        ended, aggregated = compiled.layer_spans(
            record.stamps or [],
            table.names,
            table.classes,
            table.budget,
            record.span.get_span_context(),
            to_wall,
            record.wall_ns(record.perf_end_ns),
            *children.span_parts,
        )
        if ended:
            children.end_all(ended)
        for module_name, seconds in aggregated:
            self._record_layer(table.model_name, module_name, seconds)
        self._end_root(record, len(aggregated), len(ended), with_gpu=False)

    def _record_layer(self, model_name: str, module_name: str, seconds: float) -> None:
        """A layer past the span budget: one point in the layer-duration histogram."""
        # a dict per point: older SDKs (1.30-1.33 checked) keep the dict a point first used
        attributes = {"visiontel.model.name": model_name, "visiontel.module.name": module_name}
        self._metrics.layer_duration.record(seconds, attributes)

    def _end_root(
        self, record: ForwardRecord, aggregated: int, created: int, with_gpu: bool
    ) -> None:
        """End a materialised forward's root span, once its layers are done."""
        if aggregated:
            record.span.set_attribute("visiontel.layers.aggregated", aggregated)
        if with_gpu and record.start_event is not None and record.end_event is not None:
            _set_gpu_times(
                record.span, record, record.start_event, record.end_event, record.perf_start_ns
            )
        record.span.end(end_time=record.wall_ns(record.perf_end_ns))
        self.volume.observe(created + 1)

    def _materialise(self, record: ForwardRecord, with_gpu: bool) -> None:
        table = record.table
        names, classes, budget = table.names, table.classes, table.budget
        handing_over = threading.get_ident() == self._thread_ident  # on the resolver thread
        children = self._children_for(record)
        compiled = _compiled.speedups
        # the C loop holds the GIL throughout: on the resolver thread, which hands it over,
        # only for a forward with few spans (stage granularity, a small model)
        fast = (
            compiled is not None
            and not with_gpu
            and (
                not handing_over or len(record.stamps or ()) <= _COMPILED_STAMPS_WHILE_HANDING_OVER
            )
        )
        if fast and isinstance(children, SdkChildren):
            self._materialise_compiled(compiled, record, children)
            return
        if isinstance(children, SdkChildren):
            children = children.batch()  # this forward's layer spans go out together
        start_child = children.start
        to_wall = record.wall_start_ns - record.perf_start_ns  # perf_counter_ns -> wall clock
        open_calls: list[tuple[int, int, Any, ChildSpan | None]] = []
        parents: list[Any] = [record.span]  # the innermost open call that has a span
        call_counts: dict[int, int] = {}
        created = aggregated = 0
        model_name = table.model_name
        for index, perf_ns, event in record.stamps or ():
            if index >= 0:
                call = call_counts[index] = call_counts.get(index, 0) + 1
                span = None
                if created < budget:
                    attributes: dict[str, Any] = {"visiontel.module.class": classes[index]}
                    if call > 1:
                        attributes["visiontel.module.call"] = call
                    span = start_child(names[index], parents[-1], perf_ns + to_wall, attributes)
                    parents.append(span)
                    created += 1
                    if handing_over and not created % _SPANS_PER_YIELD:
                        time.sleep(0)
                open_calls.append((index, perf_ns, event, span))
                continue
            closed = ~index
            while open_calls:
                open_index, start_ns, start_event, span = open_calls.pop()
                if span is not None:
                    parents.pop()
                if open_index == closed:
                    break
                if span is not None:  # a call whose end was never stamped
                    span.set_attribute("visiontel.module.incomplete", True)
                    span.end(end_time=perf_ns + to_wall)
            else:
                continue
            if span is None:
                aggregated += 1
                self._record_layer(model_name, names[closed], (perf_ns - start_ns) / 1e9)
                continue
            if with_gpu and start_event is not None and event is not None:
                _set_gpu_times(span, record, start_event, event, start_ns)
            span.end(end_time=perf_ns + to_wall)
        for *_, span in open_calls:  # unmatched calls: close them at the root's end
            if span is not None:
                span.set_attribute("visiontel.module.incomplete", True)
                span.end(end_time=record.wall_ns(record.perf_end_ns))
        if isinstance(children, BatchedChildren):
            children.emit()
        self._end_root(record, aggregated, created, with_gpu)


def _after_fork(resolver: weakref.ref[Resolver]) -> None:
    alive = resolver()
    if alive is not None:
        alive._after_fork()


def _events_done(record: ForwardRecord) -> bool:
    return all(event.query() for event in record.gpu_events())


def _set_gpu_times(
    span: ChildSpan, record: ForwardRecord, start_event: Any, end_event: Any, start_ns: int
) -> None:
    span.set_attribute("visiontel.gpu.duration", start_event.elapsed_time(end_event) / 1e3)
    if record.events is not None:
        gpu_start_wall = record.events.wall_clock_ns(start_event)
        if gpu_start_wall is not None:
            delay = (gpu_start_wall - record.wall_ns(start_ns)) / 1e9
            span.set_attribute("visiontel.gpu.start_delay", delay)


def _end_quietly(record: ForwardRecord) -> None:
    try:
        record.span.end(end_time=record.wall_ns(record.perf_end_ns))
    except Exception as exc:
        report_internal_error("resolver.end", exc)
