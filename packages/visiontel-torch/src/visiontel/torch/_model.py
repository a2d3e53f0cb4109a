"""Hooks on one model: a root pair that is always installed, child hooks armed on demand.

Unsampled forwards run with exactly two hooks (the root's); the child probes (_probes.py)
are installed only while at least one sampled forward of this model is in flight, so an
unsampled forward never pays for them.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from visiontel._support.livespans import add_plain_attributes, all_plain
from visiontel.torch import _compiled
from visiontel.torch._config import TorchConfig
from visiontel.torch._failures import record_failure
from visiontel.torch._inputs import InputDescription, attribute_cache, describe_inputs, tensor_type
from visiontel.torch._metrics import DetectionCounter, count_detections
from visiontel.torch._points import record_span_points
from visiontel.torch._record import ForwardRecord, ModuleTable, record_type
from visiontel.torch._runtime import Runtime
from visiontel.torch._safety import report_internal_error
from visiontel.torch._threads import ThreadState, depth, thread_state
from visiontel.torch._timing import EventSource, cuda_event_source
from visiontel.torch._torch_private import (
    compiling_check,
    dynamo_check,
    register_hooks,
    remove_hooks,
)
from visiontel.torch._tree import ProbeTree

_registry: weakref.WeakKeyDictionary[Any, ModelInstrumentation] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


class ModelInstrumentation:
    """Everything visiontel installed on one model; ``remove()`` takes all of it away."""

    def __init__(
        self,
        model: Any,
        config: TorchConfig,
        runtime: Runtime,
        detections: DetectionCounter | None = None,
        event_source: EventSource | None = None,
    ) -> None:
        self.config = config
        self._runtime = runtime
        self._tls: ThreadState = thread_state()  # or its compiled twin, same attribute
        self._detections = detections or count_detections
        self._event_source = event_source
        self._is_compiling = compiling_check()
        self._in_dynamo = dynamo_check()
        self.on_nested: Callable[[Any], None] | None = None  # set for discovered roots
        name = config.model_name or type(model).__name__
        self._span_name = f"inference {name}"
        self._static_attributes: dict[str, Any] = {
            "visiontel.model.name": name,
            "visiontel.model.class": type(model).__qualname__,
            "visiontel.stage": "inference",
        }
        self._metric_attributes: dict[str, Any] = {
            "visiontel.model.name": name,
            "visiontel.stage": "inference",
        }
        if config.model_version:
            self._static_attributes["visiontel.model.version"] = config.model_version
            self._metric_attributes["visiontel.model.version"] = config.model_version
        self._image_attributes = {
            k: v for k, v in self._metric_attributes.items() if k != "visiontel.stage"
        }
        self._add_images = runtime.metrics.images.adder(self._image_attributes)
        # An unsampled forward's points wait here (spans in batch processors only).
        self._unsampled = runtime.metrics.unsampled.forward_points(
            runtime.metrics, self._metric_attributes, self._image_attributes, self
        )
        self._tensor: Any = tensor_type()
        self._make_record = record_type()
        # record_points' memos for a sampled forward's duration and detection points
        self._memos: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self._plain = all_plain(self._static_attributes)
        self._tree = ProbeTree(model, config, self._tls, self._is_compiling)
        self._roots = self._compiled_roots()
        self._root_handles = register_hooks(model, self._root_pre, self._root_post)

    @property
    def table(self) -> ModuleTable:
        return self._tree.table

    @property
    def resolver(self) -> Any:
        return self._runtime.resolver

    def _compiled_roots(self) -> Any:
        """``_speedups.RootHooks`` for this model's one-tensor forwards, or None (pure
        Python: ``_begin``, ``_begin_dropped`` and ``_finish`` do the same)."""
        compiled = _compiled.speedups
        if compiled is None:
            return None
        parts = self._unsampled.parts()
        # sampled forwards in C only with attributes it may copy as they are, and where
        # no event source was given (CPU forwards only get there; a given one times any)
        sampled_ok = self._plain and self._event_source is None
        return compiled.RootHooks(
            state=self._tls,
            depth=depth,
            owner=self._tree,
            tracer=self._runtime.tracer,
            invalid_span=trace.INVALID_SPAN,
            tensor_class=self._tensor,
            count=self._detections,
            count_tensors=self._detections is count_detections,
            durations=parts.durations,
            images=parts.images,
            detections=parts.detections,
            points_owner=parts.owner,
            record_every=parts.record_every,
            name=self._span_name,
            attributes=self._static_attributes if sampled_ok else None,
            describe=self.config.capture_shapes,
            input_cache=attribute_cache,
            describe_inputs=describe_inputs,
            # weakly: RootHooks must not keep this object (and the modules its tree holds)
            # alive in a cycle once the hooks are removed
            instrumentation=weakref.ref(self),
            complete=ModelInstrumentation._complete,
        )

    # -- root hooks ----------------------------------------------------------------------
    def _root_pre(self, model: Any, args: Any, kwargs: Any) -> None:
        if self._is_compiling():
            return
        try:
            if self.on_nested is not None and depth.value:
                self.on_nested(model)  # discovered, but part of a larger model: withdraw
                return
            roots = self._roots
            if roots is not None and roots.begin(model, args, kwargs):
                return  # compiled: what the rest does, while the gate's guard holds
            spans = self._runtime.spans
            dropped = spans.drops_hidden()  # asks the gate: spans.batched is current now
            # A guard still set declined this forward (its inputs, a remote parent, a GPU),
            # it was not broken: it is rebuilt only once a read broke it (begin cleared it),
            # and never for a provider whose spans do not end in batches (none can be).
            if roots is not None and roots.guard is None and spans.batched:
                roots.arm(*spans.compiled_roots())
            if dropped:
                self._begin_dropped(args, kwargs)
            else:
                self._begin(model, args, kwargs)
        except Exception as exc:
            report_internal_error("root pre-hook", exc)

    def _root_post(self, _model: Any, _args: Any, _kwargs: Any, output: Any) -> None:
        # Dynamo traces this body: it must see a no-op. torch.export and torch.jit.trace run
        # it, but the pre-hook stayed silent there and made no record, so there is none to
        # finish (and the tracing check, a call into torch._C, is not made twice a forward).
        if self._in_dynamo():
            return
        try:
            roots = self._roots
            if roots is None or not roots.finish(output):
                self._finish(output)
        except Exception as exc:
            report_internal_error("root post-hook", exc)

    def _begin(self, model: Any, args: Any, kwargs: Any) -> None:
        wall_ns, perf_ns = time.time_ns(), time.perf_counter_ns()
        runtime = self._runtime
        # The root span becomes current only if it records: a dropped one is never seen.
        span = runtime.spans.start(
            self._span_name, self._static_attributes, wall_ns, hidden=True, plain=self._plain
        )
        recording = span.is_recording()
        tree = self._tree
        if recording:
            tree.check(model, perf_ns)
        table = tree.table
        inputs = describe_inputs(args, kwargs, detailed=recording and self.config.capture_shapes)
        record = self._make_record(
            table,
            runtime.tracer,
            span,
            perf_ns,
            wall_ns,
            [] if recording and table.names else None,
            batch_size=inputs.batch_size,
            inputs=inputs,
            previous=self._tls.record,
        )
        if recording:
            if inputs.attributes:
                add_plain_attributes(span, inputs.attributes)
            record.events = self._events_for(inputs)
            if record.events is not None:
                record.start_event = record.events.acquire()
            token = record.context_token = otel_context.attach(trace.set_span_in_context(span))
            if record.stamps is not None:
                record.probes = tree.probes
                try:
                    record.probes.arm()
                except BaseException:
                    otel_context.detach(token)  # the caller's context back, then reported
                    raise
        self._tls.record = record
        depth.value += 1

    def _begin_dropped(self, args: Any, kwargs: Any) -> None:
        """A forward whose span the sampler drops under any parent: its clock, batch size
        and first input are all it keeps (most forwards, where one in a hundred is traced)."""
        first: Any = args[0] if len(args) == 1 and not kwargs else None
        if type(first) is self._tensor:  # model(images): the batch size off its shape
            shape = first.shape
            batch_size = shape[0] if shape else 0
        else:
            inputs = describe_inputs(args, kwargs, detailed=False)
            batch_size, first = inputs.batch_size, inputs.first
        tls = self._tls
        tls.record = self._make_record(
            self._tree.table,
            self._runtime.tracer,
            trace.INVALID_SPAN,
            time.perf_counter_ns(),
            0,
            None,
            batch_size=batch_size,
            inputs=first,  # read only if the forward fails (_failure_attributes)
            previous=tls.record,
        )
        depth.value += 1

    def _finish(self, output: Any) -> None:
        perf_end = time.perf_counter_ns()
        record = self._tls.record
        if record is None:  # hooks installed while this forward was already running
            return
        self._tls.record = record.previous
        depth.value -= 1
        if record.span is trace.INVALID_SPAN and output is not None and self._runtime.spans.batched:
            # dropped, no failure: only points, which wait (nothing else was started)
            self._unsampled.add(
                (perf_end - record.perf_start_ns) / 1e9,
                record.batch_size,
                self._detections(output),  # shapes only, read now: the output is not kept
            )
            return
        record.perf_end_ns = perf_end
        if record.events is not None:
            record.end_event = record.events.acquire()
        if record.context_token is not None:
            otel_context.detach(record.context_token)  # type: ignore[arg-type]
        if record.probes is not None:
            record.probes.disarm()
            self._tree.seen(record.stamps or [])
        failure = sys.exc_info()[1] if output is None else None
        if failure is not None:
            self._complete(record, None, failure, defer_points=False)
            return
        counts = self._detections(output)  # shapes only, read now: the output is not kept
        # Nor the inputs, nor the enclosing forward's record: queued work must not keep
        # tensors (GPU memory) alive for the batch's lifetime.
        record.inputs = record.previous = None
        if self._runtime.spans.batched:
            if not record.span.is_recording():  # nothing to end: only points, which wait
                seconds = (record.perf_end_ns - record.perf_start_ns) / 1e9
                self._unsampled.add(seconds, record.batch_size, counts)
                return
            self._runtime.resolver.later(self._complete, record, counts, None)
        else:
            self._complete(record, counts, None, defer_points=False)

    def _complete(
        self,
        record: ForwardRecord,
        counts: Sequence[int] | None,
        failure: BaseException | None,
        defer_points: bool = True,
    ) -> None:
        """Metric points and span end of a finished forward (inline, or as later work).

        ``defer_points``: run as later work (the compiled hooks queue it so too), the
        sampled points wait for the end of the run, folded in with the others
        (``SampledPoints``); inline, they are recorded now.
        """
        span, perf_end = record.span, record.perf_end_ns
        metrics = self._runtime.metrics
        attributes = self._metric_attributes
        if failure is not None:
            attributes = {
                **attributes,
                **_failure_attributes(span, failure, record),
            }
        recording = span.is_recording()
        seconds = (perf_end - record.perf_start_ns) / 1e9
        # points with exemplars (the span's), added as the SDK adds them
        add_points = metrics.sampled.add if defer_points else record_span_points
        if recording and failure is None:
            add_points(metrics.duration, (seconds,), attributes, span, self._memos[0])
        else:
            context = trace.set_span_in_context(span) if recording else None
            metrics.duration.record(seconds, attributes, context=context)
        if failure is None:
            if record.batch_size:
                self._add_images(record.batch_size)
            if counts is not None:
                if recording:
                    memo = self._memos[1]
                    add_points(metrics.detections, counts, self._image_attributes, span, memo)
                    span.set_attribute("visiontel.detections", sum(counts))
                else:
                    metrics.record_detections(counts, self._image_attributes, None)
        if not recording:
            return
        resolver = self._runtime.resolver
        if record.events is None:
            if record.stamps is None:
                span.end(end_time=record.wall_ns(perf_end))
            else:
                resolver.resolve_inline(record)
            return
        if not resolver.submit(record):
            metrics.dropped.add(1, self._image_attributes)
            span.set_attribute("visiontel.layers.dropped", len(record.stamps or ()) // 2)
            span.end(end_time=record.wall_ns(perf_end))
            record.events.release(record.gpu_events())

    def _events_for(self, inputs: InputDescription) -> EventSource | None:
        if self._event_source is not None:
            return self._event_source
        return cuda_event_source(inputs.device) if inputs.on_cuda else None

    # -- removal -------------------------------------------------------------------------
    def remove(self) -> None:
        self._tree.clear()
        remove_hooks(self._root_handles)


def _failure_attributes(
    span: trace.Span, failure: BaseException, record: ForwardRecord
) -> dict[str, Any]:
    inputs = record.inputs
    if not isinstance(inputs, InputDescription):  # a dropped forward keeps its first input
        inputs = InputDescription(record.batch_size, inputs)
    return record_failure(span, failure, inputs.device, inputs.batch_shape)


def instrumentation_of(model: Any) -> ModelInstrumentation | None:
    with _registry_lock:
        return _registry.get(model)


def register(model: Any, instrumentation: ModelInstrumentation) -> None:
    with _registry_lock:
        _registry[model] = instrumentation


def unregister(model: Any) -> ModelInstrumentation | None:
    with _registry_lock:
        return _registry.pop(model, None)


def all_instrumented() -> list[Any]:
    with _registry_lock:
        return list(_registry.keys())
