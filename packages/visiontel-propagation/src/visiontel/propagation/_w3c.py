"""W3C Trace Context and Baggage, encoded and decoded once for every carrier.

OpenTelemetry's own propagators go through getter/setter objects and log warnings
on bad input; frames cross several hops each, so this module does the same W3C
work directly on values already looked up by the carrier, and reports bad input
through :func:`visiontel.propagation._diag.reject` (debug level) instead.
"""

from __future__ import annotations

import re
import struct
from binascii import unhexlify
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from opentelemetry.context import Context, get_current
from opentelemetry.trace import TraceState

from visiontel.propagation import _diag, _otel_private
from visiontel.propagation._diag import reject, rejections
from visiontel.propagation._frame import _FRAME_KEY, FRAME_HEADER, FrameIdentity
from visiontel.propagation._otel_private import DEFAULT_TRACE_STATE

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
    values = get_current() if context is None else context
    span_context, entries = _otel_private.span_context_and_baggage(values)
    out = []
    if span_context.is_valid:
        flags = span_context.trace_flags
        # Formatting 128-bit ints with "%032x" costs twice what bytes.hex() does.
        traceparent = "-".join(
            (
                "00",
                span_context.trace_id.to_bytes(16, "big").hex(),
                span_context.span_id.to_bytes(8, "big").hex(),
                _FLAGS_HEX[flags] if 0 <= flags < 256 else f"{flags:02x}",
            )
        )
        out.append((TRACEPARENT, traceparent))
        trace_state = span_context.trace_state
        if trace_state is not DEFAULT_TRACE_STATE and trace_state:  # the default one is empty
            out.append((TRACESTATE, trace_state.to_header()))
    if entries:
        out.append((BAGGAGE, encode_baggage(entries)))
    frame = values.get(_FRAME_KEY)
    if frame is not None and isinstance(frame, FrameIdentity):
        out.append((FRAME_HEADER, frame.to_header()))
    return out


_FLAGS_HEX = [f"{flags:02x}" for flags in range(256)]


# --- extract ------------------------------------------------------------------------


_HEX_DIGITS = b"0123456789abcdef"
_IDS = struct.Struct(">BQQQB")  # version, trace id (two halves), span id, flags


def _canonical_traceparent(value: str) -> tuple[int, int, int] | None:
    """The ids of a version-00 traceparent in canonical form, else None.

    Senders almost always write exactly ``00-<32 hex>-<16 hex>-<2 hex>``; that
    form is checked with one ``bytes.translate`` pass (every character but the
    three dashes must be a lowercase hex digit) and decoded in one ``unhexlify``.
    Anything else (whitespace, other versions, zero ids, garbage) returns None
    and goes through the general parser, which decides and counts it.
    """
    if len(value) != 55 or not value.isascii():
        return None
    raw = value.encode("ascii")
    if raw.translate(None, _HEX_DIGITS) != b"---" or raw[2] != 45 or raw[35] != 45:
        return None
    if raw[52] != 45:
        return None
    version, high, low, span_id, flags = _IDS.unpack(unhexlify(raw.replace(b"-", b"")))
    if version or not (high or low) or not span_id:
        return None
    return high << 64 | low, span_id, flags


def parse_traceparent(value: str, carrier: str) -> tuple[int, int, int] | None:
    return _canonical_traceparent(value) or _parse_traceparent(value, carrier)


def _parse_traceparent(value: str, carrier: str) -> tuple[int, int, int] | None:
    """Every form W3C allows (and the reason for refusing any other)."""
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


def _baggage_entries(value: str, carrier: str) -> Mapping[str, str]:
    """Like :func:`parse_baggage`, but the result may be shared: read it, do not keep it."""
    cached = _decoded.get(value)
    return cached if cached is not None else parse_baggage(value, carrier)


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


def build(
    base: Context,
    span: tuple[int, int, int] | None,
    trace_state: TraceState | None = None,
    entries: Mapping[str, str] | None = None,
    frame: FrameIdentity | None = None,
) -> Context:
    """Assemble the extracted pieces on top of ``base``."""
    return _otel_private.context_with(base, span, trace_state, entries, frame)


def decode(found: Mapping[str, object], carrier: str, base: Context | None) -> Context:
    """Context from the values a carrier found under :data:`FIELDS` (absent keys missing).

    ``base`` None means an empty context: the usual frame's context is then built without
    making (and copying) an empty one first.
    """
    max_len = _diag._limits.max_value_bytes
    # Usually every value is a short str: then ``found`` is used as it is.
    text: Mapping[str, str] = found  # type: ignore[assignment]
    for raw in found.values():
        if type(raw) is not str or len(raw) > max_len:
            text = _checked(found, carrier, max_len)  # rare: count what is refused
            break
    span = entries = frame = None
    raw = text.get(TRACEPARENT)
    if raw is not None:
        span = _canonical_traceparent(raw) or parse_traceparent(raw, carrier)
    raw = text.get(BAGGAGE)
    if raw is not None:
        entries = _baggage_entries(raw, carrier)
    raw = text.get(FRAME_HEADER)
    if raw is not None:
        frame = FrameIdentity.from_header(raw, carrier)
    if span is None and not entries and frame is None:
        return Context() if base is None else base
    raw = text.get(TRACESTATE) if span is not None else None
    trace_state = parse_tracestate(raw, carrier) if raw is not None else None
    # base None: the usual frame's context is built in one dict, with no empty one to copy
    return _otel_private.context_with(base, span, trace_state, entries, frame)


def _checked(found: Mapping[str, object], carrier: str, max_len: int) -> dict[str, str]:
    text: dict[str, str] = {}
    for key, raw in found.items():
        if type(raw) is not str:
            reject(carrier, f"{key}_not_text", raw)
        elif len(raw) > max_len:
            reject(carrier, f"{key}_too_long", raw)
        else:
            text[key] = raw
    return text


def parse_grpc_trace_bin(value: object) -> tuple[int, int, int] | None:
    """Ids of a ``grpc-trace-bin`` value (OpenCensus binary format), else None (counted)."""
    # version 0, then field 0: trace id (16 bytes), field 1: span id (8), field 2: options (1)
    if not isinstance(value, bytes) or len(value) != 29:
        reject("grpc", "grpc_trace_bin_malformed", value)
        return None
    if value[0] != 0 or value[1] != 0 or value[18] != 1 or value[27] != 2:
        reject("grpc", "grpc_trace_bin_malformed", value)
        return None
    trace_id = int.from_bytes(value[2:18], "big")
    span_id = int.from_bytes(value[19:27], "big")
    if not trace_id or not span_id:
        reject("grpc", "grpc_trace_bin_zero_id", value)
        return None
    return trace_id, span_id, value[28] & 1
