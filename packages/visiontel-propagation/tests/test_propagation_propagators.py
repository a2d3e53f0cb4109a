"""The carriers follow the global propagator (OTEL_PROPAGATORS), with the frame identity.

OpenTelemetry's own propagators (tracecontext, baggage, b3, b3multi, jaeger) are
installed as the global one with ``propagate.set_global_textmap``, as
``OTEL_PROPAGATORS`` would at start-up; test_propagation_entrypoint.py and
tests/test_propagators_cross_process.py start fresh interpreters with the variable set.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.jaeger import JaegerPropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import visiontel.propagation as vp
from visiontel.propagation import _textmap

TRACE_ID, SPAN_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
FRAME = vp.FrameIdentity("cam 7", 42, 1_732_540_000_123_456_789)


def _context(sampled: bool = True) -> Context:
    span_context = SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(int(sampled)))
    ctx = trace.set_span_in_context(NonRecordingSpan(span_context), Context())
    return vp.set_frame(FRAME, baggage.set_baggage("site", "dock", ctx))


def _ids(ctx: Context) -> tuple[int, int, bool]:
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context.trace_id, span_context.span_id, span_context.trace_flags.sampled


@pytest.fixture
def use_global() -> Iterator[Callable[[TextMapPropagator], None]]:
    """Install a global propagator for one test; the one before it is put back after."""
    before = propagate.get_global_textmap()
    yield propagate.set_global_textmap
    propagate.set_global_textmap(before)


def _dict(ctx: Context) -> tuple[dict[str, object], Context]:
    carrier: dict[str, object] = {"shape": (720, 1280, 3)}
    vp.inject_dict(carrier, ctx)
    return carrier, vp.extract_dict(carrier)


def _http(ctx: Context) -> tuple[dict[str, object], Context]:
    headers: dict[str, str] = {}
    vp.inject_http(headers, ctx)
    # proxies change the case of header names; ASGI servers give (bytes, bytes) lists
    asgi = [(key.title().encode(), value.encode()) for key, value in headers.items()]
    return dict(headers), vp.extract_http(asgi)


def _grpc(ctx: Context) -> tuple[dict[str, object], Context]:
    metadata: list[tuple[str, str | bytes]] = [("user-agent", "grpc-python")]
    vp.inject_grpc(metadata, ctx)
    vp.inject_grpc(metadata, ctx)  # a second inject replaces, never duplicates
    keys = [key for key, _ in metadata]
    assert len(keys) == len(set(keys)) and all(key == key.lower() for key in keys)
    assert all(isinstance(value, str) and value.isprintable() for _, value in metadata)
    return dict(metadata), vp.extract_grpc(metadata)


def _mq(ctx: Context) -> tuple[dict[str, object], Context]:
    headers: list[tuple[str, bytes]] = [("content-type", b"image/jpeg")]
    vp.inject_mq(headers, ctx)
    vp.inject_mq(headers, ctx)
    assert len(headers) == len(dict(headers))
    return dict(headers), vp.extract_mq(headers)


CARRIERS = [_dict, _http, _grpc, _mq]
# propagator -> the trace keys it writes, whether it carries baggage
PROPAGATORS = {
    "b3multi": (B3MultiFormat, {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}, False),
    "b3": (B3SingleFormat, {"b3"}, False),
    "jaeger": (JaegerPropagator, {"uber-trace-id", "uberctx-site"}, True),
    "tracecontext": (TraceContextTextMapPropagator, {"traceparent"}, False),
}


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("name", list(PROPAGATORS))
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "unsampled"])
def test_carriers_follow_the_global_propagator(use_global, carrier, name, sampled):
    kind, keys, carries_baggage = PROPAGATORS[name]
    use_global(kind())
    assert _textmap.current().propagator is not None  # not the W3C fast path
    written, ctx = carrier(_context(sampled))
    ours = {key for key in written if key not in ("shape", "user-agent", "content-type")}
    assert ours == keys | {"visiontel-frame"}
    assert _ids(ctx) == (TRACE_ID, SPAN_ID, sampled)
    assert trace.get_current_span(ctx).get_span_context().is_remote
    assert vp.get_frame(ctx) == FRAME
    assert dict(baggage.get_all(ctx)) == ({"site": "dock"} if carries_baggage else {})


@pytest.mark.parametrize("listed", [False, True], ids=["frame added", "frame listed"])
def test_frame_identity_travels_once_whether_or_not_listed(use_global, listed):
    members: list[TextMapPropagator] = [B3MultiFormat()]
    if listed:  # OTEL_PROPAGATORS=b3multi,visiontel_frame
        members.append(vp.FramePropagator())
    use_global(CompositePropagator(members))
    metadata: list[tuple[str, str | bytes]] = []
    vp.inject_grpc(metadata, _context())
    assert [key for key, _ in metadata].count("visiontel-frame") == 1
    assert vp.get_frame(vp.extract_grpc(metadata)) == FRAME


def test_what_opentelemetry_writes_we_read_and_back(use_global):
    use_global(B3MultiFormat())
    theirs: dict[str, str] = {}
    propagate.inject(theirs, _context())
    assert _ids(vp.extract_http(theirs)) == (TRACE_ID, SPAN_ID, True)
    ours: dict[str, str] = {}
    vp.inject_http(ours, _context())
    assert _ids(propagate.extract(ours)) == (TRACE_ID, SPAN_ID, True)
    assert {k: v for k, v in ours.items() if k != "visiontel-frame"} == theirs


def test_the_fast_path_is_chosen_only_for_the_default_composite(use_global):
    default = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    use_global(default)
    assert _textmap.current().propagator is None
    listed = CompositePropagator([*[TraceContextTextMapPropagator(), W3CBaggagePropagator()]])
    listed = CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator(),
                                  vp.FramePropagator()])  # fmt: skip
    use_global(listed)
    assert _textmap.current().propagator is None

    class MyTraceContext(TraceContextTextMapPropagator):
        """Same fields, other behaviour: not the default."""

    others = [
        TraceContextTextMapPropagator(),  # not a composite
        CompositePropagator([TraceContextTextMapPropagator()]),  # no baggage
        CompositePropagator([MyTraceContext(), W3CBaggagePropagator()]),
        CompositePropagator([*default_members(), B3MultiFormat()]),
        CompositePropagator([*default_members(), TraceContextTextMapPropagator()]),
        CompositePropagator([]),  # OTEL_PROPAGATORS=none
    ]
    for other in others:
        use_global(other)
        assert _textmap.current().propagator is not None, other
    # and the choice follows the global when it is replaced again
    use_global(default)
    assert _textmap.current().propagator is None


def default_members() -> list[TextMapPropagator]:
    return [TraceContextTextMapPropagator(), W3CBaggagePropagator()]


SAMPLES = {
    "everything": lambda: vp.set_frame(
        FRAME,
        baggage.set_baggage(
            "tenant",
            "ü-7;x",
            baggage.set_baggage(
                "site",
                "dock-3",
                trace.set_span_in_context(
                    NonRecordingSpan(
                        SpanContext(
                            TRACE_ID, SPAN_ID, True, TraceFlags(1), TraceState([("v", "1")])
                        )
                    )
                ),
            ),
        ),
    ),
    "unsampled": lambda: _context(sampled=False),
    "frame only": lambda: vp.set_frame(FRAME, Context()),
    "empty": Context,
}


@pytest.mark.parametrize("sample", list(SAMPLES))
def test_the_fast_path_writes_and_reads_what_the_default_propagators_do(use_global, sample):
    """The W3C fast path against OpenTelemetry's tracecontext+baggage composite with the
    frame propagator, through the propagator API: the same fields and the same contexts."""
    ctx = SAMPLES[sample]()
    use_global(CompositePropagator([*default_members(), vp.FramePropagator()]))
    assert _textmap.current().propagator is None
    fast: dict[str, object] = {}
    vp.inject_dict(fast, ctx)
    fast_out = vp.extract_dict(fast)
    use_global(CompositePropagator([vp.FramePropagator(), *default_members()]))  # other order
    assert _textmap.current().propagator is None
    use_global(CompositePropagator([*default_members(), _NotDefault(), vp.FramePropagator()]))
    assert _textmap.current().propagator is not None
    general: dict[str, object] = {}
    vp.inject_dict(general, ctx)
    general_out = vp.extract_dict(general)
    assert fast == general
    for out in (fast_out, general_out):
        assert trace.get_current_span(out).get_span_context() == (
            trace.get_current_span(ctx).get_span_context()
        )
        assert dict(baggage.get_all(out)) == dict(baggage.get_all(ctx))
        assert vp.get_frame(out) == vp.get_frame(ctx)


class _NotDefault(TextMapPropagator):
    """Writes nothing, reads nothing: only makes the composite not the default one."""

    def extract(self, carrier, context=None, getter=None):  # type: ignore[no-untyped-def]
        return Context() if context is None else context

    def inject(self, carrier, context=None, setter=None):  # type: ignore[no-untyped-def]
        pass

    @property
    def fields(self) -> set[str]:
        return set()


def test_limits_and_rejections_hold_through_the_propagator_api(use_global):
    use_global(B3MultiFormat())
    good = {"x-b3-traceid": f"{TRACE_ID:032x}", "x-b3-spanid": f"{SPAN_ID:016x}"}
    before = vp.rejected_counts()

    # a value over max_value_bytes is refused whole
    vp.configure(max_value_bytes=64)
    try:
        ctx = vp.extract_mq(
            [(k, v.encode()) for k, v in good.items()] + [("x-b3-sampled", b"1" * 65)]
        )
    finally:
        vp.configure(max_value_bytes=8192)
    assert _ids(ctx) == (TRACE_ID, SPAN_ID, False)
    # repeated with different values: refused, not "the first one wins"
    other = f"{SPAN_ID + 1:016x}"
    ctx = vp.extract_http([*good.items(), ("X-B3-SpanId", other)])
    assert not trace.get_current_span(ctx).get_span_context().is_valid
    # identical repeats are harmless
    ctx = vp.extract_http([*good.items(), ("X-B3-SpanId", good["x-b3-spanid"])])
    assert _ids(ctx)[:2] == (TRACE_ID, SPAN_ID)
    # not text, not ASCII, too many entries, a malformed frame identity
    vp.extract_dict({**good, "x-b3-sampled": 1})
    vp.extract_grpc([*good.items(), ("x-b3-sampled", b"\xff")])
    vp.extract_mq([(f"k{i}", b"v") for i in range(vp.limits().max_entries)] + list(good.items()))
    assert vp.get_frame(vp.extract_dict({**good, "visiontel-frame": "cam;x;1"})) is None

    after = vp.rejected_counts()
    grew = {key for key, count in after.items() if count > before.get(key, 0)}
    assert grew == {
        ("mq", "value_too_long"),
        ("http", "x-b3-spanid_duplicate"),
        ("dict", "value_not_text"),
        ("grpc", "value_not_ascii"),
        ("mq", "too_many_entries"),
        ("dict", "frame_malformed"),
    }


def test_bad_input_never_raises_through_the_propagator_api(use_global):
    from visiontel.propagation import _diag

    use_global(JaegerPropagator())
    _diag._errors.reset()
    for carrier in (None, 42, "x", b"\x00", [1, 2], [("uber-trace-id",)], {"uber-trace-id": 5},
                    {"uber-trace-id": "a:b:c:d"}, [("uberctx-k", b"\xff")]):  # fmt: skip
        for extract in (vp.extract_dict, vp.extract_http, vp.extract_grpc, vp.extract_mq):
            assert isinstance(extract(carrier), Context)  # type: ignore[arg-type]
    assert not _diag.internal_errors()  # refused as bad input, not survived as a bug


def test_grpc_trace_bin_is_read_whatever_the_propagator(use_global):
    use_global(B3MultiFormat())
    binary = b"\x00\x00" + TRACE_ID.to_bytes(16, "big") + b"\x01" + SPAN_ID.to_bytes(8, "big")
    ctx = vp.extract_grpc([("grpc-trace-bin", binary + b"\x02\x01")])
    assert _ids(ctx) == (TRACE_ID, SPAN_ID, True)
    # the propagator's own context wins over the binary one
    b3 = [("x-b3-traceid", f"{5:032x}"), ("x-b3-spanid", f"{6:016x}"), ("x-b3-sampled", "1")]
    assert _ids(vp.extract_grpc([*b3, ("grpc-trace-bin", binary + b"\x02\x01")])) == (5, 6, True)


@pytest.mark.parametrize("kind", [B3SingleFormat, JaegerPropagator, CompositePropagator])
def test_slot_and_hand_off_stay_w3c_and_give_a_valid_context(use_global, kind):
    """The slot and the hand-off envelopes are this package's own formats (both ends are
    visiontel): they carry the whole context whatever the global propagator is, and what
    they give goes on in the configured format at the next text carrier."""
    use_global(kind([]) if kind is CompositePropagator else kind())  # [] is "none"
    received = vp.extract_slot(vp.pack_slot(_context()))
    assert _ids(received) == (TRACE_ID, SPAN_ID, True)
    assert vp.get_frame(received) == FRAME and baggage.get_all(received) == {"site": "dock"}
    handed: vp.ContextQueue[str] = vp.ContextQueue(queue.Queue())
    handed.put("frame", context=_context())
    _, received = handed.get()
    assert _ids(received) == (TRACE_ID, SPAN_ID, True)
    assert vp.get_frame(received) == FRAME and baggage.get_all(received) == {"site": "dock"}
    headers: dict[str, str] = {}
    vp.inject_http(headers, received)
    theirs: dict[str, str] = {}
    propagate.inject(theirs, received)
    assert {k: v for k, v in headers.items() if k != "visiontel-frame"} == theirs


def test_a_reused_dict_loses_the_previous_frames_values(use_global):
    use_global(B3MultiFormat())
    carrier: dict[str, object] = {"shape": (1, 2, 3)}
    vp.inject_dict(carrier, _context())
    assert "x-b3-traceid" in carrier
    vp.inject_dict(carrier, Context())
    assert carrier == {"shape": (1, 2, 3)}
