"""Histogram points, added to the SDK's storage a batch at a time.

The SDK has no bulk ``record``. One ``Histogram.record`` costs 3–8 µs (a ``Measurement``
built and its attributes cleaned, the exemplar filter asked, the attribute set hashed once
per reader), and a forward records two. Here a batch of values that share one attribute
set is added to each reader's aggregation once per batch: the aggregation is looked up
once and the values are folded in under its lock, exactly as its ``aggregate`` would add
them one by one. The values share one context (an unsampled forward's waiting points) or
each has its own (sampled forwards finished in one run of later work). Exemplars follow the
SDK: the exemplar filter (trace-based or always-off; any other filter keeps the public
path) answers once per context, since its answer depends on the context only, and each
value it says yes to is offered to the aggregation's reservoir as ``aggregate`` offers it.
Sampled forwards' contexts are made from their spans only when read (``SpanContexts``):
the filter's answer comes from the span itself, and a context is made for a value offered
to a reservoir, a few per batch.

Only the SDK's explicit-bucket histogram aggregation is folded directly; a reader whose
view gives another aggregation (or whose aggregation for this attribute set does not exist
yet) gets the values through the SDK's own per-view entry point, one by one.
"""

from __future__ import annotations

import functools
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from opentelemetry.context import Context

_PLAIN = (str, bool, int, float)


class _SdkPieces(NamedTuple):
    # Any, not type: ``type(x) is not pieces.histogram`` would narrow x to object
    histogram: Any
    consumer: Any
    aggregation: Any
    measurement: Any
    trace_based: Any
    always_off: Any
    aligned_reservoir: Any
    proxy: Any
    key_of: Callable[[Mapping[str, Any]], Any]


@functools.cache
def _sdk_pieces() -> _SdkPieces | None:
    try:
        from opentelemetry.sdk.metrics import (
            AlignedHistogramBucketExemplarReservoir,
            AlwaysOffExemplarFilter,
            TraceBasedExemplarFilter,
        )
        from opentelemetry.sdk.metrics._internal import _view_instrument_match as matches
        from opentelemetry.sdk.metrics._internal.aggregation import (
            _ExplicitBucketHistogramAggregation,
        )
        from opentelemetry.sdk.metrics._internal.instrument import _Histogram
        from opentelemetry.sdk.metrics._internal.measurement import Measurement
        from opentelemetry.sdk.metrics._internal.measurement_consumer import (
            SynchronousMeasurementConsumer,
        )
    except ImportError:
        return None
    try:
        from opentelemetry.metrics._internal.instrument import _ProxyHistogram

        proxy: Any = _ProxyHistogram
    except ImportError:
        proxy = None
    # The key an aggregation is stored under: a hash of the (view-filtered) attributes in
    # the releases that have one, the frozen item set before.
    hashed = getattr(matches, "_hash_attributes", None)
    key_of = hashed if callable(hashed) else _frozen_items
    return _SdkPieces(
        _Histogram,
        SynchronousMeasurementConsumer,
        _ExplicitBucketHistogramAggregation,
        Measurement,
        TraceBasedExemplarFilter,
        AlwaysOffExemplarFilter,
        AlignedHistogramBucketExemplarReservoir,
        proxy,
        key_of,
    )


def _frozen_items(attributes: Mapping[str, Any]) -> Any:
    return frozenset(attributes.items())


class _Plan(NamedTuple):
    """Where one attribute set of one instrument goes, per reader and view (kept per batch,
    made again when the instrument's readers change)."""

    instrument: Any
    attributes: Mapping[str, Any]
    storages: Any
    exemplar_filter: Any
    targets: tuple[tuple[Any, Any, Any], ...]
    """(view match, key of the attributes there, the lock to hold while adding or None)."""


