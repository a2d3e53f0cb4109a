"""Every use of an OpenTelemetry internal in visiontel.propagation, behind one gate.

Propagation runs for every frame at every hop, so a few steps skip the API's
general-purpose code where the outcome is known to be the same:

* the context keys under which the API keeps the current span and the baggage (found
  by asking the API, never imported): an extracted context is built in one dict copy
  instead of one per value, and read without the API's checks and read-only copies;
* ``SpanContext`` built as the tuple it is, without ``__new__`` re-checking just-parsed ids;
* the SDK tracer's span limits (``Tracer._span_limits``), so that a link limit set in
  code, not only through ``OTEL_SPAN_LINK_COUNT_LIMIT``, sends a batch's surplus links
  to chunk spans instead of letting the SDK drop them.

What the public API would cost instead was measured for issue 19 (``python
bench/propagation.py --public-api``, docs/benchmarks.md): the context keys and the
``SpanContext`` shortcut save 1.2 µs per frame and hop (1.6 µs with baggage), so they
stay; a ``Link`` built without its constructor saved 0.12 µs per frame of a batch, and
was dropped.

One read is not behind the gate: :func:`composite_members`, the propagators inside a
``CompositePropagator`` (the API has no accessor for them), which tells whether the
global propagator is the default tracecontext+baggage one. It only ever chooses between
two correct paths: where the attribute is missing or not what it was, the answer is
"not the default" and the carriers go through the propagator API (slower, same fields).

:func:`fast_paths_enabled` is the one gate, decided on first use, once per process. It
is True only when the installed opentelemetry-api is inside :data:`TESTED_API`, the
releases CI runs (opentelemetry-sdk pins the API release it ships with, so this covers
the SDK's tracer too), and every shortcut, probed on sample values, gives exactly what
the public API gives. Otherwise each entry point is its public-API twin (same results,
somewhat slower) and the reason is logged once on the ``visiontel.propagation`` logger.

The gate rebinds the entry points, so the rest of the package calls them through this
module (``_otel_private.context_with(...)``), never through ``from``-imported copies.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    TraceFlags,
    TraceState,
)

from visiontel.propagation._frame import _FRAME_KEY

TESTED_API = ((1, 30), (1, 45))
"""The oldest and newest opentelemetry-api (major, minor) the test matrix covers."""

DEFAULT_TRACE_STATE = SpanContext(1, 1, True).trace_state
"""The (empty) trace state the API gives a span context made without one."""

SpanIds = tuple[int, int, int]
"""(trace id, span id, trace flags) as decoded from a carrier."""

_logger = logging.getLogger("visiontel.propagation")
_TRACE_FLAGS = [TraceFlags(flags) for flags in range(256)]
_new_tuple = tuple.__new__
# Found by _probe(); never read while empty, since the gate then stays shut.
_SPAN_KEY = ""
_BAGGAGE_KEY = ""
# Span classes already seen to be Spans: an exact type lookup instead of the ABC
# isinstance check the API does on every get_current_span().
_SPAN_TYPES: set[type] = {NonRecordingSpan}


# --- each entry point, fast and public ----------------------------------------------


def _fast_span_context_of(context: Context) -> SpanContext:
    if not isinstance(context, dict):
        return _public_span_context_of(context)
    span: Any = context.get(_SPAN_KEY)
    if span is None:
        return INVALID_SPAN_CONTEXT
    if type(span) not in _SPAN_TYPES:
        if not isinstance(span, Span):
            return INVALID_SPAN_CONTEXT
        _SPAN_TYPES.add(type(span))
    return span.get_span_context()  # type: ignore[no-any-return]


def _public_span_context_of(context: Context) -> SpanContext:
    return trace.get_current_span(context).get_span_context()


def _fast_span_contexts_of(contexts: list[Context]) -> list[SpanContext]:
    # Once per frame of a batch: the usual case (a Context holding a span of a type
    # seen before) is looked up inline.
    key, span_types, general = _SPAN_KEY, _SPAN_TYPES, _fast_span_context_of
    found: list[SpanContext] = []
    for ctx in contexts:
        held: Any = ctx.get(key) if type(ctx) is Context else None
        found.append(held.get_span_context() if type(held) in span_types else general(ctx))
    return found


def _public_span_contexts_of(contexts: list[Context]) -> list[SpanContext]:
    return [trace.get_current_span(ctx).get_span_context() for ctx in contexts]


_NO_BAGGAGE: Mapping[str, object] = {}  # shared, never written: callers only read it


def _fast_span_context_and_baggage(context: Context) -> tuple[SpanContext, Mapping[str, object]]:
    held: Any = context.get(_SPAN_KEY)
    span_context: SpanContext = (
        held.get_span_context() if type(held) in _SPAN_TYPES else _fast_span_context_of(context)
    )
    entries = context.get(_BAGGAGE_KEY)  # what baggage.get_all() reads, without its copy
    if entries is None or not isinstance(entries, dict):  # usually None: no isinstance call
        return span_context, _NO_BAGGAGE
    return span_context, entries


def _public_span_context_and_baggage(
    context: Context,
) -> tuple[SpanContext, Mapping[str, object]]:
    return trace.get_current_span(context).get_span_context(), baggage.get_all(context)


def _fast_context_with(
    base: Context | None,
    span: SpanIds | None,
    trace_state: TraceState | None,
    entries: Mapping[str, str] | None,
    frame: object,
) -> Context:
    if span is not None:
        # SpanContext is a tuple subclass whose __new__ only fills in defaults and
        # computes is_valid; building the same tuple directly saves most of its cost.
        trace_id, span_id, flags = span
        flags_value = _TRACE_FLAGS[flags] if 0 <= flags < 256 else TraceFlags(flags)
        state = DEFAULT_TRACE_STATE if trace_state is None else trace_state
        valid = 0 < trace_id < 1 << 128 and 0 < span_id < 1 << 64
        fields = (trace_id, span_id, True, flags_value, state, valid)
        remote = NonRecordingSpan(_new_tuple(SpanContext, fields))
        if not base and not entries:  # the usual frame: one dict, nothing to copy
            if frame is None:
                return Context({_SPAN_KEY: remote})
            return Context({_SPAN_KEY: remote, _FRAME_KEY: frame})
        values: dict[str, object] = {**base, _SPAN_KEY: remote} if base else {_SPAN_KEY: remote}
    else:
        values = {**base} if base else {}
    if frame is not None:
        values[_FRAME_KEY] = frame
    if entries:
        before = base.get(_BAGGAGE_KEY) if base else None
        values[_BAGGAGE_KEY] = {**before, **entries} if isinstance(before, dict) else dict(entries)
    return Context(values)


def _public_context_with(
    base: Context | None,
    span: SpanIds | None,
    trace_state: TraceState | None,
    entries: Mapping[str, str] | None,
    frame: object,
) -> Context:
    ctx = Context() if base is None else base
    if span is not None:
        flags = TraceFlags(span[2])
        span_context = SpanContext(span[0], span[1], True, flags, trace_state)
        ctx = trace.set_span_in_context(NonRecordingSpan(span_context), ctx)
    if frame is not None:
        ctx = otel_context.set_value(_FRAME_KEY, frame, ctx)
    for key, value in (entries or {}).items():
        ctx = baggage.set_baggage(key, value, ctx)
    return ctx


def _fast_sdk_link_limit(tracer: object) -> int | None:
    limit = getattr(getattr(tracer, "_span_limits", None), "max_links", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def _public_sdk_link_limit(tracer: object) -> int | None:
    # The SDK has no public accessor for a tracer's limits: only the environment's
    # OTEL_SPAN_LINK_COUNT_LIMIT, which the caller reads itself, is known then.
    return None


# The names the rest of the package calls: typed here, bound by _install().
span_context_of: Callable[[Context], SpanContext]
"""``trace.get_current_span(context).get_span_context()``."""
span_contexts_of: Callable[[list[Context]], list[SpanContext]]
""":data:`span_context_of` of each context, in order."""
span_context_and_baggage: Callable[[Context], tuple[SpanContext, Mapping[str, object]]]
"""A context's span context and baggage entries (read them, do not keep or change them)."""
context_with: Callable[
    [Context | None, SpanIds | None, TraceState | None, Mapping[str, str] | None, object],
    Context,
]
"""``context_with(base, span, trace_state, entries, frame)``: ``base`` (None: empty) plus a
remote span from the ``span`` ids and ``trace_state``, the baggage ``entries`` merged over
base's, and the frame identity unless None. Nothing is added for None / empty arguments."""
new_link: Callable[[SpanContext], Link] = Link
"""``Link(span_context)``: always the API's own (issue 19: a hand-built one saved 0.12 µs
per frame of a batch, too little to keep an internal for; see docs/benchmarks.md)."""
sdk_link_limit: Callable[[object], int | None]
"""The link limit of an SDK tracer (also one set in code), or None where not known."""


