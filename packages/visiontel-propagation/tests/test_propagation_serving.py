"""Force-trace (propagator + sampler) and the trace id handed back in responses."""

from __future__ import annotations

import logging
import re

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBasedTraceIdRatio, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import visiontel.propagation as vp
from visiontel._support import env as support_env
from visiontel.propagation._serving import force_trace_requested

TRACEPARENT_UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
TRACEPARENT_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACERESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.fixture(autouse=True)
def _env_warnings_said_again() -> None:
    support_env.reset()


class Tracing:
    """A private SDK tracer with ``sampler`` and an in-memory exporter."""

    def __init__(self, sampler: Sampler) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


def make_tracing(sampler: Sampler) -> Tracing:
    return Tracing(sampler)


# --- the propagator -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "asked"),
    [
        ({"visiontel-force-trace": "1"}, True),
        ({"visiontel-force-trace": " 1 "}, True),
        ({"visiontel-force-trace": ["1"]}, True),
        ({"visiontel-force-trace": ["0", "1"]}, False),  # the first field decides
        ({"visiontel-force-trace": "0"}, False),
        ({"visiontel-force-trace": "true"}, False),
        ({"visiontel-force-trace": ""}, False),
        ({"visiontel-force-trace": "1" + " " * 100}, False),
        ({"x-force-trace": "1"}, False),
        ({}, False),
    ],
)
def test_propagator_reads_only_the_value_1(headers, asked):
    ctx = vp.ForceTracePropagator().extract(headers)
    assert force_trace_requested(ctx) is asked


def test_propagator_keeps_what_the_others_extracted_and_injects_nothing():
    composite = CompositePropagator([TraceContextTextMapPropagator(), vp.ForceTracePropagator()])
    ctx = composite.extract({"traceparent": TRACEPARENT_SAMPLED, "visiontel-force-trace": "1"})
    assert force_trace_requested(ctx)
    assert trace.get_current_span(ctx).get_span_context().trace_id == int(
        TRACEPARENT_SAMPLED[3:35], 16
    )
    carrier: dict[str, str] = {}
    vp.ForceTracePropagator().inject(carrier, context=vp.force_trace())
    assert carrier == {}
    assert vp.ForceTracePropagator().fields == set()


def test_propagator_survives_a_carrier_that_cannot_be_read():
    class Broken:
        def get(self, carrier, key):
            raise RuntimeError("boom")

        def keys(self, carrier):
            return []

    ctx = vp.ForceTracePropagator().extract({}, getter=Broken())
    assert not force_trace_requested(ctx)


# --- the sampler ----------------------------------------------------------------------------
def _remote(traceparent: str, *, asked: bool, state: str | None = None):
    ctx = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    if state is not None:
        sc = trace.get_current_span(ctx).get_span_context()
        sc = SpanContext(
            sc.trace_id, sc.span_id, True, sc.trace_flags, TraceState.from_header([state])
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(sc))
    return vp.force_trace(ctx) if asked else ctx


def test_ratio_zero_drops_a_plain_request_and_samples_a_forced_one():
    t = make_tracing(vp.ForceTraceSampler(ParentBasedTraceIdRatio(0.0), max_per_s=100))
    with t.tracer.start_as_current_span("plain", context=otel_context.Context()) as plain:
        assert not plain.is_recording()
    with t.tracer.start_as_current_span("forced", context=vp.force_trace()) as forced:
        with t.tracer.start_as_current_span("child"):
            pass
    assert forced.get_span_context().trace_flags.sampled
    assert [s.name for s in t.spans()] == ["child", "forced"]
    assert t.named("forced")[0].attributes[vp.FORCE_TRACE_ATTRIBUTE] is True
    assert vp.FORCE_TRACE_ATTRIBUTE not in t.named("child")[0].attributes


def test_a_remote_unsampled_parent_is_overridden_and_its_tracestate_kept():
    t = make_tracing(vp.ForceTraceSampler(ParentBasedTraceIdRatio(0.0), max_per_s=100))
    ctx = _remote(TRACEPARENT_UNSAMPLED, asked=True, state="vendor=abc")
    with t.tracer.start_as_current_span("server", context=ctx) as span:
        pass
    sc = span.get_span_context()
    assert sc.trace_flags.sampled
    assert sc.trace_id == int(TRACEPARENT_UNSAMPLED[3:35], 16)  # same trace as upstream
    assert sc.trace_state.get("vendor") == "abc"
    assert t.spans()[0].attributes[vp.FORCE_TRACE_ATTRIBUTE] is True


def test_a_request_sampled_anyway_costs_no_budget_and_gets_no_attribute():
    # A remote sampled parent: ParentBased samples it, the flag changes nothing.
    t = make_tracing(vp.ForceTraceSampler(ParentBasedTraceIdRatio(0.0), max_per_s=1))
    for _ in range(3):
        ctx = _remote(TRACEPARENT_SAMPLED, asked=True)
        with t.tracer.start_as_current_span("sampled upstream", context=ctx) as span:
            assert span.is_recording()
    assert all(vp.FORCE_TRACE_ATTRIBUTE not in s.attributes for s in t.spans())
    # the bucket's one token is still there
    with t.tracer.start_as_current_span("forced", context=vp.force_trace()) as span:
        assert span.is_recording()


def test_spans_inside_a_request_never_ask_again():
    # An unsampled local parent with the flag in its context: a span inside a request whose
    # forcing was refused. It must stay out and must not use the budget.
    sampler = vp.ForceTraceSampler(ParentBasedTraceIdRatio(0.0), max_per_s=1)
    t = make_tracing(sampler)
    with t.tracer.start_as_current_span("refused request", context=otel_context.Context()):
        with t.tracer.start_as_current_span("inner", context=vp.force_trace()) as inner:
            assert not inner.is_recording()
    with t.tracer.start_as_current_span("next request", context=vp.force_trace()) as nxt:
        assert nxt.is_recording()  # the budget's one token was not spent on "inner"


