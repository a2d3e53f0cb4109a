"""The pieces of `visiontel demo --model yolov8n`: flags, the yaml lookup, the detections rows.

The lookup needs Ultralytics installed (the test extra installs it), not imported.
"""

from __future__ import annotations

import argparse
import pathlib
from types import SimpleNamespace

import pytest
import torch

from visiontel.demo import _yolo
from visiontel.demo._config import DemoConfig, add_arguments, from_arguments
from visiontel.demo._errors import UsageError


def _config(*argv: str, monkeypatch: pytest.MonkeyPatch) -> DemoConfig:
    for name in ("VISIONTEL_DEMO_MODEL", "VISIONTEL_DEMO_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_arguments(parser.parse_args(list(argv)))


def test_model_names(monkeypatch: pytest.MonkeyPatch) -> None:
    default = _config(monkeypatch=monkeypatch)
    assert (default.model, default.weights, default.ultralytics) == ("tinydet", None, False)
    yolo = _config("--model", "yolo11n", monkeypatch=monkeypatch)
    assert yolo.ultralytics
    # A checkpoint is named after its file unless --model names it.
    named = _config("--weights", "runs/best.pt", monkeypatch=monkeypatch)
    assert (named.model, named.weights) == ("best", "runs/best.pt")
    named = _config("--weights", "best.pt", "--model", "yolov8n", monkeypatch=monkeypatch)
    assert named.model == "yolov8n"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--model", "resnet"), "unknown model 'resnet'"),
        (("--model", "YOLOv8n"), "unknown model 'YOLOv8n'"),
        (("--model", "tinydet", "--weights", "x.pt"), "--model tinydet does not take"),
        (("--weights", "weird name!.pt"), "name it with --model"),
    ],
)
def test_bad_model_flags(
    argv: tuple[str, ...], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError, match=needle):
        _config(*argv, monkeypatch=monkeypatch)


def test_bundled_yaml_follows_ultralytics_naming() -> None:
    found = _yolo.bundled_yaml("yolov8n")
    assert found is not None and found.name == "yolov8.yaml"  # the scale letter is dropped
    segment = _yolo.bundled_yaml("yolov8n-seg")
    assert segment is not None and segment.name == "yolov8-seg.yaml"
    assert _yolo.bundled_yaml("yolov99") is None
    assert "conf 0.0001" in _yolo.check("yolo11n", None)


def test_check_refuses_a_missing_checkpoint(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        _yolo.check("yolov8n", str(tmp_path / "missing.pt"))
    (tmp_path / "mine.pt").write_bytes(b"checked by the detector, when it loads it")
    assert _yolo.check("mine", str(tmp_path / "mine.pt")).startswith("model mine from ")


def _boxes(rows: list[list[float]]) -> SimpleNamespace:
    data = torch.tensor(rows).reshape(-1, 6)
    return SimpleNamespace(xyxy=data[:, :4], conf=data[:, 4], cls=data[:, 5])


def test_rows_from_boxes_obb_or_nothing() -> None:
    row = [1.0, 2.0, 30.0, 40.0, 0.5, 3.0]
    boxes = SimpleNamespace(boxes=_boxes([row]), obb=None)
    assert _yolo._rows(boxes).tolist() == [row]
    oriented = SimpleNamespace(boxes=None, obb=_boxes([row]))
    assert _yolo._rows(oriented).tolist() == [row]
    classifier = SimpleNamespace(boxes=None, obb=None)
    assert _yolo._rows(classifier).shape == (0, 6)
