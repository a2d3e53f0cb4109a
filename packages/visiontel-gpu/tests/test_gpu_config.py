"""GPUConfig follows the workspace policy: a malformed variable (out of range included) is
logged once and its default used; a malformed argument raises."""

from __future__ import annotations

import logging

import pytest

from visiontel.gpu._config import GPUConfig
from visiontel.gpu._serve import _parser


@pytest.mark.parametrize("raw", ["0.01", "-1", "soon", "nan", "1e309"])
def test_malformed_interval_variable_means_the_default(
    raw: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VISIONTEL_GPU_INTERVAL", raw)
    with caplog.at_level(logging.WARNING):
        assert GPUConfig.resolve().interval == 1.0  # not clamped to the minimum any more
    assert f"VISIONTEL_GPU_INTERVAL={raw!r}" in caplog.text and ">= 0.05" in caplog.text


def test_good_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONTEL_GPU_INTERVAL", "0.05")
    monkeypatch.setenv("VISIONTEL_GPU_BACKEND", " NVML ")
    monkeypatch.setenv("VISIONTEL_GPU_EVENTS", "off")
    config = GPUConfig.resolve()
    assert (config.interval, config.backend, config.events) == (0.05, "nvml", False)


def test_malformed_backend_variable_means_auto(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VISIONTEL_GPU_BACKEND", "rocm")
    with caplog.at_level(logging.WARNING):
        assert GPUConfig.resolve().backend == "auto"
    assert "one of auto, nvml, dcgm, jetson" in caplog.text


def test_malformed_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"interval must be a finite number >= 0\.05"):
        GPUConfig.resolve(interval=0.01)
    with pytest.raises(ValueError, match="backend must be one of auto, nvml, dcgm, jetson"):
        GPUConfig.resolve(backend="rocm")
    assert GPUConfig.resolve(backend="DCGM", interval=2).backend == "dcgm"


def test_serve_interval_flag_is_checked_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    assert _parser().parse_args(["serve", "--interval", "0.5"]).interval == 0.5
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["serve", "--interval", "0.01"])
    assert exited.value.code == 2
    assert "'0.01' is not a number of seconds >= 0.05" in capsys.readouterr().err
