"""Configuration of visiontel-torch: arguments win, ``VISIONTEL_TORCH_*`` variables are defaults.

Environment variables are read when the instrumentor starts, through the workspace's one
parser (``visiontel._support.env``): a malformed value (out of range included) never stops
the application; it is logged once (naming the variable, the value, what is accepted and
the default) and the default is used. Explicit arguments are validated strictly
(``ValueError``; ``TypeError`` for a wrong type).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from visiontel._support.env import (
    check_choice,
    check_int,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
)
from visiontel.torch._safety import warn_once

ENV_GRANULARITY = "VISIONTEL_TORCH_GRANULARITY"
ENV_LAYER_DEPTH = "VISIONTEL_TORCH_LAYER_DEPTH"
ENV_INCLUDE = "VISIONTEL_TORCH_INCLUDE"
ENV_EXCLUDE = "VISIONTEL_TORCH_EXCLUDE"
ENV_MAX_LAYER_SPANS = "VISIONTEL_TORCH_MAX_LAYER_SPANS"
ENV_CAPTURE_SHAPES = "VISIONTEL_TORCH_CAPTURE_SHAPES"
ENV_MODEL_NAME = "VISIONTEL_TORCH_MODEL_NAME"
ENV_MODEL_VERSION = "VISIONTEL_TORCH_MODEL_VERSION"
ENV_AUTO_DISCOVER = "VISIONTEL_TORCH_AUTO_DISCOVER"
ENV_GPU_TIMEOUT = "VISIONTEL_TORCH_GPU_TIMEOUT"

_MAX_PATTERN_COUNT = 64
_MAX_TEXT = 128
# A GPU timeout must be positive; a millisecond is the shortest that means anything.
_MIN_GPU_TIMEOUT_S = 0.001


class Granularity(str, enum.Enum):
    """How much of a forward pass becomes spans."""

    MODEL = "model"
    """One span per root forward."""
    STAGE = "stage"
    """The root forward plus one span per top-level child module (the default)."""
    LAYER = "layer"
    """Every leaf module (filtered by depth and name patterns), up to a span budget."""

    @classmethod
    def parse(cls, value: str | Granularity) -> Granularity:
        if isinstance(value, Granularity):
            return value
        return cls(check_choice("granularity", value, [g.value for g in cls]))


@dataclass(frozen=True)
class TorchConfig:
    """Resolved settings for one instrumented model (see the README's table)."""

    granularity: Granularity = Granularity.STAGE
    layer_depth: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_layer_spans: int = 256
    capture_shapes: bool = True
    model_name: str | None = None
    model_version: str | None = None
    auto_discover: bool = True
    gpu_timeout_s: float = 10.0

    def with_overrides(self, **overrides: object) -> TorchConfig:
        """A copy with explicit arguments applied; ``None`` means "keep the default"."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "granularity" in clean:
            clean["granularity"] = Granularity.parse(clean["granularity"])  # type: ignore[arg-type]
        for name in ("include", "exclude"):
            if name in clean:
                clean[name] = _patterns(clean[name], name)
        if "layer_depth" in clean:
            clean["layer_depth"] = check_int("layer_depth", clean["layer_depth"], minimum=1)
        if "max_layer_spans" in clean:
            budget = clean["max_layer_spans"]
            clean["max_layer_spans"] = check_int("max_layer_spans", budget, minimum=0)
        return replace(self, **clean)  # type: ignore[arg-type]


def _patterns(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a glob pattern or a sequence of them; got {value!r}")
    if len(value) > _MAX_PATTERN_COUNT:
        raise ValueError(f"{name} accepts at most {_MAX_PATTERN_COUNT} patterns")
    return tuple(v for v in value if v)


def _env_patterns(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    items = tuple(env_list(name, environ=env))
    if len(items) > _MAX_PATTERN_COUNT:
        warn_once(
            name, "%s has more than %d patterns; extra ones ignored", name, _MAX_PATTERN_COUNT
        )
        items = items[:_MAX_PATTERN_COUNT]
    return items


def _env_text(env: Mapping[str, str], name: str) -> str | None:
    return env_str(name, "", environ=env)[:_MAX_TEXT] or None


def config_from_env(env: Mapping[str, str] | None = None) -> TorchConfig:
    """Defaults from ``VISIONTEL_TORCH_*`` variables; never raises."""
    env = os.environ if env is None else env
    defaults = TorchConfig()
    granularity = env_choice(
        ENV_GRANULARITY, defaults.granularity.value, [g.value for g in Granularity], environ=env
    )
    # No depth limit is the default; 0 stands for it here (a value given must be >= 1).
    depth = env_int(ENV_LAYER_DEPTH, 0, minimum=1, environ=env)
    return TorchConfig(
        granularity=Granularity(granularity),
        layer_depth=depth or None,
        include=_env_patterns(env, ENV_INCLUDE),
        exclude=_env_patterns(env, ENV_EXCLUDE),
        max_layer_spans=env_int(
            ENV_MAX_LAYER_SPANS, defaults.max_layer_spans, minimum=0, environ=env
        ),
        capture_shapes=env_bool(ENV_CAPTURE_SHAPES, defaults.capture_shapes, environ=env),
        model_name=_env_text(env, ENV_MODEL_NAME),
        model_version=_env_text(env, ENV_MODEL_VERSION),
        auto_discover=env_bool(ENV_AUTO_DISCOVER, defaults.auto_discover, environ=env),
        gpu_timeout_s=env_float(
            ENV_GPU_TIMEOUT, defaults.gpu_timeout_s, minimum=_MIN_GPU_TIMEOUT_S, environ=env
        ),
    )