def composite_members(propagator: object) -> tuple[TextMapPropagator, ...] | None:
    """The propagators of a ``CompositePropagator`` (exactly that class), else None."""
    if type(propagator) is not CompositePropagator:
        return None
    members = getattr(propagator, "_propagators", None)
    if not isinstance(members, list | tuple):
        return None
    if not all(isinstance(member, TextMapPropagator) for member in members):
        return None
    return tuple(members)


# --- the gate -----------------------------------------------------------------------

_lock = threading.Lock()
_enabled: bool | None = None  # None: not decided yet


def fast_paths_enabled() -> bool:
    """Whether the shortcuts are in use (decided on the first call, once per process)."""
    if _enabled is None:
        with _lock:
            if _enabled is None:
                _decide()
    return bool(_enabled)


def _decide() -> None:
    global _enabled
    problem = _version_problem() or _probe()
    if problem is not None:
        _logger.info(
            "visiontel.propagation fast paths off: %s; the public OpenTelemetry API is "
            "used instead (same results, somewhat slower)",
            problem,
        )
    _enabled = problem is None
    _install(fast=_enabled)


def _version_problem() -> str | None:
    """Why the installed opentelemetry-api is not one the fast paths were tested on, if so."""
    (low_major, low_minor), (high_major, high_minor) = TESTED_API
    tested = f"tested with {low_major}.{low_minor} to {high_major}.{high_minor}"
    try:
        installed = metadata.version("opentelemetry-api")
    except metadata.PackageNotFoundError:
        return f"the installed opentelemetry-api has no version metadata ({tested})"
    match = re.match(r"(\d+)\.(\d+)", installed or "")
    if match is None:
        return f"opentelemetry-api version {installed!r} is not understood ({tested})"
    release = (int(match.group(1)), int(match.group(2)))
    if release > TESTED_API[1]:
        return f"opentelemetry-api {installed} is newer than the releases {tested}"
    if release < TESTED_API[0]:
        return f"opentelemetry-api {installed} is older than the releases {tested}"
    return None


