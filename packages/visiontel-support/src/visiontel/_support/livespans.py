"""Cheap live spans for visiontel's own spans: visiontel-torch's stages and forward roots,
visiontel-propagation's frame spans.

Every frame opens a few spans of ours: the frame's span at each hop, the stages around the
model and the forward's root span. Through the SDK each one costs ~30 µs on a warm 2-core
VM and several times that right after a forward has flushed the caches. Where the SDK's
start-up work cannot change the outcome (``_otel_private.fast_path_for`` decides: static
samplers, processors that do nothing in ``on_start``, no SDK self-metrics, a tested SDK
release), ``LiveSpans.start`` hands out a ``_LiveSpan``: the ids, kind, start time and
plain attributes in a small object, ended by building the finished ``ReadableSpan``
directly. A span the sampler drops is the same non-recording span the SDK would return,
without asking it.

Anything else asked of a live span (events, exceptions, status, links, renaming, attribute
values that need the SDK's checks) first promotes it to a real SDK span with the same ids,
parent, kind, start time and attributes, so that work follows the installed SDK exactly.
Any other configuration, or an SDK the gate does not know, gets spans from the tracer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util import types

from visiontel._support._otel_private import (
    RATIO_TRACE_ID_MASK,
    SAMPLED,
    FastPath,
    fast_path_for,
)
from visiontel._support.spanends import gathering, hand_over

# Values the SDK stores unchanged when no attribute length limit is set.
_PLAIN = (str, bool, int, float)
_NOT_PLAIN = object()
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_NO_STATE = TraceState()


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
    """Starts one instrumentation scope's spans: live spans where safe, else the tracer's."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        tracer: trace.Tracer,
        scope: tuple[str, str | None, str | None],
    ) -> None:
        """``tracer`` and ``scope`` name the same instrumentation scope (the tracer's spans
        and the live spans must be indistinguishable)."""
        self._explicit_provider = tracer_provider
        self._tracer = tracer
        self._scope = scope
        self._provider: object = None
        self._path: FastPath | None = None
        self.batched = False
        """Spans end in batched processors only: the end of a forward may run as later work."""
        self.later: Callable[..., None] | None = None
        """Where later work goes (the runtime's resolver); a live span's end goes there when
        ``batched``."""

    def start(
        self,
        name: str,
        attributes: Mapping[str, Any],
        start_time: int | None = None,
        *,
        hidden: bool = False,
        context: Context | None = None,
        plain: bool = False,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    ) -> trace.Span:
        """A span named ``name`` under the span of ``context`` (default: the current one),
        local or remote; ``attributes`` is not kept.

        ``hidden``: the caller never makes a dropped span current nor hands it out, so a
        span the sampler drops need not carry ids of its own.
        """
        path = self.current_path()
        if path is not None:
            if hidden and path.fixed_decision is False and path.enabled():
                return trace.INVALID_SPAN  # dropped under any parent: no need to look it up
            parent = (
                path.current_parent()
                if context is None
                else trace.get_current_span(context).get_span_context()
            )
            if path.enabled():
                decision, trace_id = path.decide(parent), None
                if decision is None and path.root_ratio_bound is not None and not parent.is_valid:
                    # a new trace under a trace-id ratio: its id decides, drawn as the SDK would
                    trace_id = path.new_trace_id()
                    decision = trace_id & RATIO_TRACE_ID_MASK < path.root_ratio_bound
                if decision:
                    span = _start_live(
                        path,
                        name,
                        parent,
                        attributes,
                        start_time,
                        plain_values=plain,
                        trace_id=trace_id,
                        kind=kind,
                    )
                    if self.batched:
                        span._later = self.later
                    return span
                if decision is False:
                    return trace.INVALID_SPAN if hidden else _dropped(path, parent, trace_id)
        return self._tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=start_time
        )

    def drops_hidden(self) -> bool:
        """Whether ``start(..., hidden=True)`` would give ``INVALID_SPAN`` now, under any
        parent (the sampler drops every span): the caller need not start one."""
        path = self.current_path()
        return path is not None and path.fixed_decision is False and path.enabled()

    def compiled_roots(self) -> tuple[Any, Any]:
        """(guard, plan) for ``_speedups.RootHooks.arm``, or (None, None) where no root may
        be begun there now: ``FastPath.roots_guard`` of the provider in use (what keeps
        its answers fixed) and what the compiled root hooks decide and start spans with,
        in the plan's order (``csrc/roots.h``)."""
        path = self.current_path()
        guard = None if path is None else path.roots_guard(self._explicit_provider is None)
        if path is None or guard is None or self.later is None:
            return None, None
        plan = (
            *path.sampling_parts(),
            _LiveSpan,
            path,
            self.later,
            SAMPLED,
            _NO_STATE,
            trace.Span,
            otel_context.detach,
        )
        return guard, plan

    def current_path(self) -> FastPath | None:
        """The gate's answer for the provider in use, asked again when it may have changed."""
        provider = self._explicit_provider or trace.get_tracer_provider()
        path = self._path
        if provider is not self._provider or (path is not None and path.stale()):
            path = self._path = fast_path_for(provider, self._scope)
            self._provider = provider
            self.batched = path is not None and path.batched
        return self._path


