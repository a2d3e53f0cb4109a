"""``sync_free_profile``: the stage timers of ``stream_inference`` stop synchronising the device.

Ultralytics times each stage with ``ops.Profile``, which on a GPU synchronises the device at
both ends of every stage (8.4: ``Profile.accelerator.synchronize``; 8.3: ``Profile.cuda`` and
``torch.cuda.synchronize``). The three timers of a run are a local variable of
``stream_inference``; with the option on, ``on_predict_start`` finds them through the frame
and turns their sync off.

There is no GPU here, so the timers a run creates are made to synchronise as they would on
one: ``Profile.__init__`` is wrapped to give the timers made by ``stream_inference`` a
recording sync (the 8.4 ``accelerator`` or the 8.3 ``cuda`` flag, with a recording
``torch.cuda.synchronize``). What the option must do is then visible: every timer of the run
found and turned off before its first use (no sync recorded), or, with the option off, left
exactly as Ultralytics made it (every stage synchronised).
"""

from __future__ import annotations

import inspect
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ultralytics import YOLO
from ultralytics.engine import predictor as predictor_module
from ultralytics.utils import ops

from visiontel._support import env as support_env
from visiontel.torch import _safety
from visiontel.ultralytics import UltralyticsInstrumentor, instrument_yolo, uninstrument_yolo

ENV = "VISIONTEL_ULTRALYTICS_SYNC_FREE_PROFILE"
STAGES = ("preprocess", "inference", "postprocess")
IMGSZ = 64


@dataclass
class Timers:
    """The ``ops.Profile`` instances ``stream_inference`` made, and every sync they asked for."""

    layout: str = ""  # "accelerator" (8.4) or "cuda" (8.3)
    made: list[Any] = field(default_factory=list)
    syncs: list[Any] = field(default_factory=list)

    def synchronize(self, device: Any = None) -> None:
        self.syncs.append(device)

    def sync_on(self, profiler: Any) -> bool:
        value = profiler.__dict__.get(self.layout)
        return value is self if self.layout == "accelerator" else value is True

    def sync_off(self, profiler: Any) -> bool:
        value = profiler.__dict__.get(self.layout, "missing")
        return value is None if self.layout == "accelerator" else value is False


def _made_by_stream_inference() -> bool:
    frame = sys._getframe(2)  # the wrapper's caller's caller: who called Profile(...)
    return frame is not None and frame.f_code.co_name == "stream_inference"


@pytest.fixture
def timers(monkeypatch: pytest.MonkeyPatch) -> Timers:
    """Timers of every predict run that synchronise as on a GPU, recorded."""
    recorded = Timers()
    original = ops.Profile.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if not _made_by_stream_inference():
            return
        if "accelerator" in self.__dict__:  # 8.4: a torch device module, None on CPU
            recorded.layout = "accelerator"
            self.accelerator = recorded
        elif "cuda" in self.__dict__:  # 8.3: a flag, then torch.cuda.synchronize
            recorded.layout = "cuda"
            self.cuda = True
        else:
            raise AssertionError(f"an ops.Profile layout this test does not know: {self.__dict__}")
        recorded.made.append(self)

    monkeypatch.setattr(ops.Profile, "__init__", init)
    monkeypatch.setattr(torch.cuda, "synchronize", recorded.synchronize)
    return recorded


@pytest.fixture(autouse=True)
def _offline_and_fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.delenv(ENV, raising=False)
    _safety.errors.reset()  # warn_once is per process: forget what earlier tests said
    support_env.reset()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def make_model(exporter: InMemorySpanExporter) -> Iterator[Callable[..., Any]]:
    """``make_model(how, **settings)``: a YOLO from yaml, instrumented one of three ways."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = UltralyticsInstrumentor()
    models: list[Any] = []

    def make(how: str = "instrument_yolo", **settings: Any) -> Any:
        if how == "instrumentor":
            instrumentor.instrument(tracer_provider=provider, **settings)
            model = YOLO("yolov8n.yaml")
        else:
            model = instrument_yolo(YOLO("yolov8n.yaml"), tracer_provider=provider, **settings)
        models.append(model)
        return model

    yield make
    for model in models:
        uninstrument_yolo(model)
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def _predict(model: Any, tmp_path: Path) -> Any:
    image = np.random.default_rng(0).integers(0, 255, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
    (result,) = model.predict(
        image, imgsz=IMGSZ, device="cpu", project=str(tmp_path), verbose=False
    )
    return result


def _assert_speed(result: Any) -> None:
    """Ultralytics' own timing still works: ``Profile`` measures with or without the sync."""
    speed = result.speed
    for stage in STAGES:
        assert isinstance(speed.get(stage), float), (stage, speed)
        assert speed[stage] >= 0, (stage, speed)


