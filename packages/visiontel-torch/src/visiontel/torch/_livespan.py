"""Cheap live spans for visiontel-torch's own stage and forward spans.

Every frame opens a few spans of ours: the stages around the model and the forward's root
span. Through the SDK each one costs ~30 µs on a warm 2-core VM and several times that
right after a forward has flushed the caches. Under a local sampled parent, with the usual
set-up, nothing in the SDK's start-up work can change the outcome: a parent-based (or
always-on) sampler gives the parent's decision, the batch and simple processors ignore
``on_start``, and the SDK is not counting its own spans. Then ``LiveSpans.start`` hands out a
``_LiveSpan``: the ids, start time and plain attributes in a small object, ended by building
the finished ``ReadableSpan`` from the template the child spans use (``_children.py``).

Anything else asked of a live span (events, exceptions, status, links, renaming, attribute
values that need the SDK's checks) first promotes it to a real SDK span with the same ids,
parent, start time and attributes, so that work follows the installed SDK exactly. Any
other configuration, or an SDK whose pieces differ from what is checked here, gets spans
from the tracer as before.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceState
from opentelemetry.util import types

from visiontel.torch._children import SdkChildren
from visiontel.torch.version import SCHEMA_URL, __version__

# Values the SDK stores unchanged when no attribute length limit is set.
_PLAIN = (str, bool, int, float)
_NOT_PLAIN = object()


def _plain(value: Any) -> Any:
    """``value`` as the SDK would store it, if that needs no check beyond its type."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is tuple or kind is list:  # a homogeneous sequence is stored as a tuple
        first = type(value[0]) if value else str
        if first in _PLAIN and all(type(item) is first for item in value):
            return tuple(value)
    return _NOT_PLAIN


class LiveSpans:
    """Starts visiontel-torch's stage and root spans: live spans where safe, else the tracer's."""

    def __init__(self, tracer_provider: trace.TracerProvider | None, tracer: trace.Tracer) -> None:
        self._explicit_provider = tracer_provider
        self._tracer = tracer
        self._provider: object = None
        self._path: _FastPath | None = None

    def start(
        self, name: str, attributes: Mapping[str, Any], start_time: int | None = None
    ) -> trace.Span:
        """A span named ``name`` under the current span; ``attributes`` is not kept."""
        path = self._current_path()
        if path is not None:
            parent = trace.get_current_span().get_span_context()
            if parent.trace_flags.sampled and not parent.is_remote and path.enabled():
                return path.start(name, parent, attributes, start_time)
        return self._tracer.start_span(name, attributes=attributes, start_time=start_time)

    def _current_path(self) -> _FastPath | None:
        provider = self._explicit_provider or trace.get_tracer_provider()
        path = self._path
        if provider is not self._provider or (path is not None and path.stale()):
            self._path = _FastPath.build(provider)
            self._provider = provider
        return self._path


class _FastPath:
    """What a live span needs from one SDK tracer provider, checked once."""

    def __init__(self, provider: Any, tracer: Any, sdk_span_class: type, children: Any) -> None:
        self._processor = provider._active_span_processor
        self._processors = self._processor._span_processors
        self._tracer = tracer
        self._sdk_span_class = sdk_span_class
        self._children = children
        self._new_span_id = provider.id_generator.generate_span_id
        self._is_enabled = getattr(tracer, "_is_enabled", None)
        self.finished_span = children.finished_span
        self.new_context = children.new_context
        limits = tracer._span_limits
        self._max_attributes = limits.max_span_attributes
        self._max_length = limits.max_span_attribute_length

    @classmethod
    def build(cls, provider: Any) -> _FastPath | None:
        try:
            from opentelemetry.sdk.trace import Tracer as SdkTracer
            from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
            from opentelemetry.sdk.trace import _Span
        except ImportError:
            return None
        if type(provider) is not SdkTracerProvider:  # a subclass may change span creation
            return None
        try:
            tracer = provider.get_tracer("visiontel.torch", __version__, schema_url=SCHEMA_URL)
            if type(tracer) is not SdkTracer or not _outcome_is_fixed(provider, tracer):
                return None
            path = cls(provider, tracer, _Span, SdkChildren(provider))
            # Fail here, not on the first promotion, if the constructor wants other arguments.
            probe = path.new_context(1, 1, trace.TraceFlags(trace.TraceFlags.SAMPLED), TraceState())
            path.unstarted_sdk_span("probe", probe, None, {})  # never started or ended
        except (AttributeError, TypeError):  # an SDK release without the pieces used here
            return None
        return path

    def stale(self) -> bool:
        """A span processor was added since the check: check again."""
        return self._processor._span_processors is not self._processors

    def enabled(self) -> bool:
        """False while the SDK's tracer configurator turns visiontel.torch's tracer off."""
        return self._is_enabled is None or bool(self._is_enabled())

    def start(
        self,
        name: str,
        parent: SpanContext,
        attributes: Mapping[str, Any],
        start_time: int | None,
    ) -> _LiveSpan:
        context = self.new_context(
            parent.trace_id, self._new_span_id(), parent.trace_flags, parent.trace_state
        )
        plain = {}
        needs_sdk = False
        for key, value in attributes.items():
            stored = _plain(value)
            if stored is _NOT_PLAIN:
                needs_sdk = True
            else:
                plain[key] = stored
        span = _LiveSpan(self, name, context, parent, plain, start_time or time.time_ns())
        if needs_sdk:  # mixed sequences and other values: let the SDK check them
            span.promoted().set_attributes(attributes)
        return span

    def finish(self, span: _LiveSpan, end_time: int) -> None:
        attributes: Any = span.attributes
        if self._max_length is not None or (
            self._max_attributes is not None and len(attributes) > self._max_attributes
        ):
            from opentelemetry.attributes import BoundedAttributes

            attributes = BoundedAttributes(
                self._max_attributes, attributes, immutable=True, max_value_len=self._max_length
            )
        self._children.on_end(
            self.finished_span(
                span.name, span.context, span.parent, attributes, span.start_ns, end_time
            )
        )

    def promote(self, span: _LiveSpan) -> trace.Span:
        sdk_span = self.unstarted_sdk_span(span.name, span.context, span.parent, span.attributes)
        sdk_span.start(start_time=span.start_ns)  # type: ignore[attr-defined]
        return sdk_span

    def unstarted_sdk_span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
    ) -> trace.Span:
        """The SDK span the tracer would make with these ids, not yet started."""
        tracer = self._tracer
        sdk_span: trace.Span = self._sdk_span_class(
            name=name,
            context=context,
            parent=parent,
            sampler=tracer.sampler,
            resource=tracer.resource,
            attributes=attributes,
            span_processor=tracer.span_processor,
            kind=trace.SpanKind.INTERNAL,
            instrumentation_info=tracer.instrumentation_info,
            limits=tracer._span_limits,
            instrumentation_scope=tracer._instrumentation_scope,
        )
        return sdk_span