def _probe() -> str | None:
    """Find the context keys, then check each shortcut against the public API on samples.

    Returns what did not match (the gate then stays shut), or None.
    """
    global _SPAN_KEY, _BAGGAGE_KEY
    try:
        span_keys = list(trace.set_span_in_context(trace.INVALID_SPAN, Context()))
        baggage_keys = list(baggage.set_baggage("k", "v", Context()))
        if len(span_keys) != 1 or len(baggage_keys) != 1 or span_keys == baggage_keys:
            return "the API keeps spans or baggage in a context differently"
        _SPAN_KEY, _BAGGAGE_KEY = span_keys[0], baggage_keys[0]
        for name, agrees in _PROBES:
            if not agrees():
                return f"the {name} shortcut gave other results than the public API"
    except Exception as error:  # internals that moved can fail in any way
        return f"probing the API failed ({type(error).__name__}: {error})"
    return None


# (base, span ids, trace state, baggage entries, frame) as given to context_with()
_ContextCase = tuple[
    Context | None, SpanIds | None, TraceState | None, Mapping[str, str] | None, object
]


def _contexts_agree() -> bool:
    """Contexts built either way hold the same values and read the same either way."""
    base = baggage.set_baggage("tenant", "a", Context({"other": 1}))
    state = TraceState([("k", "v")])
    cases: list[_ContextCase] = [
        (None, (5, 6, 1), None, None, "frame"),
        (base, (7, 8, 0), state, {"site": "b"}, None),
        (base, None, None, {"tenant": "c"}, "frame"),
        (None, ((1 << 128) - 1, (1 << 64) - 1, 0), state, None, None),  # the largest ids
        (None, (1 << 128, 0, 3), None, None, None),  # out of range: not valid
    ]
    for case in cases:
        built, public = _fast_context_with(*case), _public_context_with(*case)
        if _comparable(built) != _comparable(public):
            return False
        expected = (_public_span_context_of(built), dict(baggage.get_all(built)))
        span_context, entries = _fast_span_context_and_baggage(built)
        if (span_context, dict(entries)) != expected:
            return False
        if _fast_span_contexts_of([built]) != [expected[0]]:
            return False
    foreign = Context({_SPAN_KEY: "not a span"})
    return _fast_span_context_of(foreign) == _public_span_context_of(foreign)


