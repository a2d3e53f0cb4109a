"""Every use of an OpenTelemetry SDK or API internal in visiontel-torch, behind one gate.

visiontel-torch makes its own spans (stages, a forward's root, its layers) without the
SDK's ``start_span`` where nothing in the SDK's start-up work could change the outcome: it
builds the finished ``ReadableSpan`` itself and hands it to the span processors' ``on_end``.
That needs pieces the SDK keeps private (the provider's processor list, the tracer's span
limits and sampler delegates, ``_Span``'s constructor, the batch processor's queue) and two
API shortcuts: a ``SpanContext`` tuple built without re-validating known-good ids, and,
for the compiled root hooks, where the API's runtime context keeps the current span (its
``ContextVar`` and key, ``_fast_path._context_slot``: checked once through the public API,
None otherwise, and then only Python starts root spans). ``FastPath`` (``_fast_path.py``)
holds what a provider the gate admits gives its spans; the histogram fold is in
``_histograms.py`` and the batch queue's bulk fill in ``_batch_queue.py``.

``fast_path_for(provider)`` is the one gate. It gives a ``FastPath`` only when all of these
hold, and ``None`` (use the public API) otherwise:

* the installed opentelemetry-sdk is inside ``TESTED_SDK``, the releases CI runs against
  (past it, the gate says so once in the log and stays shut);
* the provider and its tracer are exactly the SDK's classes;
* no span processor acts in ``on_start`` (the fast path would skip it) and the SDK is not
  counting its own spans;
* a probe span built both ways is the same.

A ``FastPath`` notices when it goes stale: a processor was added, or the provider's
resource changed (the SDK re-reads it in a forked child); the caller then asks the gate
again. Everything else in the package uses only the public API.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from visiontel._support.gate import VersionGate
from visiontel.torch._otel_private._batch_queue import batch_queue_fill as batch_queue_fill
from visiontel.torch._otel_private._fast_path import RATIO_TRACE_ID_MASK as RATIO_TRACE_ID_MASK
from visiontel.torch._otel_private._fast_path import SAMPLED as SAMPLED
from visiontel.torch._otel_private._fast_path import FastPath as FastPath
from visiontel.torch._otel_private._histograms import fold as _fold
from visiontel.torch.version import SCHEMA_URL, __version__

TESTED_SDK = ((1, 30), (1, 45))
"""The first and last opentelemetry-sdk (major, minor) the test matrix covers."""
TORCH_SCOPE = ("visiontel.torch", __version__, SCHEMA_URL)
"""(name, version, schema URL) of the instrumentation scope spans are made for, by default."""

_logger = logging.getLogger("visiontel.torch")
_forced_public = False  # tests: every gate shut, the public API everywhere
_sdk_gate = VersionGate(
    "opentelemetry-sdk",
    TESTED_SDK,
    logger=_logger,
    instead="its spans go through the public OpenTelemetry API, which is correct but slower. "
    "A visiontel-torch release that covers it restores the fast path.",
)


def _use_public_api(force: bool) -> None:
    """Tests only: shut (or reopen) the gate for every provider from now on."""
    global _forced_public
    _forced_public = force


def sdk_version_supported() -> bool:
    """Whether the installed SDK is one the fast paths were tested on (logged once if not)."""
    return _sdk_gate.is_open()


def _reset_version_check() -> None:
    """Tests only: check the installed version again."""
    _sdk_gate.reset()


def fast_path_for(provider: Any, scope: tuple[str, str, str] = TORCH_SCOPE) -> FastPath | None:
    """The fast path for ``provider``'s spans of ``scope``, or ``None`` where the public API
    must be used."""
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


def fold_points(
    histogram: Any,
    values: Sequence[float],
    attributes: Mapping[str, Any],
    contexts: Sequence[Any],
    memo: dict[str, Any],
) -> bool:
    """Add a batch of ``histogram`` values that share ``attributes`` straight to the SDK's
    storage, with the exemplars the SDK would keep; False (nothing added) where
    ``histogram.record`` must be used instead. ``contexts``: the one context every value
    was recorded in, or one per value. ``memo``: a dict the caller keeps per histogram and
    attribute set. See ``_histograms.py``."""
    if _forced_public or not sdk_version_supported():
        return False
    try:
        return _fold(histogram, values, attributes, contexts, memo)
    except (AttributeError, TypeError):  # an SDK without the pieces used there
        return False


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