def test_the_rate_limit_refuses_and_says_so_once(caplog):
    t = make_tracing(vp.ForceTraceSampler(ParentBasedTraceIdRatio(0.0), max_per_s=2))
    caplog.set_level(logging.WARNING, logger="visiontel.propagation")
    recorded = []
    for _ in range(6):
        with t.tracer.start_as_current_span("r", context=vp.force_trace()) as span:
            recorded.append(span.is_recording())
    # a bucket of 2: the first two are forced; refilling at 2/s adds at most a few in the
    # time 6 spans take, never all of them
    assert recorded[:2] == [True, True]
    assert recorded.count(True) < 6
    lines = [r for r in caplog.records if "VISIONTEL_FORCE_TRACE_MAX_PER_S" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


def test_zero_per_second_turns_forcing_off():
    t = make_tracing(vp.ForceTraceSampler(ParentBasedTraceIdRatio(0.0), max_per_s=0))
    with t.tracer.start_as_current_span("r", context=vp.force_trace()) as span:
        assert not span.is_recording()


def test_other_samplers_ignore_the_flag():
    t = make_tracing(ParentBasedTraceIdRatio(0.0))
    with t.tracer.start_as_current_span("r", context=vp.force_trace()) as span:
        assert not span.is_recording()


@pytest.mark.parametrize(
    ("value", "expected", "warned"),
    [
        (None, 10.0, False),
        ("3", 3.0, False),
        ("0.5", 0.5, False),
        ("-1", 10.0, True),
        ("lots", 10.0, True),
        ("nan", 10.0, True),
    ],
)
def test_max_per_s_from_the_environment(monkeypatch, caplog, value, expected, warned):
    if value is None:
        monkeypatch.delenv("VISIONTEL_FORCE_TRACE_MAX_PER_S", raising=False)
    else:
        monkeypatch.setenv("VISIONTEL_FORCE_TRACE_MAX_PER_S", value)
    caplog.set_level(logging.WARNING, logger="visiontel")
    sampler = vp.ForceTraceSampler(ALWAYS_ON)
    assert sampler.max_per_s == expected
    said = [r for r in caplog.records if "VISIONTEL_FORCE_TRACE_MAX_PER_S" in r.getMessage()]
    assert bool(said) is warned


def test_malformed_arguments_raise_saying_what_to_pass():
    with pytest.raises(TypeError, match="SDK Sampler"):
        vp.ForceTraceSampler("always_on")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_per_s"):
        vp.ForceTraceSampler(ALWAYS_ON, max_per_s=-1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        vp.force_trace_sampler("half")
    with pytest.raises(ValueError, match="force_trace_sampler"):
        vp.force_trace_sampler(1.5)


# --- the entry-point factory ----------------------------------------------------------------
def test_factory_wraps_parent_based_ratio(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    sampler = vp.force_trace_sampler("0.25")
    assert isinstance(sampler, vp.ForceTraceSampler)
    assert sampler.get_description().startswith("ForceTrace{ParentBased{root:TraceIdRatioBased")
    assert "TraceIdRatioBased{0.25}" in sampler.get_description()
    assert "TraceIdRatioBased{1.0}" in vp.force_trace_sampler(None).get_description()
    assert "TraceIdRatioBased{1.0}" in vp.force_trace_sampler(" ").get_description()
    assert "TraceIdRatioBased{0.5}" in vp.force_trace_sampler(0.5).get_description()


@pytest.mark.parametrize("bad", ["often", "1.5", "-0.1"])
def test_a_malformed_sampler_arg_variable_is_logged_once_and_1_used(monkeypatch, caplog, bad):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", bad)
    caplog.set_level(logging.WARNING, logger="visiontel")
    for _ in range(2):  # what the SDK does: the variable's value as the argument
        sampler = vp.force_trace_sampler(bad)
        assert "TraceIdRatioBased{1.0}" in sampler.get_description()
    said = [r for r in caplog.records if "OTEL_TRACES_SAMPLER_ARG" in r.getMessage()]
    assert len(said) == 1


# --- trace id in responses ------------------------------------------------------------------
def test_trace_response_headers_for_sampled_and_unsampled_spans():
    assert vp.trace_response_headers() == {}  # no span: nothing to say
    t = make_tracing(vp.ForceTraceSampler(ParentBasedTraceIdRatio(0.0), max_per_s=100))
    with t.tracer.start_as_current_span("plain", context=otel_context.Context()) as plain:
        unsampled = vp.trace_response_headers()
    with t.tracer.start_as_current_span("forced", context=vp.force_trace()) as forced:
        sampled = vp.trace_response_headers()
    for headers, span, sampled_bit in ((unsampled, plain, 0), (sampled, forced, 1)):
        (key,) = headers
        assert key == "traceresponse"
        match = TRACERESPONSE.fullmatch(headers[key])
        assert match, headers
        sc = span.get_span_context()
        assert match.groups()[:2] == (f"{sc.trace_id:032x}", f"{sc.span_id:016x}")
        # bit 0 is "sampled"; newer SDKs also set W3C Level 2's "random trace id" bit (02)
        assert int(match.group(3), 16) == int(sc.trace_flags)
        assert int(match.group(3), 16) & 1 == sampled_bit
    assert vp.trace_response_headers(forced) == sampled  # an explicit span, outside it
