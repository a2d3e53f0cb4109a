"""Property tests: random bytes and strings on every extract path never raise, and
well-formed values always survive a round trip."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import visiontel.propagation as vp
from visiontel.propagation import _diag

KEYS = st.sampled_from(
    [
        "traceparent",
        "tracestate",
        "baggage",
        "visiontel-frame",
        "grpc-trace-bin",
        "TraceParent",
        "x",
    ]
)
TEXT = st.text(max_size=600)
BYTES = st.binary(max_size=600)
# Values that look almost right are more likely to reach deep parsing branches.
NEAR_TRACEPARENT = st.from_regex(
    r"\A[0-9a-f]{2}-[0-9a-fA-F]{30,33}-[0-9a-f]{15,17}-[0-9a-f]{2}(-.*)?\Z"
)
NEAR_FRAME = st.from_regex(r"\A[^;]{0,20};-?[0-9]{0,25};[0-9]{0,25}(;.*)?\Z")
NEAR_BAGGAGE = st.from_regex(r"\A([^,=]{0,5}=[^,]{0,8}(;[a-z]=1)?,?){0,6}\Z")
VALUES = st.one_of(
    TEXT, BYTES, NEAR_TRACEPARENT, NEAR_FRAME, NEAR_BAGGAGE, st.none(), st.integers()
)
PAIRS = st.lists(st.tuples(st.one_of(KEYS, TEXT, BYTES), VALUES), max_size=12)
ANY = st.one_of(PAIRS, st.dictionaries(KEYS, VALUES), TEXT, BYTES, st.none(), st.lists(VALUES))

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def no_internal_errors():
    """An extract path that only survived by swallowing its own exception is a bug."""
    _diag._errors.reset()
    yield
    assert not _diag.internal_errors(), f"internal errors in {_diag.internal_errors()}"


def check(ctx: object) -> None:
    assert isinstance(ctx, Context)
    span_context = trace.get_current_span(ctx).get_span_context()
    if span_context.is_valid:  # whatever got through is a well-formed context
        assert 0 < span_context.trace_id < 2**128 and 0 < span_context.span_id < 2**64


@FUZZ
@given(ANY)
def test_every_text_extract_path_survives_anything(carrier):
    check(vp.extract_dict(carrier))
    check(vp.extract_http(carrier))
    check(vp.extract_grpc(carrier))
    check(vp.extract_mq(carrier))
    check(vp.extract_slot(carrier))
    check(vp.FramePropagator().extract(carrier if isinstance(carrier, dict) else {}))


@FUZZ
@given(st.lists(st.tuples(KEYS, st.one_of(NEAR_TRACEPARENT, NEAR_FRAME, NEAR_BAGGAGE)), max_size=6))
def test_http_header_objects_survive_anything(fields):
    import email.message

    message = email.message.Message()
    for key, value in fields:
        try:
            message[key] = value
        except ValueError:  # the email package refuses some header values itself
            continue
    check(vp.extract_http(message))


@FUZZ
@given(st.dictionaries(KEYS, st.one_of(TEXT, NEAR_TRACEPARENT, NEAR_FRAME, NEAR_BAGGAGE)))
def test_dict_and_propagator_agree_on_frames(carrier):
    ours = vp.get_frame(vp.extract_dict(carrier))
    theirs = vp.get_frame(vp.FramePropagator().extract(carrier))
    assert ours == theirs


@FUZZ
@given(BYTES, st.integers(min_value=-8, max_value=300))
def test_slot_survives_random_bytes(raw, offset):
    check(vp.extract_slot(raw, offset))


@FUZZ
@given(st.binary(min_size=252, max_size=252))
def test_slot_with_valid_checksum_and_random_body(body):
    # Random content that passes the magic and CRC checks reaches the field parser.
    import zlib

    raw = b"VTFC\x01" + body[5:]
    ctx = vp.extract_slot(raw + zlib.crc32(raw).to_bytes(4, "big"))
    check(ctx)
    frame = vp.get_frame(ctx)
    if frame is not None:
        assert 0 < len(frame.stream_id.encode()) <= 64


IDS = st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans())
FRAMES = st.builds(
    vp.FrameIdentity,
    st.text(st.characters(codec="utf-8", exclude_categories=("C", "Z")), min_size=1, max_size=16),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
)
BAGGAGE = st.dictionaries(
    st.from_regex(r"\A[a-zA-Z0-9_.-]{1,8}\Z"), st.text(max_size=8), max_size=3
)


@FUZZ
@given(IDS, FRAMES, BAGGAGE)
def test_round_trip_property(ids, frame, entries):
    trace_id, span_id, sampled = ids
    ctx = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(trace_id, span_id, True, TraceFlags(int(sampled)))), Context()
    )
    for key, value in entries.items():
        ctx = baggage.set_baggage(key, value, ctx)
    ctx = vp.set_frame(frame, ctx)
    frame = vp.get_frame(ctx)  # as stored (a URL stream id loses its credentials)
    meta: dict[str, str] = {}
    vp.inject_dict(meta, ctx)
    grpc_md: list[tuple[str, str | bytes]] = []
    vp.inject_grpc(grpc_md, ctx)
    mq: list[tuple[str, bytes]] = []
    vp.inject_mq(mq, ctx)
    outs = [
        vp.extract_dict(meta),
        vp.extract_http(meta),
        vp.extract_grpc(grpc_md),
        vp.extract_mq(mq),
    ]
    for out in outs:
        span_context = trace.get_current_span(out).get_span_context()
        assert (span_context.trace_id, span_context.span_id) == (trace_id, span_id)
        assert span_context.trace_flags.sampled is sampled
        assert vp.get_frame(out) == frame
        assert baggage.get_all(out) == entries
    slot = vp.extract_slot(vp.pack_slot(ctx))
    assert trace.get_current_span(slot).get_span_context().trace_id == trace_id
    if frame is not None and len(frame.stream_id.encode()) <= 64:
        assert vp.get_frame(slot) == frame


@FUZZ
@given(st.one_of(ANY, st.tuples(st.just("visiontel/1"), ANY, VALUES)))
def test_queue_get_survives_anything_put_on_the_inner_queue(raw):
    import queue

    inner: queue.Queue[object] = queue.Queue()
    inner.put(raw)
    item, ctx = vp.ContextQueue(inner).get_nowait()
    check(ctx)
    if not (isinstance(raw, tuple) and len(raw) == 3 and raw[0] == "visiontel/1"):
        assert item is raw  # a foreign item comes back untouched
