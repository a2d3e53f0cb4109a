"""A fixed-size binary slot for shared-memory frame rings.

A frame ring keeps one header slot next to each frame buffer; the producer writes
the slot with :func:`inject_slot` before publishing the frame and the consumer
reads it with :func:`extract_slot`. Layout (all integers big-endian, 256 bytes):

======  ====  =========================================================
offset  size  field
======  ====  =========================================================
0       4     magic ``b"VTFC"``
4       1     layout version, ``1``
5       1     W3C trace flags (bit 0: sampled)
6       1     presence bits: 0 trace context, 1 frame identity, 2 baggage
7       1     stream id length in bytes (0..64)
8       16    trace id
24      8     span id
32      8     frame sequence number (unsigned)
40      8     capture time, ns since the Unix epoch (unsigned)
48      64    stream id, UTF-8, zero padded
112     2     baggage length in bytes (0..138)
114     138   baggage, W3C ``baggage`` header text, zero padded
252     4     CRC-32 of bytes 0..251
======  ====  =========================================================

A slot whose magic, version, lengths or checksum do not match (a torn write, a
stale or foreign buffer) yields no context. tracestate is not carried. Baggage
that does not fit is dropped whole-entry from the end and counted.

The slot is this package's own format, not a header, so it does not follow
``OTEL_PROPAGATORS``: it is always this W3C layout, read and written from the context
itself (never through a propagator), and gives a valid context whatever propagator is
configured (``b3``, ``jaeger``, ``none``...). The next text carrier writes that context
in the configured format.
"""

from __future__ import annotations

import struct
import zlib

from opentelemetry import baggage, trace
from opentelemetry.context import Context

from visiontel.propagation import _w3c
from visiontel.propagation._diag import internal_error, reject
from visiontel.propagation._frame import FrameIdentity, get_frame

SLOT_SIZE = 256
"""Bytes of one slot."""
SLOT_MAGIC = b"VTFC"
SLOT_VERSION = 1
STREAM_ID_CAPACITY = 64
BAGGAGE_CAPACITY = 138

_HEAD = struct.Struct(">4sBBBB16s8sQQ64sH138s")
_CRC = struct.Struct(">I")
_HAS_SPAN, _HAS_FRAME, _HAS_BAGGAGE = 1, 2, 4
assert _HEAD.size + _CRC.size == SLOT_SIZE
_EMPTY = bytes(SLOT_SIZE)


def _fit_baggage(entries: dict[str, object]) -> bytes:
    pairs = list(entries.items())
    while pairs:
        raw = _w3c.encode_baggage(dict(pairs)).encode("ascii")
        if len(raw) <= BAGGAGE_CAPACITY:
            return raw
        pairs.pop()
        reject("slot", "baggage_does_not_fit", len(raw))
    return b""


def pack_slot(context: Context | None = None) -> bytes:
    """The slot bytes for ``context`` (default: current)."""
    buffer = bytearray(SLOT_SIZE)
    inject_slot(buffer, 0, context)
    return bytes(buffer)


def inject_slot(
    buffer: bytearray | memoryview, offset: int = 0, context: Context | None = None
) -> None:
    """Write one slot at ``buffer[offset:offset + SLOT_SIZE]``.

    Raises :class:`ValueError` if the buffer is too short (a programming error on
    the producer's side, not bad input). A frame identity whose stream id is longer
    than 64 bytes in UTF-8 is left out of the slot and counted.
    """
    if offset < 0 or len(buffer) - offset < SLOT_SIZE:
        raise ValueError(f"inject_slot needs {SLOT_SIZE} bytes at offset {offset}")
    span_context = trace.get_current_span(context).get_span_context()
    presence = 0
    flags = 0
    if span_context.is_valid:
        presence |= _HAS_SPAN
        flags = int(span_context.trace_flags)
    trace_id = span_context.trace_id.to_bytes(16, "big")
    span_id = span_context.span_id.to_bytes(8, "big")
    frame = get_frame(context)
    stream = b""
    sequence = capture_ns = 0
    if frame is not None:
        stream = frame.stream_id.encode("utf-8")
        if len(stream) > STREAM_ID_CAPACITY:
            reject("slot", "stream_id_does_not_fit", frame.stream_id)
            stream = b""
        else:
            presence |= _HAS_FRAME
            sequence, capture_ns = frame.sequence, frame.capture_ns
    entries = baggage.get_all(context)
    bag = _fit_baggage(dict(entries)) if entries else b""
    if bag:
        presence |= _HAS_BAGGAGE
    _HEAD.pack_into(
        buffer, offset, SLOT_MAGIC, SLOT_VERSION, flags, presence, len(stream),
        trace_id, span_id, sequence, capture_ns, stream, len(bag), bag,
    )  # fmt: skip
    crc = zlib.crc32(memoryview(buffer)[offset : offset + _HEAD.size])
    _CRC.pack_into(buffer, offset + _HEAD.size, crc)


