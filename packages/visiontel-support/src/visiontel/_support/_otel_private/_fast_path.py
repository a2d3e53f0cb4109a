"""``FastPath``: what visiontel's live spans need from one SDK tracer provider, read once
(the gate in ``__init__.py`` decides whether one may be used), and the reads it is built
from: the sampler's fixed decisions, a trace-id ratio's bound, the ``SpanContext``
shortcut, and where the API's runtime context keeps the current span.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)

from visiontel._support._otel_private._batch_queue import queue_fillers

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
RATIO_TRACE_ID_MASK = (1 << 64) - 1
_SAMPLED_BIT = int(TraceFlags.SAMPLED)
"""The bits of a trace id ``TraceIdRatioBased`` compares with its bound (``root_ratio_bound``)."""
_MISSING = object()


class FastPath:
    """What visiontel's live spans need from one SDK tracer provider, read once."""

    live_span_types: tuple[type, ...] = ()
    """Span classes that keep their ``SpanContext`` in a ``context`` attribute (visiontel's
    live spans: ``livespans`` sets this, as it cannot be imported here)."""

    def __init__(
        self,
        provider: Any,
        tracer: Any,
        scope: tuple[str, str | None, str | None],
        counters_waiting: list[Any],
    ) -> None:
        from opentelemetry.sdk.trace import ReadableSpan, _Span
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._provider = provider
        self._processor = provider._active_span_processor
        self._processors = self._processor._span_processors
        self._resource = provider.resource
        self._tracer = tracer
        self._counters_waiting = counters_waiting
        self._decisions = _static_decisions(tracer.sampler)
        # the decision for any parent, where the sampler's is the same for all (always_off,
        # always_on, or a parent-based sampler with one delegate everywhere), else None
        self.fixed_decision = self._decisions[0] if len(set(self._decisions)) == 1 else None
        self.root_ratio_bound = _root_ratio_bound(tracer.sampler)
        self._limits = tracer._span_limits
        self._is_enabled = getattr(tracer, "_is_enabled", None)  # the SDK's tracer configurator
        self._sdk_span_class = _Span
        self._readable_span = ReadableSpan
        self.on_end = self._processor.on_end
        self.new_span_id = provider.id_generator.generate_span_id
        # The SDK's RandomIdGenerator draws ids with random.getrandbits (retrying 0): the
        # compiled code calls that directly, and retries 0 itself.
        self._draw_bits = (
            random.getrandbits if type(provider.id_generator) is RandomIdGenerator else None
        )
        self._span_id_bits = (
            functools.partial(random.getrandbits, 64)
            if self._draw_bits is not None
            else self.new_span_id
        )
        self.new_trace_id = provider.id_generator.generate_trace_id
        instrumentation_scope = InstrumentationScope(*scope)
        # Every field a ReadableSpan gets from its constructor, as that constructor sets
        # them: a finished span is this template's fields plus its own name, ids, times and
        # attributes (a third of the cost of the keyword-heavy constructor).
        template = ReadableSpan(
            "template", resource=self._resource, instrumentation_scope=instrumentation_scope
        )
        self._template = dict(vars(template))
        self.new_context = _context_factory()
        self._context_class = SpanContext if self.new_context.__name__ == "direct" else None
        self._span_slot = _context_slot()
        # Every processor queues spans for a later export anyway: ending ours a little later,
        # in a batch, changes nothing a reader of the exported spans can see.
        self.batched = all(type(p) is BatchSpanProcessor for p in self._processors)
        # where each batch processor's queue is laid out as known, spans go straight into it
        fillers = queue_fillers(self._processors) if self.batched else None
        self.on_end_many: Callable[[list[Any]], None] | None = None
        if fillers is not None:
            self.on_end_many, self.on_end = fillers
        self.max_attributes = self._limits.max_span_attributes
        self.max_attribute_length = self._limits.max_span_attribute_length
        # What the compiled ``layer_spans`` (csrc/) builds finished spans from, in its
        # argument order: the class, template, factories and limits ``finished_span`` and
        # ``limited`` use (the SpanContext class where a tuple may be built directly).
        self.span_parts: tuple[Any, ...] = (
            self._readable_span,
            self._template,
            self._span_id_bits,
            self.new_context,
            self._context_class,
            self.limited,
            SAMPLED,
            self.max_attributes,
            self.max_attribute_length is not None,
            # a forward's span ids drawn in one call, where they are the SDK's random ones
            self._draw_bits,
        )

    def stale(self) -> bool:
        """A processor was added, the resource changed (a forked child) or a meter provider
        arrived for the SDK's own span metrics: ask the gate again."""
        return (
            self._processor._span_processors is not self._processors
            or self._provider._resource is not self._resource  # (the property, without its call)
            or (  # (no generator made per call when nothing waits: this runs per span)
                bool(self._counters_waiting)
                and any(c._real_instrument is not None for c in self._counters_waiting)
            )
        )

    def roots_guard(self, global_provider: bool) -> tuple[tuple[Any, str, Any], ...] | None:
        """Attribute reads that give the same objects for as long as this path stays current
        and enabled and its spans end in batches, or None where that is not so now or cannot
        be put this way. ``_speedups.RootHooks`` checks them before each forward instead of
        asking ``stale`` and ``enabled``.

        ``global_provider``: the provider is the global one, which must stay so.
        """
        if not self.batched or not self.enabled():
            return None
        checks: list[tuple[Any, str, Any]] = [
            (self._processor, "_span_processors", self._processors),
            (self._provider, "_resource", self._resource),
        ]
        checks += [(counter, "_real_instrument", None) for counter in self._counters_waiting]
        if self._is_enabled is not None:
            enabled_check = self._enabled_check()
            if enabled_check is None:
                return None  # asked through enabled() before every forward instead
            checks.append(enabled_check)
        if global_provider:
            checks.append((trace, "_TRACER_PROVIDER", self._provider))
        if any(getattr(owner, name, _MISSING) is not expected for owner, name, expected in checks):
            return None  # an SDK whose attributes are not these
        return tuple(checks)

    def sampling_parts(self) -> tuple[Any, ...]:
        """What ``_speedups.RootHooks`` decides and starts a root span with, in its plan's
        order: every span dropped; the decisions for a new trace, a local sampled parent
        and a local dropped parent (True, False, or None: ask); the trace-id ratio bound;
        the context's ContextVar, span key and class (None where the API keeps them
        otherwise: then only dropped forwards are compiled); the SpanContext class where a
        tuple may be built directly; ``random.getrandbits`` where ids are the SDK's
        random ones."""
        slot = _context_slot() or (None, None, None)
        return (
            self.fixed_decision is False,
            self._decisions[:3],
            self.root_ratio_bound,
            *slot,
            self._context_class,
            self._draw_bits,
        )

    def _enabled_check(self) -> tuple[Any, str, Any] | None:
        """An attribute read that stands for ``enabled()`` staying True, or None.

        SDKs with tracer configurators keep the answer in one of two places: the tracer's
        ``_tracer_config`` (set whenever the configurator changes), or, in earlier ones,
        the provider's configurator, called per span. A configurator may answer anything,
        so only the SDK's default one (always enabled) is taken as fixed.
        """
        from opentelemetry.sdk import trace as sdk_trace

        tracer = self._tracer
        config = getattr(tracer, "_tracer_config", None)
        if config is not None:
            return (tracer, "_tracer_config", config) if config.is_enabled is True else None
        owner = getattr(tracer, "_tracer_provider", _MISSING)
        if owner is None:  # a tracer without a provider is always enabled
            return (tracer, "_tracer_provider", None)
        configurator = getattr(owner, "_tracer_configurator", None)
        default = getattr(sdk_trace, "_default_tracer_configurator", _MISSING)
        if configurator is default:
            return (owner, "_tracer_configurator", configurator)
        return None

    def enabled(self) -> bool:
        """False while the SDK's tracer configurator turns this scope's tracer off."""
        return self._is_enabled is None or bool(self._is_enabled())

    def decide(self, parent: SpanContext) -> bool | None:
        """The sampler's decision for a new span under ``parent`` when it is fixed, else None.

        Only the SDK's static samplers, alone or as ``ParentBased`` delegates, are decided
        here (read once, in ``_decisions``); any other sampler is asked through the SDK.
        """
        root, local_sampled, local_dropped, remote_sampled, remote_dropped = self._decisions
        if self._context_class is not None and type(parent) is SpanContext:
            # its tuple fields, as ``_context_factory`` checked them: four property calls fewer
            valid, remote, sampled = parent[5], parent[2], parent[3] & _SAMPLED_BIT
        else:
            valid, remote, sampled = parent.is_valid, parent.is_remote, parent.trace_flags.sampled
        if not valid:
            return root
        if remote:
            return remote_sampled if sampled else remote_dropped
        return local_sampled if sampled else local_dropped

    def current_parent(self) -> SpanContext:
        """``trace.get_current_span().get_span_context()``, read from the context's
        ``ContextVar`` (where ``_context_slot`` checked that layout) for a live span, a
        remote parent's ``NonRecordingSpan`` or no span; the API's calls otherwise."""
        slot = self._span_slot
        if slot is not None:
            context = slot[0].get(None)
            span = None if context is None else context.get(slot[1])
            kind = type(span)
            if kind in self.live_span_types:
                return span.context  # type: ignore[union-attr,no-any-return]
            if kind is NonRecordingSpan:
                return span.get_span_context()  # type: ignore[union-attr,no-any-return]
            if span is None:
                return INVALID_SPAN_CONTEXT
        return trace.get_current_span().get_span_context()

    def child_context(self, parent: SpanContext) -> SpanContext | None:
        """The context of a new sampled local span under ``parent`` (same trace and trace
        state, a new span id), or None where ``parent`` is not valid (a new trace)."""
        if self._context_class is not None and type(parent) is SpanContext:
            if not parent[5]:
                return None
            draw = self._draw_bits  # the SDK's random ids: its draw, without its method call
            span_id = (draw(64) or self.new_span_id()) if draw is not None else self.new_span_id()
            return tuple.__new__(SpanContext, (parent[0], span_id, False, SAMPLED, parent[4], True))
        if not parent.is_valid:
            return None
        child: SpanContext = self.new_context(
            parent.trace_id, self.new_span_id(), SAMPLED, parent.trace_state
        )
        return child

    def self_check(self) -> None:
        """Raise if a span built here would differ from the SDK's (an unknown SDK layout)."""
        context = self.new_context(1, 1, SAMPLED, TraceState())
        self.unstarted_sdk_span("probe", context, None, {})  # never started or ended
        consumer = trace.SpanKind.CONSUMER
        built = self.finished_span("probe", context, None, {"k": 1}, 5, 7, consumer)
        if (built.name, built.context, built.start_time, built.end_time, built.kind) != (
            "probe",
            context,
            5,
            7,
            consumer,
        ) or built.resource is not self._resource:
            raise ValueError("finished span layout differs")

    def finished_span(  # noqa: PLR0917 (positional: called once per span)
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: Mapping[str, Any],
        start_ns: int,
        end_ns: int | None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    ) -> Any:
        span = object.__new__(self._readable_span)
        fields = self._template.copy()
        if kind is not trace.SpanKind.INTERNAL:  # the template's
            fields["_kind"] = kind
        fields["_name"], fields["_context"], fields["_parent"] = name, context, parent
        fields["_attributes"], fields["_start_time"], fields["_end_time"] = (
            attributes,
            start_ns,
            end_ns,
        )
        span.__dict__ = fields
        return span

    def limited(self, attributes: dict[str, Any]) -> Any:
        """``attributes`` as the SDK stores them under this provider's span limits."""
        if self.max_attribute_length is None and (
            self.max_attributes is None or len(attributes) <= self.max_attributes
        ):
            return attributes
        from opentelemetry.attributes import BoundedAttributes

        return BoundedAttributes(
            self.max_attributes, attributes, immutable=True, max_value_len=self.max_attribute_length
        )

    def unstarted_sdk_span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
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
            kind=kind,
            instrumentation_info=tracer.instrumentation_info,
            limits=self._limits,
            instrumentation_scope=tracer._instrumentation_scope,
        )
        return sdk_span


