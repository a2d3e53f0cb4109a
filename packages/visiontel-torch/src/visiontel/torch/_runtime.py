"""Process-wide pieces shared by every instrumented model: tracer, instruments, resolver."""

from __future__ import annotations

import threading
import weakref

from opentelemetry import metrics, trace

from visiontel._support.livespans import LiveSpans
from visiontel.torch._metrics import InferenceMetrics
from visiontel.torch._otel_private import TORCH_SCOPE
from visiontel.torch._resolver import Resolver


class Runtime:
    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        # the tracer's spans and the live spans must name one scope: both from TORCH_SCOPE
        name, version, schema_url = TORCH_SCOPE
        self.tracer = trace.get_tracer(name, version, tracer_provider, schema_url=schema_url)
        self.spans = LiveSpans(tracer_provider, self.tracer, TORCH_SCOPE)
        self.metrics = InferenceMetrics(meter_provider)
        self.resolver = Resolver(self.metrics, tracer_provider)
        self.metrics.images.before_collect = self.resolver.drain_later
        self.spans.later = self.resolver.later
        self.metrics.unsampled.due = self.resolver.wake_for_points


_lock = threading.Lock()
_default: Runtime | None = None
_replaced: weakref.WeakSet[Runtime] = weakref.WeakSet()
"""Runtimes no longer listed (past ``_MAX_RUNTIMES``, or a default replaced) for as long as
something (a model's instrumentation, a stage) still uses them: ``flush`` reaches them."""


def default_runtime() -> Runtime:
    """The runtime bound to the global providers (proxies until the SDK is configured)."""
    global _default
    runtime = _default  # read without the lock on every stage and forward: set rarely
    if runtime is not None:
        return runtime
    with _lock:
        if _default is None:
            _default = Runtime()
        return _default


_by_providers: dict[tuple[int, int], Runtime] = {}
_MAX_RUNTIMES = 16


def runtime_for(
    tracer_provider: trace.TracerProvider | None, meter_provider: metrics.MeterProvider | None
) -> Runtime:
    """One runtime (and so one resolver thread) per pair of explicit providers."""
    if tracer_provider is None and meter_provider is None:
        return default_runtime()
    key = (id(tracer_provider), id(meter_provider))
    with _lock:
        runtime = _by_providers.get(key)
        if runtime is None or (
            runtime.tracer_provider is not tracer_provider
            or runtime.meter_provider is not meter_provider
        ):
            if runtime is not None:  # another pair of providers at the same addresses
                _replaced.add(runtime)
            elif len(_by_providers) >= _MAX_RUNTIMES:
                _replaced.add(_by_providers.pop(next(iter(_by_providers))))
            runtime = _by_providers[key] = Runtime(tracer_provider, meter_provider)
        return runtime


def all_runtimes() -> list[Runtime]:
    """The default runtime, every one bound to explicit providers, and every replaced one
    still in use: every runtime an instrumented model or a stage can be using."""
    with _lock:
        runtimes = list(_by_providers.values())
        if _default is not None:
            runtimes.insert(0, _default)
        if _replaced:
            runtimes += list(_replaced)
    return runtimes


def set_default_runtime(runtime: Runtime | None) -> None:
    global _default
    with _lock:
        if _default is not None and _default is not runtime:
            _replaced.add(_default)
        _default = runtime
