"""Property tests: no environment value can make configuration raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from visiontel.torch._config import TorchConfig, config_from_env

VARIABLES = [
    "VISIONTEL_TORCH_GRANULARITY",
    "VISIONTEL_TORCH_LAYER_DEPTH",
    "VISIONTEL_TORCH_INCLUDE",
    "VISIONTEL_TORCH_EXCLUDE",
    "VISIONTEL_TORCH_MAX_LAYER_SPANS",
    "VISIONTEL_TORCH_CAPTURE_SHAPES",
    "VISIONTEL_TORCH_MODEL_NAME",
    "VISIONTEL_TORCH_MODEL_VERSION",
    "VISIONTEL_TORCH_AUTO_DISCOVER",
    "VISIONTEL_TORCH_GPU_TIMEOUT",
]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(VARIABLES), st.text(max_size=300)))
def test_any_environment_yields_a_valid_config(env: dict[str, str]) -> None:
    config = config_from_env(env)
    assert isinstance(config, TorchConfig)
    assert config.layer_depth is None or config.layer_depth >= 1
    assert config.max_layer_spans >= 0
    assert 0 < config.gpu_timeout_s < float("inf")
    assert len(config.include) <= 64 and len(config.exclude) <= 64
    for text in (config.model_name, config.model_version):
        assert text is None or 0 < len(text) <= 128
