"""Every recipe is accepted by the built collector, and the privacy steps really work."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
from typing import Any

import pytest
from collector_support import CONFIG_DIR, RECIPES, collector_env, dummy_env, load_yaml
from otlp_json import logs, metrics, post, span, sum_metric, traces

SECRET = "s3cret-Pa55"
CAMERA = f"rtsp://admin:{SECRET}@10.1.2.3:554/stream1"
CLEAN_CAMERA = "rtsp://10.1.2.3:554/stream1"


def _validate(
    otelcol: pathlib.Path, config: pathlib.Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    # Only the variables given: a recipe must not depend on something the caller happens to have.
    base = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTEL_")}
    return subprocess.run(
        [str(otelcol), "validate", "--config", str(config)],
        env={**base, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_passes_collector_validate(
    otelcol: pathlib.Path, recipe: str, tls_files: dict[str, pathlib.Path]
) -> None:
    path = CONFIG_DIR / recipe
    result = _validate(otelcol, path, dummy_env(path, tls_files))
    assert result.returncode == 0, f"{recipe}:\n{result.stdout}\n{result.stderr}"


def test_validate_rejects_a_broken_recipe(
    otelcol: pathlib.Path, tmp_path: pathlib.Path, tls_files: dict[str, pathlib.Path]
) -> None:
    """validate is not a rubber stamp: an unknown processor setting is refused."""
    broken = tmp_path / "broken.yaml"
    text = (CONFIG_DIR / "local.yaml").read_text()
    broken.write_text(
        text.replace("check_interval: 1s", "check_interval: 1s\n    no_such_setting: 3", 1)
    )
    result = _validate(otelcol, broken, dummy_env(broken, tls_files))
    assert result.returncode != 0
    assert "no_such_setting" in result.stdout + result.stderr


def test_privacy_processors_are_identical_in_local_and_agent() -> None:
    local = load_yaml(CONFIG_DIR / "local.yaml")["processors"]
    agent = load_yaml(CONFIG_DIR / "agent.yaml")["processors"]
    for name in ("transform/strip_credentials", "redaction/allow_list"):
        assert local[name] == agent[name], name


@pytest.mark.parametrize("recipe", ["local.yaml", "agent.yaml"])
def test_pipelines_order_privacy_steps(recipe: str) -> None:
    """memory_limiter first, credentials stripped before the allow-list, batch last."""
    pipelines = load_yaml(CONFIG_DIR / recipe)["service"]["pipelines"]
    for name, pipeline in pipelines.items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", name
        assert processors[-1] == "batch", name
        assert processors.index("transform/strip_credentials") < processors.index(
            "redaction/allow_list"
        ), name


SECRET_KEYS = {"token", "tokens", "password", "key_file", "cert_file", "ca_file", "hmac_key"}


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            out += [(f"{path}.{key}", value), *_walk(value, f"{path}.{key}")]
        return out
    if isinstance(node, list):
        return [item for i, value in enumerate(node) for item in _walk(value, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("recipe", RECIPES)
def test_secrets_come_only_from_the_environment(recipe: str) -> None:
    config = load_yaml(CONFIG_DIR / recipe)
    for path, value in _walk(config):
        key = path.rsplit(".", 1)[-1]
        if key in SECRET_KEYS or key.lower() == "authorization":
            assert isinstance(value, str), path
            assert value.startswith("${env:") and ":-" not in value, (
                f"{recipe}{path}: secrets must come from ${{env:...}} without a default"
            )


@pytest.mark.parametrize("recipe", ["agent.yaml", "gateway.yaml"])
def test_agent_gateway_hop_uses_tls_and_auth(recipe: str) -> None:
    config = load_yaml(CONFIG_DIR / recipe)
    if recipe == "agent.yaml":
        exporter = config["exporters"]["otlp_grpc/gateway"]
        assert exporter["tls"]["ca_file"].startswith("${env:")
        assert "insecure" not in exporter["tls"]
        assert exporter["auth"]["authenticator"].startswith("bearertokenauth/")
        queue = exporter["sending_queue"]
        assert queue["storage"] in config["extensions"] and queue["storage"].startswith(
            "file_storage"
        )
        assert exporter["retry_on_failure"]["max_elapsed_time"] == 0
    else:
        grpc = config["receivers"]["otlp"]["protocols"]["grpc"]
        assert grpc["tls"]["cert_file"].startswith("${env:")
        assert grpc["auth"]["authenticator"].startswith("bearertokenauth/")
        assert "http" not in config["receivers"]["otlp"]["protocols"]


def _file_override(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, pathlib.Path]]:
    """A second --config that swaps local.yaml's exporters for file exporters.

    The receivers and processors are local.yaml's own, so what is tested is the recipe.
    """
    outputs = {signal: tmp_path / f"{signal}.jsonl" for signal in ("traces", "metrics", "logs")}
    exporters = {
        f"file/{signal}": {"path": str(path), "flush_interval": "100ms"}
        for signal, path in outputs.items()
    }
    pipelines = {signal: {"exporters": [f"file/{signal}"]} for signal in outputs}
    override = tmp_path / "file-exporters.yaml"
    override.write_text(json.dumps({"exporters": exporters, "service": {"pipelines": pipelines}}))
    return override, outputs


def _read_until(path: pathlib.Path, needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if needle in text:
                return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never reached {path}")


def _attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in items}


def test_local_recipe_strips_camera_credentials_and_unlisted_attributes(
    start_collector: Any, tmp_path: pathlib.Path
) -> None:
    override, outputs = _file_override(tmp_path)
    env = collector_env()
    start_collector([CONFIG_DIR / "local.yaml", override], env)
    endpoint = env["VISIONTEL_OTLP_HTTP_ENDPOINT"]

    resource = {"service.name": "detector", "camera.source": CAMERA, "visiontel.camera.url": CAMERA}
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    post(
        endpoint,
        "traces",
        traces(
            resource,
            [
                span(
                    trace_id,
                    span_id,
                    "detect",
                    {
                        "visiontel.model.name": "yolo",
                        "visiontel.camera.url": CAMERA,
                        "url.full": f"http://svc:{SECRET}@host/x",
                        "internal.debug.tensor": "[[0.1, 0.2]]",
                    },
                    events=[
                        {
                            "name": "exception",
                            "attributes": {"exception.message": f"cannot open {CAMERA}"},
                        }
                    ],
                )
            ],
        ),
    )
    post(
        endpoint,
        "logs",
        logs(
            resource,
            f"reconnecting to {CAMERA} after timeout",
            {"visiontel.camera.url": CAMERA, "user.password": SECRET},
            trace_id=trace_id,
            span_id=span_id,
        ),
    )
    post(
        endpoint,
        "metrics",
        metrics(
            resource,
            [
                sum_metric(
                    "visiontel.inference.images",
                    "{image}",
                    4,
                    {"visiontel.model.name": "yolo", "visiontel.camera.url": CAMERA},
                )
            ],
        ),
    )

    trace_text = _read_until(outputs["traces"], "detect")
    log_text = _read_until(outputs["logs"], "reconnecting")
    metric_text = _read_until(outputs["metrics"], "visiontel.inference.images")
    for text in (trace_text, log_text, metric_text):
        assert SECRET not in text
        assert "admin" not in text
        assert CLEAN_CAMERA in text  # the stream stays identifiable

    batch = json.loads(trace_text.splitlines()[0])["resourceSpans"][0]
    resource_attrs = _attributes(batch["resource"]["attributes"])
    assert resource_attrs["visiontel.camera.url"] == CLEAN_CAMERA
    assert "camera.source" not in resource_attrs  # not on the allow-list
    recorded = batch["scopeSpans"][0]["spans"][0]
    span_attrs = _attributes(recorded["attributes"])
    assert span_attrs["visiontel.camera.url"] == CLEAN_CAMERA
    assert span_attrs["url.full"] == "http://host/x"
    assert span_attrs["visiontel.model.name"] == "yolo"
    assert "internal.debug.tensor" not in span_attrs
    assert not any(key.startswith("redaction.") for key in span_attrs)  # summary: silent
    event_attrs = _attributes(recorded["events"][0]["attributes"])
    assert event_attrs["exception.message"] == f"cannot open {CLEAN_CAMERA}"

    record = json.loads(log_text.splitlines()[0])["resourceLogs"][0]["scopeLogs"][0]["logRecords"][
        0
    ]
    assert record["body"]["stringValue"] == f"reconnecting to {CLEAN_CAMERA} after timeout"
    assert "user.password" not in _attributes(record["attributes"])
    assert record["traceId"].lower() == trace_id  # trace correlation survives