def fold(
    histogram: Any,
    values: Sequence[float],
    attributes: Mapping[str, Any],
    contexts: Sequence[Context],
    memo: dict[str, Any],
) -> bool:
    """Add ``values`` to ``histogram``'s storage (exemplars offered where the SDK would offer
    them). ``contexts``: the one every value was recorded in, or one per value (a list, or
    ``_points.SpanContexts`` that makes each when read). ``memo``: the caller's, one per
    histogram and attribute set.

    False, with nothing added, where the SDK's ``record`` must be used instead.
    """
    if not values:
        return True
    if len(contexts) not in {1, len(values)}:
        raise ValueError(f"{len(contexts)} contexts for {len(values)} values")
    pieces = _sdk_pieces()
    if pieces is None:
        return False
    if pieces.proxy is not None and type(histogram) is pieces.proxy:
        histogram = histogram._real_instrument
    enabled = getattr(histogram, "_is_enabled", None)  # releases with meter configurators
    if enabled is not None and not enabled():
        return False
    total = sum(values)
    if not (min(values) >= 0 and total < math.inf):
        return False  # negative, infinite or NaN: the SDK warns and drops them, let it
    plan = memo.get("plan")
    if (
        plan is None
        or plan.instrument is not histogram
        or plan.attributes is not attributes
        or plan.storages is not histogram._measurement_consumer._reader_storages
    ):
        plan = memo["plan"] = _plan(pieces, histogram, attributes)
    if plan is None:
        return False
    now = time.time_ns()
    if len(contexts) == 1:
        # trace-based or always-off: the answer depends on the context alone, so once
        context = contexts[0]
        should_sample = plan.exemplar_filter.should_sample
        offered = [bool(should_sample(values[0], now, attributes, context))] * len(values)
        contexts = [context] * len(values)
    else:
        offered = _filter_answers(pieces, plan, values, now, contexts)
    batch = _Batch(values, contexts, offered, attributes, now)
    for match, key, lock in plan.targets:
        if _added(pieces, key, match, lock, batch):
            continue
        # Not created yet (the SDK's entry point creates it with the first value), or another
        # aggregation (then every value goes through that entry point).
        for index, value in enumerate(values):
            if index == 1 and _added(pieces, key, match, lock, batch.after_first()):
                break
            context = contexts[index]
            measurement = pieces.measurement(value, now, histogram, context, attributes)
            match.consume_measurement(measurement, offered[index])
    return True


def _filter_answers(
    pieces: _SdkPieces, plan: _Plan, values: Sequence[float], now: int, contexts: Sequence[Context]
) -> list[bool]:
    """``plan``'s exemplar filter's answer for each value in its own context. Contexts made from
    spans on demand (they have ``spans``: ``_points.SpanContexts``) are not made for this:
    the trace-based filter says yes exactly where the context's span is sampled (the
    invalid span is not), the always-off filter never."""
    exemplar_filter, attributes = plan.exemplar_filter, plan.attributes
    spans = getattr(contexts, "spans", None)
    if spans is not None and type(exemplar_filter) is pieces.trace_based:
        return [bool(span.get_span_context().trace_flags.sampled) for span in spans]
    if spans is not None and type(exemplar_filter) is pieces.always_off:
        return [False] * len(values)
    should_sample = exemplar_filter.should_sample
    pairs = zip(values, contexts, strict=True)
    return [bool(should_sample(v, now, attributes, c)) for v, c in pairs]


class _Batch(NamedTuple):
    """Values to fold, each with the context it was recorded in and whether the exemplar
    filter lets it be offered to the reservoir."""

    values: Sequence[float]
    contexts: Sequence[Context]
    offered: Sequence[bool]
    attributes: Mapping[str, Any]
    time_ns: int

    def after_first(self) -> _Batch:
        return self._replace(
            values=self.values[1:], contexts=self.contexts[1:], offered=self.offered[1:]
        )