def _sync_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING and ENV in record.getMessage()
    ]


@pytest.mark.parametrize("how", ["argument", "environment", "instrumentor"])
def test_the_run_profilers_are_found_and_stop_synchronising(
    timers: Timers,
    make_model: Callable[..., Any],
    exporter: InMemorySpanExporter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    caplog.set_level(logging.WARNING)
    if how == "argument":
        model = make_model(sync_free_profile=True)
    elif how == "environment":
        monkeypatch.setenv(ENV, "true")
        model = make_model()
    else:
        model = make_model("instrumentor", sync_free_profile=True)
    results = [_predict(model, tmp_path) for _ in range(2)]  # each run makes its own timers
    assert len(timers.made) == 6
    assert all(timers.sync_off(profiler) for profiler in timers.made)
    assert timers.syncs == []  # turned off before their first use
    assert _sync_warnings(caplog) == []
    for result in results:
        _assert_speed(result)
    assert len([s for s in exporter.get_finished_spans() if s.name == "predict yolov8n"]) == 2


@pytest.mark.parametrize("setting", [None, False], ids=["default", "false"])
def test_with_the_option_off_the_profilers_are_untouched(
    timers: Timers,
    make_model: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    setting: bool | None,
) -> None:
    caplog.set_level(logging.WARNING)
    model = make_model(sync_free_profile=setting)
    result = _predict(model, tmp_path)
    assert len(timers.made) == 3
    assert all(timers.sync_on(profiler) for profiler in timers.made)
    assert len(timers.syncs) == 2 * len(STAGES)  # each stage synchronised at both ends
    assert _sync_warnings(caplog) == []
    _assert_speed(result)


def _stream_inference_keeping_its_timers_elsewhere() -> Any:
    """``stream_inference`` as a release that renamed its local ``profilers`` would have it."""
    source = textwrap.dedent(inspect.getsource(predictor_module.BasePredictor.stream_inference))
    assert source.count("profilers") >= 4, "this Ultralytics no longer names them profilers"
    namespace = dict(vars(predictor_module))
    exec(compile(source.replace("profilers", "stage_timers"), "<renamed>", "exec"), namespace)
    return namespace["stream_inference"]


def _profile_without_known_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ops.Profile`` keeping its sync switch where visiontel does not look (the class)."""
    original = ops.Profile.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for name in ("accelerator", "cuda"):
            if name in self.__dict__:
                monkeypatch.setattr(ops.Profile, name, self.__dict__.pop(name), raising=False)

    monkeypatch.setattr(ops.Profile, "__init__", init)


@pytest.mark.parametrize("layout", ["renamed-local", "unknown-profile"])
def test_profilers_not_found_warn_once_and_predict_still_works(
    make_model: Callable[..., Any],
    exporter: InMemorySpanExporter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    layout: str,
) -> None:
    caplog.set_level(logging.WARNING)
    if layout == "renamed-local":
        monkeypatch.setattr(
            predictor_module.BasePredictor,
            "stream_inference",
            _stream_inference_keeping_its_timers_elsewhere(),
        )
    else:
        _profile_without_known_sync(monkeypatch)
    model = make_model(sync_free_profile=True)
    results = [_predict(model, tmp_path) for _ in range(3)]
    (warning,) = _sync_warnings(caplog)  # once, not once per predict
    assert warning.name.startswith("visiontel")
    assert "cannot find" in warning.getMessage()
    for result in results:
        _assert_speed(result)
    spans = exporter.get_finished_spans()
    assert len([s for s in spans if s.name == "predict yolov8n"]) == 3  # still traced
    assert {s.name for s in spans} >= set(STAGES)
