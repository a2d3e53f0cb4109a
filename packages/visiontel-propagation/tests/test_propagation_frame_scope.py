"""The scope ``start_frame`` and ``continue_frame`` return: current span and frame inside,
the caller's context back after, and an exception leaving the block handled exactly as
``trace.use_span`` handles it on the installed API (the scope is a class, not a generator
around ``use_span``, so this is checked against ``use_span`` itself)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

import visiontel.propagation as vp

Tracing = Any  # conftest.Tracing (the fixture `tracing`)

ScopeFactory = Callable[[Tracing, str], AbstractContextManager[Span]]


def _carried(tracing: Tracing) -> otel_context.Context:
    """A frame's context as the next hop extracts it (remote parent, frame identity)."""
    carrier: dict[str, str] = {}
    with vp.start_frame("capture", vp.FrameIdentity.now("cam", 7), tracer=tracing.tracer):
        vp.inject_dict(carrier)
    return vp.extract_dict(carrier)


def _start(tracing: Tracing, name: str) -> AbstractContextManager[Span]:
    return vp.start_frame(name, vp.FrameIdentity.now("cam", 3), tracer=tracing.tracer)


def _continue(tracing: Tracing, name: str) -> AbstractContextManager[Span]:
    return vp.continue_frame(name, _carried(tracing), tracer=tracing.tracer)


SCOPES = [pytest.param(_start, id="start_frame"), pytest.param(_continue, id="continue_frame")]


@pytest.mark.parametrize("scope", SCOPES)
def test_the_span_and_frame_are_current_inside_and_the_callers_context_after(
    tracing: Tracing, scope: ScopeFactory
) -> None:
    before = otel_context.get_current()
    with scope(tracing, "stage") as span:
        assert trace.get_current_span() is span
        frame = vp.get_frame()
        assert frame is not None and frame.stream_id == "cam"
        assert span.is_recording()
    assert otel_context.get_current() is before
    (finished,) = tracing.named("stage")
    assert finished.end_time is not None
    assert (finished.attributes or {}).get("visiontel.frame.stream_id") == "cam"


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("failure", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()])
def test_an_exception_is_handled_as_use_span_handles_it(
    tracing: Tracing, scope: ScopeFactory, failure: BaseException
) -> None:
    before = otel_context.get_current()
    with pytest.raises(type(failure)):
        with scope(tracing, "stage"):
            raise failure
    assert otel_context.get_current() is before
    # the installed API's own handling of the same exception, for comparison
    reference = tracing.tracer.start_span("reference")
    with pytest.raises(type(failure)):
        with trace.use_span(reference, end_on_exit=True):
            raise failure
    (ours,), (theirs,) = tracing.named("stage"), tracing.named("reference")
    assert ours.end_time is not None
    assert [e.name for e in ours.events] == [e.name for e in theirs.events]
    assert (ours.status.status_code, ours.status.description) == (
        theirs.status.status_code,
        theirs.status.description,
    )
    if isinstance(failure, RuntimeError):  # recorded by every API release
        assert ours.status.status_code is StatusCode.ERROR
        assert ours.events[0].attributes is not None
        assert ours.events[0].attributes["exception.message"] == "CUDA out of memory"


@pytest.mark.parametrize("scope", SCOPES)
def test_each_call_of_a_decorated_function_gets_a_span_of_its_own(
    tracing: Tracing, scope: ScopeFactory
) -> None:
    seen: list[int] = []
    before = otel_context.get_current()

    @scope(tracing, "track")
    def track(again: bool) -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)
        if again:  # a call inside a call: the scopes must not share their state
            track(False)

    track(True)
    track(False)
    assert otel_context.get_current() is before
    spans = {s.context.span_id: s for s in tracing.named("track")}
    assert len(spans) == 3 == len(set(seen))
    # each under the same parent: the carried frame's span, or none (a new trace each)
    assert len({s.parent.span_id if s.parent else None for s in spans.values()}) == 1
    assert all(s.end_time is not None for s in spans.values())


def test_a_tracer_that_fails_leaves_the_frame_running_untraced(
    tracing: Tracing, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing:
        def start_span(self, *args: Any, **kwargs: Any) -> Span:
            raise RuntimeError("broken tracer")

    carried = _carried(tracing)
    before = otel_context.get_current()
    with vp.continue_frame("stage", carried, tracer=Failing()) as span:  # type: ignore[arg-type]
        assert span is trace.INVALID_SPAN
        assert vp.get_frame() is not None  # the frame still travels on
    assert otel_context.get_current() is before
    assert "continue_frame" in caplog.text
