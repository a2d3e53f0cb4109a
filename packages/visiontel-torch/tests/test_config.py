from __future__ import annotations

import logging

import pytest

from visiontel.torch import Granularity
from visiontel.torch._config import TorchConfig, config_from_env


def test_defaults() -> None:
    config = config_from_env({})
    assert config == TorchConfig()
    assert config.granularity is Granularity.STAGE
    assert config.max_layer_spans == 256


def test_every_variable_is_read() -> None:
    config = config_from_env(
        {
            "VISIONTEL_TORCH_GRANULARITY": " Layer ",
            "VISIONTEL_TORCH_LAYER_DEPTH": "2",
            "VISIONTEL_TORCH_INCLUDE": "backbone.*, head",
            "VISIONTEL_TORCH_EXCLUDE": "*.act",
            "VISIONTEL_TORCH_MAX_LAYER_SPANS": "0",
            "VISIONTEL_TORCH_CAPTURE_SHAPES": "false",
            "VISIONTEL_TORCH_MODEL_NAME": "yolo",
            "VISIONTEL_TORCH_MODEL_VERSION": "canary",
            "VISIONTEL_TORCH_AUTO_DISCOVER": "no",
            "VISIONTEL_TORCH_GPU_TIMEOUT": "2.5",
        }
    )
    assert config == TorchConfig(
        granularity=Granularity.LAYER,
        layer_depth=2,
        include=("backbone.*", "head"),
        exclude=("*.act",),
        max_layer_spans=0,
        capture_shapes=False,
        model_name="yolo",
        model_version="canary",
        auto_discover=False,
        gpu_timeout_s=2.5,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VISIONTEL_TORCH_GRANULARITY", "all"),
        ("VISIONTEL_TORCH_LAYER_DEPTH", "-1"),
        ("VISIONTEL_TORCH_LAYER_DEPTH", "two"),
        ("VISIONTEL_TORCH_MAX_LAYER_SPANS", "1e9"),
        ("VISIONTEL_TORCH_CAPTURE_SHAPES", "maybe"),
        ("VISIONTEL_TORCH_GPU_TIMEOUT", "nan"),
        ("VISIONTEL_TORCH_GPU_TIMEOUT", "inf"),
    ],
)
def test_bad_values_fall_back_with_one_warning(
    variable: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="visiontel.torch"):
        config = config_from_env({variable: value})
        config_from_env({variable: value})
    assert config == TorchConfig()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert variable in warnings[0]


def test_explicit_arguments_are_strict() -> None:
    base = TorchConfig()
    with pytest.raises(ValueError, match="layer_depth"):
        base.with_overrides(layer_depth=0)
    with pytest.raises(ValueError, match="max_layer_spans"):
        base.with_overrides(max_layer_spans=-3)
    with pytest.raises(ValueError, match="include"):
        base.with_overrides(include=[1, 2])
    assert base.with_overrides(include="neck").include == ("neck",)
    assert base.with_overrides(granularity=None) == base


def test_arguments_of_the_wrong_type_raise_type_error() -> None:
    base = TorchConfig()
    with pytest.raises(TypeError, match="layer_depth must be an integer >= 1; got str '2'"):
        base.with_overrides(layer_depth="2")
    with pytest.raises(TypeError, match="max_layer_spans"):
        base.with_overrides(max_layer_spans=True)
    with pytest.raises(ValueError, match="granularity must be one of model, stage, layer"):
        base.with_overrides(granularity="tile")
    assert base.with_overrides(granularity=" LAYER ").granularity is Granularity.LAYER


def test_the_warning_names_what_is_accepted_and_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        config = config_from_env({"VISIONTEL_TORCH_GPU_TIMEOUT": "0.0001"})
    assert config.gpu_timeout_s == 10.0
    (message,) = [r.getMessage() for r in caplog.records]
    assert "VISIONTEL_TORCH_GPU_TIMEOUT='0.0001' is not a finite number >= 0.001" in message
    assert "default 10.0" in message
