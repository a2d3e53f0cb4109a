"""UltralyticsConfig follows the workspace policy: a malformed variable (out of range
included) is logged once and its default used; a malformed argument raises."""

from __future__ import annotations

import logging

import pytest

from visiontel.ultralytics._config import UltralyticsConfig, config_from_env


def test_every_variable_is_read() -> None:
    config = config_from_env(
        {
            "VISIONTEL_ULTRALYTICS_MODEL_NAME": " det ",
            "VISIONTEL_ULTRALYTICS_MODEL_VERSION": "v2",
            "VISIONTEL_ULTRALYTICS_TOP_CLASSES": "256",
            "VISIONTEL_ULTRALYTICS_CLASSES": "person, car,,",
            "VISIONTEL_ULTRALYTICS_CLASS_METRICS": "off",
            "VISIONTEL_ULTRALYTICS_MAX_CONFIDENCES": "0",
            "VISIONTEL_ULTRALYTICS_TORCH_SPANS": "No",
            "VISIONTEL_ULTRALYTICS_SYNC_FREE_PROFILE": "1",
            "VISIONTEL_ULTRALYTICS_TRITON_HEADERS": "false",
        }
    )
    assert config == UltralyticsConfig(
        model_name="det",
        model_version="v2",
        top_classes=256,
        classes=("person", "car"),
        class_metrics=False,
        max_confidences=0,
        torch_spans=False,
        sync_free_profile=True,
        triton_headers=False,
    )


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("VISIONTEL_ULTRALYTICS_TOP_CLASSES", "1000", "an integer between 0 and 256"),
        ("VISIONTEL_ULTRALYTICS_TOP_CLASSES", "-1", "an integer between 0 and 256"),
        ("VISIONTEL_ULTRALYTICS_MAX_CONFIDENCES", "lots", "an integer between 0 and 100000"),
        ("VISIONTEL_ULTRALYTICS_TORCH_SPANS", "perhaps", "a boolean"),
    ],
)
def test_malformed_variables_are_logged_once_and_defaulted(
    variable: str, value: str, accepted: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        config = config_from_env({variable: value})
        config_from_env({variable: value})
    assert config == UltralyticsConfig()  # out of range is not clamped any more: the default
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"{variable}={value!r}" in message and accepted in message


def test_malformed_arguments_raise() -> None:
    base = UltralyticsConfig()
    assert base.with_overrides(top_classes=3, max_confidences=100_000).top_classes == 3
    with pytest.raises(ValueError, match="top_classes must be an integer between 0 and 256"):
        base.with_overrides(top_classes=257)
    with pytest.raises(TypeError, match="max_confidences must be an integer"):
        base.with_overrides(max_confidences="5")
    with pytest.raises(TypeError, match="got bool True"):
        base.with_overrides(top_classes=True)
    with pytest.raises(ValueError, match="model_name must be a string"):
        base.with_overrides(model_name=3)
