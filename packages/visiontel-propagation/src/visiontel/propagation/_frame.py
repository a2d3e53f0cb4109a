"""Frame identity (stream id, sequence number, capture time) and its text propagator."""

from __future__ import annotations

import re
import time
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators import textmap

from visiontel._support.redact import redact_url
from visiontel.propagation import _diag
from visiontel.propagation._diag import internal_error, limits, reject

FRAME_HEADER = "visiontel-frame"
"""Carrier key of the frame identity: ``<stream id, percent-encoded>;<sequence>;<capture ns>``."""

_FRAME_KEY = otel_context.create_key("visiontel-frame")
_U63 = (1 << 63) - 1
# ASCII digits only (int() would also take other scripts' digits, "_" and spaces).
_FRAME_RE = re.compile(r"[ \t]*([^;]+);([0-9]{1,19});([0-9]{1,19})[ \t]*")
# Unreserved characters of RFC 3986 stay readable; everything else (';', ',', '=',
# spaces, non-ASCII) is percent-encoded so the value is printable ASCII, which is
# what HTTP, gRPC (non-"-bin" keys) and message-queue headers all accept.
_SAFE = "-._~:@/"


class FrameIdentity(NamedTuple):
    """Which frame this is: travels beside the trace context through every stage.

    ``capture_ns`` is wall-clock time (:func:`time.time_ns`) at capture, so stages on
    other hosts can compute the frame's age as long as their clocks are synchronised.
    A named tuple: cheap to create on every extract, immutable, picklable.
    """

    stream_id: str
    sequence: int
    capture_ns: int

    @classmethod
    def now(cls, stream_id: str, sequence: int) -> FrameIdentity:
        """Identity of a frame captured at this instant."""
        return cls(stream_id, sequence, time.time_ns())

    def age_s(self, now_ns: int | None = None) -> float:
        """Seconds since capture (negative if the clocks disagree)."""
        return ((time.time_ns() if now_ns is None else now_ns) - self.capture_ns) / 1e9

    def to_header(self) -> str:
        stream = _quoted.get(self.stream_id) or _quote_stream(self.stream_id)
        return f"{stream};{self.sequence};{self.capture_ns}"

    @classmethod
    def from_header(cls, value: object, carrier: str = "text") -> FrameIdentity | None:
        """Parse :data:`FRAME_HEADER`; refuses (and counts) anything malformed."""
        if not isinstance(value, str):
            reject(carrier, "frame_not_text", value)
            return None
        max_stream = _diag._limits.max_stream_id
        if len(value) > 3 * max_stream + 64:
            reject(carrier, "frame_too_long", value)
            return None
        match = _FRAME_RE.fullmatch(value)
        if match is None:
            reject(carrier, "frame_malformed", value)
            return None
        raw_stream, raw_seq, raw_ts = match.groups()
        sequence, capture_ns = int(raw_seq), int(raw_ts)
        stream = _from_wire.get(raw_stream, _MISSING)
        if stream is _MISSING:
            stream = _stream_from_wire(raw_stream)
        if stream is None or sequence > _U63 or capture_ns > _U63:
            reject(carrier, "frame_out_of_range", value)
            return None
        if not (0 < stream[0] <= max_stream):
            reject(carrier, "frame_out_of_range", value)
            return None
        # tuple.__new__ is what the named tuple's generated __new__ calls, minus a frame.
        return _new_tuple(cls, (stream[1], sequence, capture_ns))


_new_tuple = tuple.__new__


# A pipeline has a handful of cameras, so stream ids repeat on every frame: their
# encoded and decoded forms are kept in plain dicts (a lookup costs a third of an
# lru_cache call), emptied when full so that hostile input cannot grow memory.
_CACHE_SIZE = 1024
_quoted: dict[str, str] = {}
_from_wire: dict[str, tuple[int, str] | None] = {}
_MISSING: Any = object()


