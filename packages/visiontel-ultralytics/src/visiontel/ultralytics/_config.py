"""Configuration: explicit arguments win, ``VISIONTEL_ULTRALYTICS_*`` variables are defaults.

The variables are parsed by the workspace's one parser (``visiontel._support.env``), so a
malformed value behaves the same in every visiontel package: it is logged once (variable,
value, what is accepted, the default) and the default is used, out of range included; the
application is never stopped by a typo. A malformed argument raises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from visiontel._support.env import check_int, env_bool, env_int
from visiontel.torch._config import _env_patterns, _env_text

ENV_MODEL_NAME = "VISIONTEL_ULTRALYTICS_MODEL_NAME"
ENV_MODEL_VERSION = "VISIONTEL_ULTRALYTICS_MODEL_VERSION"
ENV_TOP_CLASSES = "VISIONTEL_ULTRALYTICS_TOP_CLASSES"
ENV_CLASSES = "VISIONTEL_ULTRALYTICS_CLASSES"
ENV_CLASS_METRICS = "VISIONTEL_ULTRALYTICS_CLASS_METRICS"
ENV_MAX_CONFIDENCES = "VISIONTEL_ULTRALYTICS_MAX_CONFIDENCES"
ENV_TORCH_SPANS = "VISIONTEL_ULTRALYTICS_TORCH_SPANS"
ENV_SYNC_FREE_PROFILE = "VISIONTEL_ULTRALYTICS_SYNC_FREE_PROFILE"
ENV_TRITON_HEADERS = "VISIONTEL_ULTRALYTICS_TRITON_HEADERS"

_MAX_TOP_CLASSES = 256
_MAX_CONFIDENCES = 100_000


@dataclass(frozen=True)
class UltralyticsConfig:
    """Resolved settings (see the README's table)."""

    model_name: str | None = None
    """Default: the weights' file stem (``yolov8n`` for ``yolov8n.pt`` or ``yolov8n.yaml``)."""
    model_version: str | None = None
    """Default: the checkpoint's ``date`` metadata when it has one."""
    top_classes: int = 16
    classes: tuple[str, ...] = ()
    class_metrics: bool = True
    max_confidences: int = 16
    torch_spans: bool = True
    sync_free_profile: bool = False
    triton_headers: bool = True

    def with_overrides(self, **overrides: object) -> UltralyticsConfig:
        """A copy with explicit arguments applied; ``None`` keeps the default."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        for name, high in (
            ("top_classes", _MAX_TOP_CLASSES),
            ("max_confidences", _MAX_CONFIDENCES),
        ):
            if name in clean:
                clean[name] = check_int(name, clean[name], minimum=0, maximum=high)
        if "classes" in clean:
            clean["classes"] = _class_names(clean["classes"])
        for name in ("model_name", "model_version"):
            if name in clean and not isinstance(clean[name], str):
                raise ValueError(f"{name} must be a string; got {clean[name]!r}")
        return replace(self, **clean)  # type: ignore[arg-type]


def _class_names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"classes must be a list of class names; got {value!r}")
    names = tuple(v.strip() for v in value if v.strip())
    if len(names) > _MAX_TOP_CLASSES:
        raise ValueError(f"classes accepts at most {_MAX_TOP_CLASSES} names; got {len(names)}")
    return names


def config_from_env(env: Mapping[str, str] | None = None) -> UltralyticsConfig:
    """Defaults from ``VISIONTEL_ULTRALYTICS_*`` variables; never raises."""
    env = os.environ if env is None else env
    defaults = UltralyticsConfig()
    return UltralyticsConfig(
        model_name=_env_text(env, ENV_MODEL_NAME),
        model_version=_env_text(env, ENV_MODEL_VERSION),
        top_classes=env_int(
            ENV_TOP_CLASSES, defaults.top_classes, minimum=0, maximum=_MAX_TOP_CLASSES, environ=env
        ),
        classes=_env_patterns(env, ENV_CLASSES)[:_MAX_TOP_CLASSES],
        class_metrics=env_bool(ENV_CLASS_METRICS, defaults.class_metrics, environ=env),
        max_confidences=env_int(
            ENV_MAX_CONFIDENCES,
            defaults.max_confidences,
            minimum=0,
            maximum=_MAX_CONFIDENCES,
            environ=env,
        ),
        torch_spans=env_bool(ENV_TORCH_SPANS, defaults.torch_spans, environ=env),
        sync_free_profile=env_bool(ENV_SYNC_FREE_PROFILE, defaults.sync_free_profile, environ=env),
        triton_headers=env_bool(ENV_TRITON_HEADERS, defaults.triton_headers, environ=env),
    )