def clear_slot(buffer: bytearray | memoryview, offset: int = 0) -> None:
    """Zero a slot so that a consumer reading it sees no context."""
    buffer[offset : offset + SLOT_SIZE] = _EMPTY


def extract_slot(
    buffer: bytes | bytearray | memoryview, offset: int = 0, context: Context | None = None
) -> Context:
    """Context from the slot at ``buffer[offset:]``; an invalid slot yields ``context``."""
    base = Context() if context is None else context
    try:
        try:
            view = memoryview(buffer).cast("B")[offset : offset + SLOT_SIZE]
        except (TypeError, ValueError):  # not a (contiguous) buffer
            reject("slot", "not_a_buffer", type(buffer))
            return base
        if offset < 0 or len(view) < SLOT_SIZE:
            reject("slot", "short_buffer", len(view))
            return base
        magic = bytes(view[:4])
        if magic != SLOT_MAGIC:
            if magic != b"\0\0\0\0":  # an all-zero slot is simply empty
                reject("slot", "bad_magic", magic)
            return base
        fields = _HEAD.unpack_from(view)
        (crc,) = _CRC.unpack_from(view, _HEAD.size)
        if zlib.crc32(view[: _HEAD.size]) != crc:
            reject("slot", "bad_checksum", crc)
            return base
        return _decode(fields, base)
    except Exception:
        internal_error("extract_slot")
        return base


def _decode(fields: tuple[object, ...], base: Context) -> Context:
    _, version, flags, presence, stream_len, tid, sid, seq, ts, stream, bag_len, bag = fields
    assert isinstance(presence, int) and isinstance(stream_len, int) and isinstance(bag_len, int)
    assert isinstance(tid, bytes) and isinstance(sid, bytes) and isinstance(flags, int)
    assert isinstance(stream, bytes) and isinstance(bag, bytes)
    assert isinstance(seq, int) and isinstance(ts, int)
    if version != SLOT_VERSION:
        reject("slot", "unknown_version", version)
        return base
    if stream_len > STREAM_ID_CAPACITY or bag_len > BAGGAGE_CAPACITY or presence > 7:
        reject("slot", "bad_lengths", (stream_len, bag_len, presence))
        return base
    span = None
    if presence & _HAS_SPAN:
        trace_id, span_id = int.from_bytes(tid, "big"), int.from_bytes(sid, "big")
        if trace_id and span_id:
            span = (trace_id, span_id, flags)
        else:
            reject("slot", "zero_id", (trace_id, span_id))
    frame = None
    if presence & _HAS_FRAME:
        try:
            stream_id = stream[:stream_len].decode("utf-8")
        except UnicodeDecodeError:
            stream_id = ""
        if stream_id and stream_id.isprintable() and seq < 1 << 63 and ts < 1 << 63:
            frame = FrameIdentity(stream_id, seq, ts)
        else:
            reject("slot", "frame_malformed", stream[:stream_len])
    entries = None
    if presence & _HAS_BAGGAGE:
        try:
            entries = _w3c.parse_baggage(bag[:bag_len].decode("ascii"), "slot")
        except UnicodeDecodeError:
            reject("slot", "baggage_not_ascii", bag[:bag_len])
    if span is None and not entries and frame is None:
        return base
    return _w3c.build(base, span, None, entries, frame)
