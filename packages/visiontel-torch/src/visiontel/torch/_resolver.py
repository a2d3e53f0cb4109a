"""Turns stamps into spans.

Forwards without GPU events are materialised on the caller's thread right after the root
forward returns (there is nothing to wait for, and a second Python thread would only
contend for the GIL). Forwards with CUDA events are queued here: a single daemon thread waits
(by polling ``query()``, never synchronising) until a forward's GPU events have completed,
then creates its child spans with explicit start and end times and ends the root span.
The queue is bounded: when it is full the forward keeps its root span and loses only its
child detail, which is counted (``visiontel.torch.dropped``) — inference never waits.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
from typing import Any

from opentelemetry import trace

from visiontel.torch._children import Children, ChildSpan, children_for
from visiontel.torch._inflight import InFlight
from visiontel.torch._metrics import InferenceMetrics
from visiontel.torch._record import ForwardRecord
from visiontel.torch._safety import report_internal_error
from visiontel.torch._volume import VolumeWatch

_POLL_S = 0.002
_MAX_QUEUE = 1024
# The resolver shares the GIL with the inference thread. A thread that waits for the GIL
# gets it only after the switch interval (5 ms by default), so the resolver hands it over
# itself every few spans: inference never queues behind a long batch of span creation.
_SPANS_PER_YIELD = 4


class Resolver:
    def __init__(
        self,
        metrics: InferenceMetrics,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self._metrics = metrics
        self._queue: queue.Queue[ForwardRecord] = queue.Queue(_MAX_QUEUE)
        self._waiting: list[tuple[float, ForwardRecord]] = []
        self._lock = threading.Lock()  # starting the thread
        self._in_flight = InFlight()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.volume = VolumeWatch(tracer_provider)
        self._tracer_provider = tracer_provider
        self._children: Children | None = None
        self._children_provider: object = None
        self.gpu_timeouts = 0
        atexit.register(self.flush, 2.0)

    def submit(self, record: ForwardRecord) -> bool:
        """Queue ``record``; False (and nothing queued) when the resolver is saturated."""
        self._ensure_thread()
        self._in_flight.add()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._in_flight.done()
            return False
        return True

    def _children_for(self, record: ForwardRecord) -> Children:
        provider = self._tracer_provider or trace.get_tracer_provider()
        if provider is not self._children_provider or self._children is None:
            self._children = children_for(provider, record.tracer)
            self._children_provider = provider
        return self._children

    def resolve_inline(self, record: ForwardRecord) -> None:
        """Materialise a forward that has no GPU events, on the caller's thread.

        With nothing to wait for, handing the work to the resolver thread only adds GIL
        hand-offs between the two threads (measured: far slower than doing it here).
        """
        try:
            self._materialise(record, with_gpu=False, on_resolver_thread=False)
        except Exception as exc:
            report_internal_error("inline resolve", exc)
            _end_quietly(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued forward has been turned into spans."""
        return self._in_flight.wait(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's thread does not exist here
                self._pid = os.getpid()
                self._in_flight.reset()
                self._waiting.clear()
                self._queue = queue.Queue(_MAX_QUEUE)
                self._thread = None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="visiontel-torch-resolver", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            timeout = _POLL_S if self._waiting else None
            try:
                record = self._queue.get(timeout=timeout)
                self._waiting.append((time.monotonic(), record))
            except queue.Empty:
                pass
            self._resolve_ready()

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

    def _materialise(
        self, record: ForwardRecord, with_gpu: bool, on_resolver_thread: bool = True
    ) -> None:
        table = record.table
        names, classes, budget = table.names, table.classes, table.budget
        start_child = self._children_for(record).start
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
                    if on_resolver_thread and not created % _SPANS_PER_YIELD:
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
                # a dict per point: older SDKs (1.30-1.33 checked) keep the dict a point first used
                layer_attributes = {
                    "visiontel.model.name": model_name,
                    "visiontel.module.name": names[closed],
                }
                self._metrics.layer_duration.record((perf_ns - start_ns) / 1e9, layer_attributes)
                continue
            if with_gpu and start_event is not None and event is not None:
                _set_gpu_times(span, record, start_event, event, start_ns)
            span.end(end_time=perf_ns + to_wall)
        for *_, span in open_calls:  # unmatched calls: close them at the root's end
            if span is not None:
                span.set_attribute("visiontel.module.incomplete", True)
                span.end(end_time=record.wall_ns(record.perf_end_ns))
        if aggregated:
            record.span.set_attribute("visiontel.layers.aggregated", aggregated)
        if with_gpu and record.start_event is not None and record.end_event is not None:
            _set_gpu_times(
                record.span, record, record.start_event, record.end_event, record.perf_start_ns
            )
        record.span.end(end_time=record.wall_ns(record.perf_end_ns))
        self.volume.observe(created + 1)


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