def _comparable(context: Context) -> dict[str, object]:
    # Spans compare by identity; their span contexts must match, types included.
    comparable = dict(context)
    for key, value in context.items():
        if isinstance(value, Span):
            span_context = value.get_span_context()
            types = (type(value), type(span_context), type(span_context.trace_flags))
            comparable[key] = (types, tuple(span_context))
    return comparable


_PROBES: tuple[tuple[str, Callable[[], bool]], ...] = (
    ("SpanContext and context", _contexts_agree),
)


def _install(fast: bool | None) -> None:
    """Bind the entry points: fast, public, or (None) stand-ins that decide on first call."""
    global span_context_of, span_contexts_of, span_context_and_baggage
    global context_with, sdk_link_limit
    if fast is None:
        span_context_of = _deciding("span_context_of")
        span_contexts_of = _deciding("span_contexts_of")
        span_context_and_baggage = _deciding("span_context_and_baggage")
        context_with = _deciding("context_with")
        sdk_link_limit = _deciding("sdk_link_limit")
    elif fast:
        span_context_of = _fast_span_context_of
        span_contexts_of = _fast_span_contexts_of
        span_context_and_baggage = _fast_span_context_and_baggage
        context_with = _fast_context_with
        sdk_link_limit = _fast_sdk_link_limit
    else:
        span_context_of = _public_span_context_of
        span_contexts_of = _public_span_contexts_of
        span_context_and_baggage = _public_span_context_and_baggage
        context_with = _public_context_with
        sdk_link_limit = _public_sdk_link_limit


def _deciding(name: str) -> Any:
    """A stand-in for entry point ``name``: decides the gate, then calls what it chose."""

    def before_the_gate(*args: Any) -> Any:
        fast_paths_enabled()
        return globals()[name](*args)

    return before_the_gate


def _force(enabled: bool | None) -> None:
    """Tests only: True / False installs the fast / public entry points now, whatever the
    installed version; None forgets the decision, so the next use decides (and logs) anew.

    Forcing the fast paths on where a probe fails raises instead: they would be wrong.
    """
    global _enabled
    with _lock:
        if enabled:
            problem = _probe()
            if problem is not None:
                raise RuntimeError(f"cannot force the fast paths on: {problem}")
        _enabled = enabled
        _install(fast=enabled)


_install(fast=None)
