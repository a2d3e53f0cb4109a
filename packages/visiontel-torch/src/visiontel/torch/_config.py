"""Configuration of visiontel-torch: arguments win, ``VISIONTEL_TORCH_*`` variables are defaults.

Environment variables are read when the instrumentor starts. A malformed value never stops
the application: it is reported once (naming the variable, the value and what is accepted)
and the built-in default is used. Explicit arguments are validated strictly (``ValueError``).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

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
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(g.value for g in cls)
            raise ValueError(f"granularity must be one of {choices}; got {value!r}") from None


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
        depth = clean.get("layer_depth")
        if depth is not None and (not isinstance(depth, int) or depth < 1):
            raise ValueError(f"layer_depth must be a positive integer or None; got {depth!r}")
        budget = clean.get("max_layer_spans")
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"max_layer_spans must be an integer >= 0; got {budget!r}")
        return replace(self, **clean)  # type: ignore[arg-type]


def _patterns(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a glob pattern or a sequence of them; got {value!r}")
    if len(value) > _MAX_PATTERN_COUNT:
        raise ValueError(f"{name} accepts at most {_MAX_PATTERN_COUNT} patterns")
    return tuple(v for v in value if v)


def _env_int(env: Mapping[str, str], name: str, default: int | None, minimum: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        warn_once(name, "%s=%r is not an integer >= %d; using %r", name, raw[:64], minimum, default)
        return default
    return value


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        warn_once(name, "%s=%r is not a positive number; using %r", name, raw[:64], default)
        return default
    return value


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    warn_once(name, "%s=%r is not true/false; using %r", name, raw[:64], default)
    return default


def _env_patterns(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    items = tuple(p.strip() for p in raw.split(",") if p.strip())
    if len(items) > _MAX_PATTERN_COUNT:
        warn_once(
            name, "%s has more than %d patterns; extra ones ignored", name, _MAX_PATTERN_COUNT
        )
        items = items[:_MAX_PATTERN_COUNT]
    return items


def _env_text(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    return raw[:128] or None


def config_from_env(env: Mapping[str, str] | None = None) -> TorchConfig:
    """Defaults from ``VISIONTEL_TORCH_*`` variables; never raises."""
    env = os.environ if env is None else env
    defaults = TorchConfig()
    raw_granularity = env.get(ENV_GRANULARITY, "").strip()
    granularity = defaults.granularity
    if raw_granularity:
        try:
            granularity = Granularity.parse(raw_granularity)
        except ValueError as exc:
            warn_once(ENV_GRANULARITY, "%s: %s; using %r", ENV_GRANULARITY, exc, granularity.value)
    return TorchConfig(
        granularity=granularity,
        layer_depth=_env_int(env, ENV_LAYER_DEPTH, None, 1),
        include=_env_patterns(env, ENV_INCLUDE),
        exclude=_env_patterns(env, ENV_EXCLUDE),
        max_layer_spans=_env_int(env, ENV_MAX_LAYER_SPANS, defaults.max_layer_spans, 0) or 0,
        capture_shapes=_env_bool(env, ENV_CAPTURE_SHAPES, defaults.capture_shapes),
        model_name=_env_text(env, ENV_MODEL_NAME),
        model_version=_env_text(env, ENV_MODEL_VERSION),
        auto_discover=_env_bool(env, ENV_AUTO_DISCOVER, defaults.auto_discover),
        gpu_timeout_s=_env_float(env, ENV_GPU_TIMEOUT, defaults.gpu_timeout_s),
    )
