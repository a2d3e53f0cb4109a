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

from visiontel.torch._failures import record_failure
from visiontel.torch._runtime import default_runtime
from visiontel.torch._safety import report_internal_error

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
    """

    def __init__(
        self,
        name: str,
        *,
        model: str | None = None,
        version: str | None = None,
        attributes: dict[str, Any] | None = None,
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
        self._span: trace.Span | None = None
        self._token: object = None
        self._start_ns = 0

    def _copy(self) -> stage:
        fresh = object.__new__(stage)
        fresh.name = self.name
        fresh._span_attributes = self._span_attributes
        fresh._metric_attributes = self._metric_attributes
        fresh._span, fresh._token, fresh._start_ns = None, None, 0
        return fresh

    def __enter__(self) -> stage:
        self._start_ns = time.perf_counter_ns()
        try:
            span = default_runtime().spans.start(self.name, self._span_attributes)
            self._span = span
            self._token = otel_context.attach(trace.set_span_in_context(span))
        except Exception as exc:
            report_internal_error("stage enter", exc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed_s = (time.perf_counter_ns() - self._start_ns) / 1e9
        try:
            span = self._span
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]
            attributes = self._metric_attributes
            if span is not None and exc is not None and isinstance(exc, Exception):
                attributes = {**attributes, **record_failure(span, exc, None, None)}
            context = None
            if span is not None and span.is_recording():
                context = trace.set_span_in_context(span)
            default_runtime().metrics.duration.record(elapsed_s, attributes, context=context)
            if span is not None:
                span.end()
        except Exception as internal:
            report_internal_error("stage exit", internal)
        finally:
            self._span, self._token = None, None

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