def _outcome_is_fixed(provider: Any, tracer: Any) -> bool:
    """Whether a local sampled parent alone decides a child span, with no other side effect."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    sampler = tracer.sampler
    keeps_children = getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
    if sampler is not ALWAYS_ON and not (type(sampler) is ParentBased and keeps_children):
        return False
    processors = provider._active_span_processor._span_processors
    if any(type(p) not in (BatchSpanProcessor, SimpleSpanProcessor) for p in processors):
        return False  # another processor may act in on_start, which live spans skip
    counting = getattr(tracer, "_tracer_metrics", None)  # the SDK's own span metrics
    return counting is None or type(counting).__name__ == "NoOpTracerMetrics"


class _LiveSpan(trace.Span):
    """A recording span that is cheap until something beyond plain attributes is asked of it."""

    __slots__ = (
        "_ended",
        "_path",
        "_sdk_span",
        "attributes",
        "context",
        "name",
        "parent",
        "start_ns",
    )

    def __init__(  # noqa: PLR0917 (positional: one is made per stage and forward)
        self,
        path: _FastPath,
        name: str,
        context: SpanContext,
        parent: SpanContext,
        attributes: dict[str, Any],
        start_ns: int,
    ) -> None:
        self._path, self.name, self.context, self.parent = path, name, context, parent
        self.attributes, self.start_ns = attributes, start_ns
        self._sdk_span: trace.Span | None = None
        self._ended = False

    def promoted(self) -> trace.Span:
        """The SDK span this live span hands its work to from now on."""
        if self._sdk_span is None:
            self._sdk_span = self._path.promote(self)
        return self._sdk_span

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        if self._sdk_span is not None:
            return self._sdk_span.is_recording()
        return not self._ended

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._sdk_span is None and type(key) is str and key:
            stored = _plain(value)
            if stored is not _NOT_PLAIN:
                if not self._ended:
                    self.attributes[key] = stored
                return
        if self._ended and self._sdk_span is None:
            return  # the SDK ignores attributes on an ended span too
        self.promoted().set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if self._live_or_promoted():
            self.promoted().add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._live_or_promoted():
            self.promoted().add_link(context, attributes)

    def update_name(self, name: str) -> None:
        if self._live_or_promoted():
            self.promoted().update_name(name)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._live_or_promoted():
            self.promoted().set_status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        if self._live_or_promoted():
            self.promoted().record_exception(exception, attributes, timestamp, escaped)

    def end(self, end_time: int | None = None) -> None:
        if self._sdk_span is not None:
            self._sdk_span.end(end_time)
            return
        if self._ended:
            return
        self._ended = True
        self._path.finish(self, end_time if end_time is not None else time.time_ns())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self._live_or_promoted():
            self.promoted().__exit__(exc_type, exc_val, exc_tb)  # the SDK records it
            return
        self.end()

    def _live_or_promoted(self) -> bool:
        return self._sdk_span is not None or not self._ended

    def __repr__(self) -> str:
        return f"_LiveSpan(name={self.name!r}, context={self.context!r})"


__all__: Sequence[str] = ("LiveSpans",)