def _plan(pieces: _SdkPieces, histogram: Any, attributes: Mapping[str, Any]) -> _Plan | None:
    """Every private piece the fold needs, read before anything is written (a missing one
    leaves the storage untouched); None where folding could differ from ``record``."""
    if type(histogram) is not pieces.histogram:
        return None
    consumer = histogram._measurement_consumer
    if type(consumer) is not pieces.consumer:
        return None
    exemplar_filter = consumer._sdk_config.exemplar_filter
    if type(exemplar_filter) not in (pieces.trace_based, pieces.always_off):
        return None  # its answer may depend on each value: the SDK asks it per value
    if not all(type(value) in _PLAIN for value in attributes.values()):
        return None
    storages = consumer._reader_storages
    targets = []
    for storage in tuple(storages.values()):
        for match in storage._get_or_init_view_instrument_match(histogram):
            if type(match._attributes_aggregation) is not dict:
                return None
            # A collection that swaps the aggregations out: the SDK holds the view's lock
            # while it adds a value, and so does the fold.
            lock = match._lock if getattr(match, "_reset_on_collect", False) else None
            targets.append((match, _key(pieces, match, attributes), lock))
    return _Plan(histogram, attributes, storages, exemplar_filter, tuple(targets))


def _key(pieces: _SdkPieces, match: Any, attributes: Mapping[str, Any]) -> Any:
    """The key ``match`` stores the aggregation for ``attributes`` under."""
    keys = match._view._attribute_keys
    kept = attributes if keys is None else {k: v for k, v in attributes.items() if k in keys}
    return pieces.key_of(kept)


def _added(pieces: _SdkPieces, key: Any, match: Any, lock: Any, batch: _Batch) -> bool:
    """Fold ``batch`` into the explicit-bucket aggregation ``match`` stores under ``key``, if
    there is one, holding ``lock`` (if any) meanwhile; then offer each value the filter let
    through to its exemplar reservoir, as ``aggregate`` does after adding."""
    if lock is not None:
        lock.acquire()
    try:
        aggregation = match._attributes_aggregation.get(key)
        if type(aggregation) is not pieces.aggregation:
            return False
        # what aggregate() hands each value to (_sample_exemplar), read before writing
        reservoir = aggregation._reservoir if any(batch.offered) else None
        offer = None if reservoir is None else reservoir.offer
        boundaries = aggregation._boundaries
        values = batch.values
        with aggregation._lock:  # what aggregate() does per value, under one hold
            counts = aggregation._value
            if counts is None:
                counts = aggregation._value = aggregation._get_empty_bucket_counts()
            total = aggregation._sum
            for value in values:
                total += value  # in order, one at a time: the same float sum as aggregate()
                counts[bisect_left(boundaries, value)] += 1
            aggregation._sum = total
            if aggregation._record_min_max:
                aggregation._min = min(aggregation._min, *values)
                aggregation._max = max(aggregation._max, *values)
        if offer is not None:
            attributes, now, contexts = batch.attributes, batch.time_ns, batch.contexts
            for index in _offered(pieces, reservoir, boundaries, batch):
                offer(values[index], now, attributes, contexts[index])
        return True
    finally:
        if lock is not None:
            lock.release()


def _offered(pieces: _SdkPieces, reservoir: Any, boundaries: Any, batch: _Batch) -> list[int]:
    """The indices of the values to offer to ``reservoir``, in order: each one the filter
    let through, or, for the SDK's aligned-bucket reservoir on the aggregation's own
    boundaries, the last of those in each bucket. That reservoir keeps the last value
    offered to a bucket, and every value offered here names a valid span (the filter said
    yes to its context), so each bucket ends as it would after every offer."""
    indices = [index for index, offered in enumerate(batch.offered) if offered]
    if (
        len(indices) < 2
        or type(reservoir) is not pieces.aligned_reservoir
        or tuple(reservoir._boundaries) != boundaries
    ):
        return indices
    values = batch.values
    last = {bisect_left(boundaries, values[index]): index for index in indices}
    return sorted(last.values())
