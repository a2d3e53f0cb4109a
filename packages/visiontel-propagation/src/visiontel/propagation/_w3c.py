"""W3C Trace Context and Baggage, encoded and decoded once for every carrier.

OpenTelemetry's own propagators go through getter/setter objects and log warnings
on bad input; frames cross several hops each, so this module does the same W3C
work directly on values already looked up by the carrier, and reports bad input
through :func:`visiontel.propagation._diag.reject` (debug level) instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from visiontel.propagation._diag import limits, reject, rejections
from visiontel.propagation._frame import _FRAME_KEY, FRAME_HEADER, FrameIdentity, get_frame

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"
FIELDS = (TRACEPARENT, TRACESTATE, BAGGAGE, FRAME_HEADER)
"""Every key this package writes, all lowercase printable ASCII."""

_TRACEPARENT_RE = re.compile(
    r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?[ \t]*"
)
_TRACEPARENT_MAX = 512
_TRACESTATE_MAX = 512
_TRACESTATE_ENTRIES = 32
_KEY = r"[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
_TRACESTATE_MEMBER_RE = re.compile(
    rf"[ \t]*({_KEY})=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{{0,255}}[\x21-\x2b\x2d-\x3c\x3e-\x7e])[ \t]*"
)
# W3C Baggage limits (https://www.w3.org/TR/baggage/#limits).
BAGGAGE_MAX_BYTES = 8192
BAGGAGE_MAX_ENTRIES = 180
_BAGGAGE_KEY_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAGGAGE_VALUE_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")


# --- inject -------------------------------------------------------------------------


def encode_baggage(entries: Mapping[str, object]) -> str:
    key = tuple(entries.items())
    try:
        text = _encoded.get(key)
    except TypeError:  # an unhashable value (the API accepts any object)
        return _encode_baggage(key)
    if text is None:
        text = _encode_baggage(key)
        _remember(_encoded, key, text)
    return text


def _encode_baggage(items: tuple[tuple[str, object], ...]) -> str:
    return ",".join(f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, v in items)


# Baggage is usually the same on every frame of a stream (site, tenant, model
# canary), so both directions are cached. Bounded: cleared when full. Only values
# that parsed without a single rejection are cached, so bad input is counted on
# every occurrence.
_CACHE_SIZE = 256
_encoded: dict[tuple[tuple[str, object], ...], str] = {}
_decoded: dict[str, dict[str, str]] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


def encode(context: Context | None) -> list[tuple[str, str]]:
    """The (key, value) pairs that carry ``context`` (default: the current one)."""
    span_context = trace.get_current_span(context).get_span_context()
    out = (
        [(TRACEPARENT, f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                       f"{span_context.trace_flags:02x}")]
        if span_context.is_valid
        else []
    )  # fmt: skip
    if out and span_context.trace_state:
        out.append((TRACESTATE, span_context.trace_state.to_header()))
    entries = baggage.get_all(context)
    if entries:
        out.append((BAGGAGE, encode_baggage(entries)))
    frame = get_frame(context)
    if frame is not None:
        out.append((FRAME_HEADER, frame.to_header()))
    return out


# --- extract ------------------------------------------------------------------------


def parse_traceparent(value: str, carrier: str) -> tuple[int, int, int] | None:
    if len(value) > _TRACEPARENT_MAX:
        reject(carrier, "traceparent_too_long", value)
        return None
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None:
        reject(carrier, "traceparent_malformed", value)
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    # Version ff is forbidden; version 00 has no trailing fields; later versions may.
    if version == "ff" or (version == "00" and rest):
        reject(carrier, "traceparent_version", value)
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        reject(carrier, "traceparent_zero_id", value)
        return None
    return trace_id, span_id, int(flags_hex, 16)


def parse_tracestate(value: str, carrier: str) -> TraceState | None:
    if len(value) > _TRACESTATE_MAX:
        reject(carrier, "tracestate_too_long", value)
        return None
    pairs: dict[str, str] = {}
    for member in value.split(","):
        if not member.strip(" \t"):
            continue
        match = _TRACESTATE_MEMBER_RE.fullmatch(member)
        if match is None or match.group(1) in pairs or len(pairs) >= _TRACESTATE_ENTRIES:
            reject(carrier, "tracestate_malformed", value)
            return None
        pairs[match.group(1)] = match.group(2)
    return TraceState(list(pairs.items()))


def parse_baggage(value: str, carrier: str) -> dict[str, str]:
    """Entries of a W3C baggage header (a fresh dict the caller may keep)."""
    cached = _decoded.get(value)
    if cached is not None:
        return dict(cached)
    before = rejections()
    entries = _parse_baggage(value, carrier)
    if rejections() == before:
        _remember(_decoded, value, dict(entries))
    return entries


def _parse_baggage(value: str, carrier: str) -> dict[str, str]:
    if len(value.encode("utf-8", "surrogatepass")) > BAGGAGE_MAX_BYTES:
        reject(carrier, "baggage_too_long", value)
        return {}
    entries: dict[str, str] = {}
    for member in value.split(","):
        if not member.strip(" \t"):
            continue
        if len(entries) >= BAGGAGE_MAX_ENTRIES:
            reject(carrier, "baggage_too_many", value)
            break
        key, sep, rest = member.partition("=")
        raw_value = rest.split(";", 1)[0].strip(" \t")  # properties are not kept
        key = key.strip(" \t")
        if (
            not sep
            or not _BAGGAGE_KEY_RE.fullmatch(key)
            or not _BAGGAGE_VALUE_RE.fullmatch(raw_value)
        ):
            reject(carrier, "baggage_malformed", member)
            continue
        try:
            entries[unquote(key, errors="strict")] = unquote(raw_value, errors="strict")
        except UnicodeDecodeError:
            reject(carrier, "baggage_malformed", member)
    return entries


def _span_key() -> str | None:
    """The context key OpenTelemetry stores the current span under, found by asking it.

    A context is a dict; filling it in one copy instead of one copy per value saves a
    measurable part of every extract. If the API ever stores spans differently, the
    public (slower) calls are used instead.
    """
    probe = trace.set_span_in_context(trace.INVALID_SPAN, Context())
    keys = list(probe)
    if len(keys) == 1 and trace.get_current_span(Context({keys[0]: probe[keys[0]]})) is (
        trace.INVALID_SPAN
    ):
        return keys[0]
    return None


def _baggage_key() -> str | None:
    """Same idea for baggage, which OpenTelemetry keeps as one dict under one key."""
    probe = baggage.set_baggage("k", "v", Context())
    keys = list(probe)
    if len(keys) == 1 and probe[keys[0]] == {"k": "v"}:
        check = Context({keys[0]: {"a": "b"}})
        if dict(baggage.get_all(check)) == {"a": "b"}:
            return keys[0]
    return None


_SPAN_KEY = _span_key()
_BAGGAGE_KEY = _baggage_key()


def build(
    base: Context,
    span: tuple[int, int, int] | None,
    trace_state: TraceState | None = None,
    entries: Mapping[str, str] | None = None,
    frame: FrameIdentity | None = None,
) -> Context:
    """Assemble the extracted pieces on top of ``base``."""
    values = dict(base)
    if span is not None:
        span_context = SpanContext(
            span[0],
            span[1],
            is_remote=True,
            trace_flags=TraceFlags(span[2]),
            trace_state=trace_state,
        )
        if _SPAN_KEY is None:
            values = dict(trace.set_span_in_context(NonRecordingSpan(span_context), base))
        else:
            values[_SPAN_KEY] = NonRecordingSpan(span_context)
    if frame is not None:
        values[_FRAME_KEY] = frame
    if entries and _BAGGAGE_KEY is not None:
        values[_BAGGAGE_KEY] = {**baggage.get_all(base), **entries}
        entries = None
    ctx = Context(values)
    if entries:
        for key, value in entries.items():
            ctx = baggage.set_baggage(key, value, ctx)
    return ctx


def decode(found: Mapping[str, object], carrier: str, base: Context | None) -> Context:
    """Context from the values a carrier found under :data:`FIELDS` (absent keys missing)."""
    ctx = Context() if base is None else base
    span = trace_state = entries = frame = None
    max_len = limits().max_value_bytes
    text: dict[str, str] = {}
    for key, raw in found.items():
        if type(raw) is not str:
            reject(carrier, f"{key}_not_text", raw)
        elif len(raw) > max_len:
            reject(carrier, f"{key}_too_long", raw)
        else:
            text[key] = raw
    raw = text.get(TRACEPARENT)
    if raw is not None:
        span = parse_traceparent(raw, carrier)
        raw = text.get(TRACESTATE)
        if raw is not None and span is not None:
            trace_state = parse_tracestate(raw, carrier)
    raw = text.get(BAGGAGE)
    if raw is not None:
        entries = parse_baggage(raw, carrier)
    raw = text.get(FRAME_HEADER)
    if raw is not None:
        frame = FrameIdentity.from_header(raw, carrier)
    if span is None and not entries and frame is None:
        return ctx
    return build(ctx, span, trace_state, entries, frame)
