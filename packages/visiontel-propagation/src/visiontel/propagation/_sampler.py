"""The force-trace sampler: a wrapper that samples a request which asked to be traced.

Needs the OpenTelemetry SDK (a sampler is an SDK object), so ``visiontel.propagation``
imports this module only when one of its names is first used; the package itself needs
the API only.

Configured without code through the SDK's ``opentelemetry_traces_sampler`` entry point:
``OTEL_TRACES_SAMPLER=visiontel_force_trace`` calls :func:`force_trace_sampler` with the
value of ``OTEL_TRACES_SAMPLER_ARG`` (the sampling ratio).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from visiontel._support.env import check_float, env_float
from visiontel.propagation._serving import FORCE_TRACE_ATTRIBUTE, force_trace_requested

_logger = logging.getLogger("visiontel.propagation")

MAX_PER_S_ENV = "VISIONTEL_FORCE_TRACE_MAX_PER_S"
DEFAULT_MAX_PER_S = 10.0
_RATIO_ENV = "OTEL_TRACES_SAMPLER_ARG"
# One line per minute at most about refused force-trace requests: a client that sends the
# header on every request must not flood the log instead of the tracing backend.
_REFUSED_LOG_INTERVAL_S = 60.0


class _Budget:
    """A token bucket: ``per_s`` forced traces a second on average, bursts of
    ``max(1, per_s)``; 0 refuses all."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._capacity = max(1.0, per_s)
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._refused = 0  # since the last log line
        self._logged_at: float | None = None

    def take(self) -> bool:
        if self.per_s <= 0:
            return False
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.per_s)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self._refused += 1
            if self._logged_at is not None and now - self._logged_at < _REFUSED_LOG_INTERVAL_S:
                return False
            refused, self._refused, self._logged_at = self._refused, 0, now
        _logger.warning(
            "visiontel-force-trace: %d request(s) over the limit of %g a second were left to "
            "the sampler's own decision; raise %s if that many forced traces are wanted",
            refused,
            self.per_s,
            MAX_PER_S_ENV,
        )
        return False


class ForceTraceSampler(Sampler):
    """``delegate``'s decision, except that a request which asked to be traced (header
    ``visiontel-force-trace: 1`` read by the ``visiontel_force_trace`` propagator, or
    :func:`~visiontel.propagation.force_trace`) is sampled, at most ``max_per_s`` a second.

    Only the request's entry span is forced (its parent is remote or absent); the spans
    under it follow it as ``ParentBased`` children do, and services downstream follow the
    sampled flag in ``traceparent``. A forced span carries ``visiontel.force_trace=True``.
    A request that ``delegate`` samples anyway costs no budget and gets no attribute.

    ``max_per_s`` defaults to ``VISIONTEL_FORCE_TRACE_MAX_PER_S`` (10); 0 turns forcing off.
    """

    def __init__(self, delegate: Sampler, *, max_per_s: float | None = None) -> None:
        if not isinstance(delegate, Sampler):
            raise TypeError(
                "ForceTraceSampler(delegate) must be an OpenTelemetry SDK Sampler, e.g. "
                f"ParentBasedTraceIdRatio(0.05); got {type(delegate).__name__}"
            )
        if max_per_s is None:
            per_s = env_float(MAX_PER_S_ENV, DEFAULT_MAX_PER_S, minimum=0.0)
        else:
            per_s = check_float("max_per_s", max_per_s, minimum=0.0)
        self._delegate = delegate
        self._budget = _Budget(per_s)

    @property
    def delegate(self) -> Sampler:
        return self._delegate

    @property
    def max_per_s(self) -> float:
        return self._budget.per_s

    def should_sample(  # noqa: PLR0917 (the SDK's signature)
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        sampled = result.decision is Decision.RECORD_AND_SAMPLE
        if sampled or not force_trace_requested(parent_context):
            return result
        parent = get_current_span(parent_context).get_span_context()
        # A local parent means this span is inside the request, under its entry span: that
        # span was already forced (children follow it) or refused (they stay out too). The
        # flag stays in the context for the whole request, so without this check every span
        # of a refused request would ask again.
        if parent.is_valid and not parent.is_remote:
            return result
        if not self._budget.take():
            return result
        forced = dict(result.attributes)
        forced[FORCE_TRACE_ATTRIBUTE] = True
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE,
            forced,
            parent.trace_state if parent.is_valid else result.trace_state,
        )

    def get_description(self) -> str:
        return f"ForceTrace{{{self._delegate.get_description()},max_per_s={self.max_per_s:g}}}"


def _ratio(arg: str | float | None) -> float:
    """The sampling ratio: the SDK passes ``OTEL_TRACES_SAMPLER_ARG``'s value (or None)."""
    if arg is None or (isinstance(arg, str) and arg == os.environ.get(_RATIO_ENV)):
        # The variable's own value: the environment policy (logged once, default 1.0).
        return env_float(_RATIO_ENV, 1.0, minimum=0.0, maximum=1.0)
    if isinstance(arg, str):
        if not arg.strip():
            return 1.0
        try:
            number = float(arg)
        except ValueError:
            raise ValueError(
                f"force_trace_sampler(arg) must be a sampling ratio between 0 and 1, as a "
                f"number or a string such as '0.05'; got {arg!r}"
            ) from None
        return check_float("force_trace_sampler(arg)", number, minimum=0.0, maximum=1.0)
    return check_float("force_trace_sampler(arg)", arg, minimum=0.0, maximum=1.0)


def force_trace_sampler(arg: str | float | None = None) -> ForceTraceSampler:
    """``ForceTraceSampler(ParentBasedTraceIdRatio(ratio))``: the
    ``visiontel_force_trace`` entry point of the ``opentelemetry_traces_sampler`` group.

    ``arg`` is the ratio (the SDK passes ``OTEL_TRACES_SAMPLER_ARG``); None or blank means
    1.0. A malformed ``OTEL_TRACES_SAMPLER_ARG`` is logged once and 1.0 used; a malformed
    ``arg`` passed in code raises ValueError.
    """
    return ForceTraceSampler(ParentBasedTraceIdRatio(_ratio(arg)))