@functools.cache
def _context_slot() -> tuple[Any, str, type] | None:
    """The OpenTelemetry context's ContextVar, the current span's key in it and the
    ``Context`` class, where the API keeps them as read here (checked once by attaching a
    span through the public API and reading it back), else None."""
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY

        runtime = otel_context._RUNTIME_CONTEXT
        variable = getattr(runtime, "_current_context", None)
        if type(runtime) is not ContextVarsRuntimeContext or type(variable) is not ContextVar:
            return None
        probe = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        token = otel_context.attach(trace.set_span_in_context(probe))
        try:
            current = variable.get()
            same = (
                type(current) is otel_context.Context
                and current.get(_SPAN_KEY) is probe
                and trace.get_current_span() is probe
            )
        finally:
            otel_context.detach(token)
    except (ImportError, AttributeError, TypeError, LookupError):
        return None
    return (variable, _SPAN_KEY, otel_context.Context) if same else None


def _static_decisions(sampler: Any) -> tuple[bool | None, ...]:
    """(root, local sampled, local dropped, remote sampled, remote dropped) parents: True
    where the sampler always keeps a new span, False where it always drops it, None where
    it must be asked."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    def fixed(delegate: Any) -> bool | None:
        return True if delegate is ALWAYS_ON else False if delegate is ALWAYS_OFF else None

    if type(sampler) is not ParentBased:
        return (fixed(sampler),) * 5
    return (
        fixed(sampler._root),
        fixed(sampler._local_parent_sampled),
        fixed(sampler._local_parent_not_sampled),
        fixed(sampler._remote_parent_sampled),
        fixed(sampler._remote_parent_not_sampled),
    )


def _root_ratio_bound(sampler: Any) -> int | None:
    """The bound a new trace's id is compared with where the sampler decides new traces by
    the SDK's ``TraceIdRatioBased`` (alone, or as a ``ParentBased`` root: the usual
    ``parentbased_traceidratio``), else None.

    ``TraceIdRatioBased`` keeps a trace when ``trace_id & TRACE_ID_LIMIT < bound``, adds no
    attribute and passes no trace state to a root: deciding here, with the trace id the SDK
    would have drawn first, gives the span (or the dropped span) the tracer would.
    """
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    root = sampler._root if type(sampler) is ParentBased else sampler
    if type(root) is not TraceIdRatioBased or root.TRACE_ID_LIMIT != RATIO_TRACE_ID_MASK:
        return None
    return int(root.bound)


def _context_factory() -> Any:
    """A constructor for local SpanContexts whose ids are known to be valid.

    ``SpanContext`` is a tuple; building the tuple directly skips re-validating ids that
    come from a valid parent and the SDK's id generator. The shortcut is used only if it
    gives exactly what the constructor gives on this API version.
    """

    def checked(trace_id: int, span_id: int, flags: Any, state: Any) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)

    def direct(trace_id: int, span_id: int, flags: Any, state: Any) -> SpanContext:
        return tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, True))

    sample = (0x5A5A << 64 | 0x1234, 0x77, SAMPLED, TraceState())
    try:
        expected, candidate = checked(*sample), direct(*sample)
        same = (
            tuple(expected) == tuple(candidate)
            and expected.is_valid == candidate.is_valid
            and expected.span_id == candidate.span_id
            and expected.trace_flags == candidate.trace_flags
        )
    except Exception:
        same = False
    return direct if same else checked