def _quote_stream(stream_id: str) -> str:
    quoted = quote(stream_id, safe=_SAFE)
    if len(_quoted) >= _CACHE_SIZE:
        _quoted.clear()
    _quoted[stream_id] = quoted
    return quoted


def _unquote_stream(raw: str) -> str | None:
    try:
        stream_id = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    return stream_id if stream_id.isprintable() else None


def _stream_from_wire(raw: str) -> tuple[int, str] | None:
    """(length of the decoded stream id, the id without credentials), or None if invalid.

    Cached like :func:`_quote_stream`: decoding and credential stripping run once per
    stream, not once per frame.
    """
    stream_id = _unquote_stream(raw)
    result = None if stream_id is None else (len(stream_id), strip_credentials(stream_id))
    if len(_from_wire) >= _CACHE_SIZE:
        _from_wire.clear()
    _from_wire[raw] = result
    return result


def _valid_stream(stream_id: str) -> bool:
    return 0 < len(stream_id) <= limits().max_stream_id and stream_id.isprintable()


def check_frame(frame: FrameIdentity) -> None:
    """Refuse a bad identity at the source, where raising is the helpful thing to do."""
    if not _valid_stream(frame.stream_id):
        raise ValueError(
            f"stream_id must be 1..{limits().max_stream_id} printable characters, "
            f"got {frame.stream_id!r}"
        )
    if not (0 <= frame.sequence <= _U63 and 0 <= frame.capture_ns <= _U63):
        raise ValueError("sequence and capture_ns must fit in 0..2**63-1")


def set_frame(frame: FrameIdentity, context: Context | None = None) -> Context:
    """Return ``context`` (default: current) carrying ``frame``.

    A stream id that is a URL with credentials (``rtsp://user:pass@cam/1``) is
    stored, sent and recorded without them (``rtsp://cam/1``).
    """
    check_frame(frame)
    clean = strip_credentials(frame.stream_id)
    if clean != frame.stream_id:
        frame = frame._replace(stream_id=clean)
    return otel_context.set_value(_FRAME_KEY, frame, context)


def strip_credentials(stream_id: str) -> str:
    """``stream_id`` without secrets if it is a URL (``scheme://...``); other ids unchanged.

    The user info goes (``rtsp://user:pass@cam/1`` -> ``rtsp://cam/1``), the value of
    every secret-looking query parameter becomes ``REDACTED`` (``?token=abc``,
    ``&X-Amz-Signature=...``, ``?user=...``) and the fragment is dropped: the one URL
    redactor every visiontel package uses (``visiontel._support.redact.redact_url``).
    """
    return redact_url(stream_id) if "://" in stream_id else stream_id


def get_frame(context: Context | None = None) -> FrameIdentity | None:
    """The frame identity in ``context`` (default: current), if any."""
    value = otel_context.get_value(_FRAME_KEY, context)
    return value if isinstance(value, FrameIdentity) else None


class FramePropagator(textmap.TextMapPropagator):
    """Carries :class:`FrameIdentity` in the ``visiontel-frame`` field.

    Registered as the ``visiontel_frame`` entry point of ``opentelemetry_propagator``,
    so ``OTEL_PROPAGATORS=tracecontext,baggage,visiontel_frame`` adds it to the
    global propagator used by every OpenTelemetry instrumentation.
    """

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        if context is None:
            context = Context()
        try:
            values = getter.get(carrier, FRAME_HEADER)
            if not values:
                return context
            # this package's carriers name themselves in what they refuse
            name = getattr(getter, "carrier_name", "text")
            if len(values) > 1 and len(set(values)) > 1:
                reject(name, "frame_duplicate", values)
                return context
            frame = FrameIdentity.from_header(values[0], name)
            if frame is None:
                return context
            return otel_context.set_value(_FRAME_KEY, frame, context)
        except Exception:
            internal_error("FramePropagator.extract")
            return context

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        frame = get_frame(context)
        if frame is not None:
            setter.set(carrier, FRAME_HEADER, frame.to_header())

    @property
    def fields(self) -> set[str]:
        return {FRAME_HEADER}
