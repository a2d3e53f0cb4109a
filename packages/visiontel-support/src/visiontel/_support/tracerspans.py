"""Live spans standing in for the spans of a tracer the global SDK provider gave.

visiontel-propagation's frame spans come from the tracer its caller passes. Where that
tracer is the global SDK provider's (``_otel_private.global_tracer_scope`` checks the five
things a span takes from its provider), a ``LiveSpans`` for the same scope makes the same
spans at a third of the cost.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from visiontel._support._otel_private import global_tracer_scope
from visiontel._support.livespans import LiveSpans

_by_tracer: weakref.WeakKeyDictionary[Any, LiveSpans | None] = weakref.WeakKeyDictionary()
_by_tracer_lock = threading.Lock()


_last_asked: tuple[Callable[[], Any], LiveSpans | None] = (lambda: None, None)
"""The tracer asked last (a weak reference) and its answer: a pipeline stage asks for the
same tracer on every frame, and this is one call where the dictionary's lookup is three."""


def live_spans_for(tracer: trace.Tracer) -> LiveSpans | None:
    """Live spans that stand in for ``tracer``'s own, or None where they may not: ``tracer``
    is not one the global SDK provider gave (``global_tracer_scope``). Asked once per
    tracer; the gate still decides for each span."""
    global _last_asked
    last = _last_asked
    if last[0]() is tracer:
        return last[1]
    try:
        spans = _by_tracer[tracer]
    except KeyError:
        found = global_tracer_scope(tracer)
        spans = None if found is None else LiveSpans(found[0], tracer, found[1])
        with _by_tracer_lock:
            _by_tracer[tracer] = spans
    except TypeError:  # not weakly referenceable: not the SDK's tracer
        return None
    _last_asked = (weakref.ref(tracer), spans)
    return spans