def _start_live(
    path: FastPath,
    name: str,
    parent: SpanContext,
    attributes: Mapping[str, Any],
    start_time: int | None,
    *,
    plain_values: bool,
    trace_id: int | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
) -> _LiveSpan:
    context = path.child_context(parent)
    parent_context: SpanContext | None = parent
    if context is None:  # a new trace (its id already drawn where the sampler needed it)
        new_trace = path.new_trace_id() if trace_id is None else trace_id
        context = path.new_context(new_trace, path.new_span_id(), SAMPLED, _NO_STATE)
        parent_context = None
    plain: dict[str, Any] = {}
    needs_sdk = False
    if plain_values:
        plain.update(attributes)
    else:
        for key, value in attributes.items():
            if type(value) in _PLAIN:  # (``_plain``'s first test, inline: most values pass it)
                plain[key] = value
                continue
            stored = _plain(value)
            if stored is _NOT_PLAIN:
                needs_sdk = True
            else:
                plain[key] = stored
    start_ns = start_time or time.time_ns()
    if kind is trace.SpanKind.INTERNAL:
        span = _LiveSpan(path, name, context, parent_context, plain, start_ns)
    else:
        span = _LiveSpanOfKind(path, name, context, parent_context, plain, start_ns)
        span.kind = kind
    if needs_sdk:  # mixed sequences and other values: let the SDK check them
        span.promoted().set_attributes(attributes)
    return span


def _dropped(path: FastPath, parent: SpanContext, new_trace: int | None = None) -> trace.Span:
    """The non-recording span the SDK returns when its sampler drops a new span."""
    if parent.is_valid:
        trace_id, state = parent.trace_id, parent.trace_state
    else:
        trace_id, state = path.new_trace_id() if new_trace is None else new_trace, _NO_STATE
    return NonRecordingSpan(path.new_context(trace_id, path.new_span_id(), _NOT_SAMPLED, state))


def all_plain(attributes: Mapping[str, Any]) -> bool:
    """Whether every value is stored by the SDK as it is (lists excepted: stored as tuples)."""
    return all(type(v) is not list and _plain(v) is not _NOT_PLAIN for v in attributes.values())


def add_plain_attributes(span: trace.Span, attributes: Mapping[str, Any]) -> None:
    """Add attributes whose values are already stored as the SDK stores them (str, bool,
    int, float, homogeneous tuples), without checking each one again on a live span."""
    kind = type(span)  # (not isinstance: trace.Span is an ABC, slow to ask)
    if kind is _LiveSpan or kind is _LiveSpanOfKind:
        # (no typing.cast: it is a call)
        live: _LiveSpan = span  # type: ignore[assignment]
        if not live._ended and live._sdk_span is None:
            live.attributes.update(attributes)
            return
    span.set_attributes(attributes)


def _finish(span: _LiveSpan, end_time: int) -> None:
    path = span._path
    finished = path.finished_span(
        span.name,
        span.context,
        span.parent,
        path.limited(span.attributes),
        span.start_ns,
        end_time,
        span.kind,
    )
    if gathering.spans is None:  # (``hand_over``'s test, inline: one call fewer per span)
        path.on_end(finished)
    else:
        hand_over(path, finished)


def _promote(span: _LiveSpan) -> trace.Span:
    sdk_span = span._path.unstarted_sdk_span(
        span.name, span.context, span.parent, span.attributes, span.kind
    )
    sdk_span.start(start_time=span.start_ns)  # type: ignore[attr-defined]
    return sdk_span


class _LiveSpan(trace.Span):
    """A recording span that is cheap until something beyond plain attributes is asked of it."""

    kind = trace.SpanKind.INTERNAL  # a class attribute: the compiled root hooks set no kind

    __slots__ = (
        "_ended",
        "_later",
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
        path: FastPath,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start_ns: int,
    ) -> None:
        self._path, self.name, self.context, self.parent = path, name, context, parent
        self.attributes, self.start_ns = attributes, start_ns
        self._sdk_span: trace.Span | None = None
        self._ended = False
        self._later: Callable[..., None] | None = None

    def promoted(self) -> trace.Span:
        """The SDK span this live span hands its work to from now on."""
        if self._sdk_span is None:
            self._sdk_span = _promote(self)
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
        end_ns = end_time if end_time is not None else time.time_ns()
        if self._later is not None:  # built and handed to the processors as later work
            self._later(_finish, self, end_ns)
        else:
            _finish(self, end_ns)

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


class _LiveSpanOfKind(_LiveSpan):
    """A live span of another kind than internal (a frame's consumer or producer span)."""

    __slots__ = ("kind",)  # (shadows the base's class attribute)
    kind: trace.SpanKind


FastPath.live_span_types = (_LiveSpan, _LiveSpanOfKind)  # read by FastPath.current_parent

__all__: Sequence[str] = ("LiveSpans",)
