"""Every use of an OpenTelemetry SDK or API internal that visiontel's live spans need, behind
one gate (visiontel-torch's stage, forward and layer spans; visiontel-propagation's frame
spans).

A live span is made without the SDK's ``start_span`` where nothing in the SDK's start-up
work could change the outcome: the finished ``ReadableSpan`` is built directly and handed
to the span processors' ``on_end``. That needs pieces the SDK keeps private (the provider's
processor list, the tracer's span limits and sampler delegates, ``_Span``'s constructor, the
batch processor's queue) and two API shortcuts: a ``SpanContext`` tuple built without
re-validating known-good ids, and, for visiontel-torch's compiled root hooks, where the
API's runtime context keeps the current span (its ``ContextVar`` and key,
``_fast_path._context_slot``: checked once through the public API, None otherwise; also
``context_slot()``, for visiontel-propagation's frame scopes).
``FastPath`` (``_fast_path.py``) holds what a provider the gate admits gives its spans; the
batch queue's bulk fill is in ``_batch_queue.py``.

``fast_path_for(provider, scope)`` is the one gate. It gives a ``FastPath`` only when all of
these hold, and ``None`` (use the public API) otherwise:

* the installed opentelemetry-sdk is inside ``TESTED_SDK``, the releases CI runs against
  (past it, the gate says so once in the log and stays shut);
* the provider and its tracer are exactly the SDK's classes;
* no span processor acts in ``on_start`` (the fast path would skip it) and the SDK is not
  counting its own spans;
* a probe span built both ways is the same.

A ``FastPath`` notices when it goes stale: a processor was added, or the provider's
resource changed (the SDK re-reads it in a forked child); the caller then asks the gate
again. Everything else uses only the public API.
"""

from __future__ import annotations

import logging
from typing import Any

from visiontel._support._otel_private._batch_queue import batch_queue_fill as batch_queue_fill
from visiontel._support._otel_private._fast_path import RATIO_TRACE_ID_MASK as RATIO_TRACE_ID_MASK
from visiontel._support._otel_private._fast_path import SAMPLED as SAMPLED
from visiontel._support._otel_private._fast_path import FastPath as FastPath
from visiontel._support._otel_private._fast_path import _context_slot
from visiontel._support.gate import VersionGate

TESTED_SDK = ((1, 30), (1, 45))
"""The first and last opentelemetry-sdk (major, minor) the test matrix covers."""

_logger = logging.getLogger("visiontel")
_forced_public = False  # tests: every gate shut, the public API everywhere
_UNDECIDED = object()
_slot: Any = _UNDECIDED  # context_slot()'s answer, decided on first use
_sdk_gate = VersionGate(
    "opentelemetry-sdk",
    TESTED_SDK,
    logger=_logger,
    instead="visiontel's spans go through the public OpenTelemetry API, which is correct but "
    "slower. A visiontel release that covers it restores the fast path.",
)


def use_public_api(force: bool) -> None:
    """Tests only: shut (or reopen) the gate for every provider from now on."""
    global _forced_public, _slot
    _forced_public, _slot = force, _UNDECIDED


def public_api_forced() -> bool:
    """Whether a test shut the gate (``use_public_api``)."""
    return _forced_public


def sdk_version_supported() -> bool:
    """Whether the installed SDK is one the fast paths were tested on (logged once if not)."""
    return _sdk_gate.is_open()


def reset_version_check() -> None:
    """Tests only: check the installed version again."""
    global _slot
    _sdk_gate.reset()
    _slot = _UNDECIDED


def context_slot() -> tuple[Any, str, type] | None:
    """The API runtime context's ``ContextVar``, the current span's key in it and the
    ``Context`` class, where the API keeps them so (checked once through the public API), or
    None where ``opentelemetry.context.attach`` and ``detach`` must be used. Setting the
    variable is what ``attach`` does, without its two calls per attach and detach."""
    slot = _slot
    if slot is _UNDECIDED:
        slot = _decide_slot()
    return slot  # type: ignore[no-any-return]


def _decide_slot() -> tuple[Any, str, type] | None:
    global _slot
    slot = None if _forced_public or not sdk_version_supported() else _context_slot()
    _slot = slot
    return slot


def fast_path_for(provider: Any, scope: tuple[str, str | None, str | None]) -> FastPath | None:
    """The fast path for ``provider``'s spans of ``scope`` (name, version, schema URL), or
    ``None`` where the public API must be used."""
    if _forced_public or not sdk_version_supported():
        return None
    try:
        from opentelemetry.sdk.trace import Tracer as SdkTracer
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    except ImportError:
        return None
    if type(provider) is not SdkTracerProvider:  # a subclass may change span creation
        return None
    try:
        tracer = provider.get_tracer(scope[0], scope[1], schema_url=scope[2])
        if type(tracer) is not SdkTracer or not _nothing_acts_on_start(provider):
            return None
        counters_waiting = _span_counters_waiting(tracer)
        if counters_waiting is None:
            return None
        path = FastPath(provider, tracer, scope, counters_waiting)
        path.self_check()
    except (AttributeError, TypeError, ValueError):  # an SDK without the pieces used here
        return None
    return path


def global_tracer_scope(tracer: Any) -> tuple[Any, tuple[str, str | None, str | None]] | None:
    """The global SDK provider and (name, version, schema URL) of ``tracer``, where it is an
    SDK tracer that provider gave (same processors, sampler, resource, id generator and
    limits, a scope without attributes): its spans are then the ones ``fast_path_for``
    builds for that provider and scope. Else None."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import Tracer as SdkTracer
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    except ImportError:
        return None
    provider: Any = trace.get_tracer_provider()
    if type(tracer) is not SdkTracer or type(provider) is not SdkTracerProvider:
        return None
    try:
        same = (
            tracer.span_processor is provider._active_span_processor
            and tracer.sampler is provider.sampler
            and tracer.resource is provider.resource
            and tracer.id_generator is provider.id_generator
            and tracer._span_limits is provider._span_limits
        )
        scope = tracer._instrumentation_scope
        if not same or getattr(scope, "attributes", None):
            return None
        return provider, (scope.name, scope.version, scope.schema_url)
    except AttributeError:  # an SDK laid out otherwise
        return None


def _nothing_acts_on_start(provider: Any) -> bool:
    """No span processor has an ``on_start`` of its own (the fast path would skip it)."""
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    quiet = (BatchSpanProcessor, SimpleSpanProcessor)  # their on_start does nothing
    for processor in provider._active_span_processor._span_processors:
        kind = type(processor)
        if kind not in quiet and kind.on_start is not SpanProcessor.on_start:
            return False
    return True


def _span_counters_waiting(tracer: Any) -> list[Any] | None:
    """The SDK's own span metrics (``otel.sdk.span.*``, in some releases): ``None`` if they
    count (the fast path would skip them), else the counters that do nothing only until a
    global meter provider is set (the fast path then goes stale)."""
    counting = getattr(tracer, "_tracer_metrics", None)
    if counting is None or type(counting).__name__ == "NoOpTracerMetrics":
        return []
    waiting = []
    for name in ("_started_spans", "_live_spans"):
        counter = getattr(counting, name, None)
        kind = type(counter).__name__
        if kind.startswith("NoOp"):
            continue
        if kind.startswith("_Proxy") and getattr(counter, "_real_instrument", ...) is None:
            waiting.append(counter)
            continue
        return None
    return waiting
