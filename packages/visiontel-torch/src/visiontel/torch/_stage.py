"""Named pipeline stages (preprocess, NMS, postprocess...) as spans and duration metrics."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from visiontel._support.livespans import all_plain
from visiontel.torch import _compiled, _runtime
from visiontel.torch._failures import record_failure
from visiontel.torch._points import record_span_points
from visiontel.torch._record import ModuleTable, record_type
from visiontel.torch._runtime import Runtime, default_runtime
from visiontel.torch._safety import report_internal_error
from visiontel.torch._timing import EventSource, GpuEvent, cuda_event_source

F = TypeVar("F", bound=Callable[..., Any])


class stage:
    """Time a named stage of the pipeline as a span and a ``visiontel.inference.duration`` point.

    Use as a context manager or a decorator (sync or async functions)::

        with stage("preprocess"):
            batch = preprocess(frames)

        @stage("nms", model="yolo", version="v8n")
        def nms(raw): ...

    The span becomes current, so a model forward inside the block nests under it. Failures
    inside the block mark the span as an error and propagate unchanged.

    With ``device`` a CUDA device, the block's GPU time is measured too: a pooled CUDA event
    is recorded on the current stream at entry and exit (an enqueue, never a wait), and the
    resolver thread sets ``visiontel.gpu.duration`` and ends the span once both completed.
    ``metric=False`` keeps the span and skips the duration point (for a stage whose
    duration another instrumentation already records, such as an instrumented model).
    """

    def __init__(
        self,
        name: str,
        *,
        model: str | None = None,
        version: str | None = None,
        attributes: dict[str, Any] | None = None,
        device: Any = None,
        metric: bool = True,
        _event_source: EventSource | None = None,
        _runtime: Runtime | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"stage name must be a non-empty string; got {name!r}")
        self.name = name
        self._span_attributes: dict[str, Any] = {"visiontel.stage": name, **(attributes or {})}
        self._metric_attributes: dict[str, Any] = {"visiontel.stage": name}
        for key, value in (("visiontel.model.name", model), ("visiontel.model.version", version)):
            if value:
                self._span_attributes[key] = value
                self._metric_attributes[key] = value
        self._plain = all_plain(self._span_attributes)
        self._fold_memo: dict[str, Any] = {}  # its copies' too (record_points)
        self._device = device
        self._metric = metric
        self._event_source = _event_source
        self._runtime = _runtime  # explicit providers (visiontel-ultralytics); else the default
        self._span: trace.Span | None = None
        self._token: object = None
        self._start_ns = 0
        self._wall_start_ns = 0
        self._start_event: GpuEvent | None = None
        self._hooks: Any = None  # _speedups.StageHooks, made on first entry where usable
        self._compilable: bool | None = None  # whether it can be: not known before then

    def _copy(self) -> stage:
        fresh = object.__new__(stage)
        fresh.name = self.name
        fresh._span_attributes, fresh._plain = self._span_attributes, self._plain
        fresh._metric_attributes, fresh._fold_memo = self._metric_attributes, self._fold_memo
        fresh._device, fresh._event_source = self._device, self._event_source
        fresh._metric, fresh._runtime = self._metric, self._runtime
        fresh._span, fresh._token, fresh._start_ns = None, None, 0
        fresh._wall_start_ns, fresh._start_event = 0, None
        fresh._hooks = self._hooks  # keeps no block's state: shared by the copies
        fresh._compilable = self._compilable
        return fresh

    def __getstate__(self) -> dict[str, Any]:
        # copy, deepcopy and pickle leave the compiled hooks out (they cannot be pickled):
        # the copy makes its own on its first block
        state = dict(self.__dict__)
        state["_hooks"] = None
        return state

    def __enter__(self) -> stage:
        hooks = self._hooks
        if hooks is not None:
            try:
                if hooks.enter(self):
                    return self  # compiled: what follows, while the gate's guard holds
            except Exception as exc:
                report_internal_error("stage enter", exc)
                return self
        self._wall_start_ns = time.time_ns()
        self._start_ns = time.perf_counter_ns()
        try:
            runtime = self._runtime or default_runtime()
            span = runtime.spans.start(
                self.name, self._span_attributes, self._wall_start_ns, plain=self._plain
            )
            self._span = span
            self._token = otel_context.attach(trace.set_span_in_context(span))
            if self._device is not None and span.is_recording():
                events = self._events()
                self._start_event = None if events is None else events.acquire()
            if (  # (checked here: no call per block where the hooks cannot be armed)
                self._start_event is None
                and runtime.spans.batched
                and self._compilable is not False
                and _compiled.speedups is not None
                and (hooks is None or hooks.guard is None)
            ):
                self._arm_hooks(runtime)
        except Exception as exc:
            report_internal_error("stage enter", exc)
        return self

    def _arm_hooks(self, runtime: Runtime) -> None:
        """Make and arm the compiled entry and exit where they can do this stage's blocks
        (``runtime``'s spans end in batches, the extension is built): plain attributes, no
        GPU events (a CPU ``device`` has none)."""
        compiled = _compiled.speedups
        if self._compilable is None:  # asked once: a CUDA device's event source is made here
            gpu = self._device is not None and self._events() is not None
            self._compilable = self._plain and not gpu
        if compiled is None or not self._compilable:
            return
        guard, plan = runtime.spans.compiled_roots()
        if guard is not None and self._runtime is None:
            # the default runtime, read per block in Python, must stay this one
            guard = (*guard, (_runtime, "_default", runtime))
        if self._hooks is None:
            self._hooks = compiled.StageHooks(
                name=self.name,
                attributes=self._span_attributes,
                metric=self._metric_attributes if self._metric else None,
                memo=self._fold_memo,
                stage_end=_StageEnd,
            )
        self._hooks.arm(guard, plan, runtime)

    def _events(self) -> EventSource | None:
        return self._event_source or cuda_event_source(self._device)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        hooks = self._hooks
        if hooks is not None and exc is None and self._start_event is None:
            try:
                if hooks.exit(self):
                    return  # compiled: its point and span's end are later work
            except Exception as internal:
                report_internal_error("stage exit", internal)
                self._span, self._token = None, None
                return
        end_ns = time.perf_counter_ns()
        elapsed_s = (end_ns - self._start_ns) / 1e9
        try:
            span = self._span
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]
            runtime = self._runtime or default_runtime()
            wall_end_ns = self._wall_start_ns + end_ns - self._start_ns
            end = _StageEnd(runtime, elapsed_s, wall_end_ns, self._fold_memo)
            metric = self._metric_attributes if self._metric else None
            if span is not None and exc is not None and isinstance(exc, Exception):
                end.memo = None  # other attributes: recorded through the SDK
                failed = {**self._metric_attributes, **record_failure(span, exc, None, None)}
                end.complete(span, failed if self._metric else None)
            elif span is not None and self._start_event is not None:  # GPU time measured
                end.complete(span, metric, end_span=False)
                if not self._end_after_gpu(span, end_ns):
                    span.end(end_time=end.wall_ns)
            elif runtime.spans.batched:  # later() passes positionally: end_span, defer_points
                runtime.resolver.later(end.complete, span, metric, True, True)
            else:
                end.complete(span, metric)
        except Exception as internal:
            report_internal_error("stage exit", internal)
        finally:
            self._span, self._token, self._start_event = None, None, None

    def _end_after_gpu(self, span: trace.Span, end_ns: int) -> bool:
        """Hand ``span`` to the resolver to end once the block's GPU events completed."""
        start_event, events = self._start_event, self._events()
        if start_event is None or events is None:
            return False
        end_event = events.acquire()
        if end_event is None:
            events.release([start_event])
            return False
        runtime = self._runtime or default_runtime()
        record = record_type()(
            table=_STAGE_TABLE,
            tracer=runtime.tracer,
            span=span,
            perf_start_ns=self._start_ns,
            wall_start_ns=self._wall_start_ns,
            stamps=None,
            events=events,
            start_event=start_event,
            end_event=end_event,
            perf_end_ns=end_ns,
        )
        if runtime.resolver.submit(record):
            return True
        events.release([start_event, end_event])
        return False

    def __call__(self, function: F) -> F:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._copy():
                    return await function(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._copy():
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]


class _StageEnd:
    """What ends one stage: its duration point (with the span as exemplar) and its span's
    end, run inline or as the resolver's later work."""

    __slots__ = ("elapsed_s", "memo", "runtime", "wall_ns")

    def __init__(
        self, runtime: Runtime, elapsed_s: float, wall_ns: int, memo: dict[str, Any] | None
    ) -> None:
        self.runtime, self.elapsed_s, self.wall_ns = runtime, elapsed_s, wall_ns
        self.memo = memo
        """The stage's ``record_points`` memo, for its own metric attributes; else None."""

    def complete(
        self,
        span: trace.Span | None,
        metric_attributes: dict[str, Any] | None,
        end_span: bool = True,
        defer_points: bool = False,
    ) -> None:
        """``end_span=False``: the resolver ends the span once its GPU events completed.
        ``defer_points`` (run as later work): a point with an exemplar waits for the end of
        the run, folded in with the others (``SampledPoints``)."""
        if metric_attributes is not None:
            duration, memo = self.runtime.metrics.duration, self.memo
            live = span if span is not None and span.is_recording() else None
            if live is not None and memo is not None and memo.get("used"):
                # a stage object entered again (kept per pipeline, or a decorator): its point
                # is folded, exemplar included; a stage made per use records once, so the
                # fold's set-up would not pay off
                sampled = self.runtime.metrics.sampled
                add_points = sampled.add if defer_points else record_span_points
                add_points(duration, (self.elapsed_s,), metric_attributes, live, memo)
            else:
                context = None if live is None else trace.set_span_in_context(live)
                duration.record(self.elapsed_s, metric_attributes, context=context)
            if memo is not None:
                memo["used"] = True
        if span is not None and end_span:
            span.end(end_time=self.wall_ns)


# A stage has no module children: the resolver only reads its two events and ends its span.
_STAGE_TABLE = ModuleTable(names=(), classes=(), model_name="", budget=0)
