"""The manifest, the compose file and the Helm values agree with the tested recipes."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from typing import Any

from collector_support import CONFIG_DIR, RECIPES, load_yaml, required_env

MANIFEST = CONFIG_DIR / "builder" / "manifest.yaml"
KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")
# In the distribution for troubleshooting and for the tests (file exporter read-back),
# though no recipe routes data to them.
TROUBLESHOOTING = {"exporters": {"debug", "file"}}


def _env_refs(text: str) -> set[str]:
    return set(re.findall(r"\$\{env:([A-Z0-9_]+)", text))


def _used_components() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for recipe in RECIPES:
        config = load_yaml(CONFIG_DIR / recipe)
        for kind in KINDS:
            used[kind] |= {name.split("/")[0] for name in config.get(kind, {})}
    return used


def _manifest_types(otelcol: pathlib.Path) -> dict[str, set[str]]:
    """Component types as the built binary reports them (`otelcol components`)."""
    result = subprocess.run(
        [str(otelcol), "components"], check=True, capture_output=True, text=True
    )
    listing = load_yaml_text(result.stdout)
    return {kind: {c["name"] for c in listing.get(kind) or []} for kind in KINDS}


def load_yaml_text(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def test_distribution_holds_exactly_the_recipes_components(otelcol: pathlib.Path) -> None:
    built = _manifest_types(otelcol)
    used = _used_components()
    for kind in KINDS:
        extra = built[kind] - used[kind] - TROUBLESHOOTING.get(kind, set())
        missing = used[kind] - built[kind]
        assert not missing, f"{kind} used by a recipe but not built: {missing}"
        assert not extra, f"{kind} built but used by no recipe: {extra}"


def test_manifest_pins_one_release_everywhere() -> None:
    manifest = load_yaml(MANIFEST)
    versions = set()
    for kind in (*KINDS, "providers"):
        for module in manifest.get(kind, []):
            path, version = module["gomod"].split()
            major_minor = version.split(".")[:2]
            if path.startswith("go.opentelemetry.io/collector/confmap"):
                assert major_minor == ["v1", "67"], module  # stable modules of v0.161
            else:
                versions.add(version)
    assert versions == {"v0.161.0"}
    sys.path.insert(0, str(CONFIG_DIR))
    import toolchain

    assert toolchain.BUILDER_VERSION == "v0.161.0"
    dockerfile = (CONFIG_DIR / "Dockerfile").read_text()
    assert f"cmd/builder@{toolchain.BUILDER_VERSION}" in dockerfile
    assert "COPY builder/manifest.yaml" in dockerfile


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_compose_runs_local_yaml_with_consistent_ports() -> None:
    compose = load_yaml(CONFIG_DIR / "compose.yaml")
    services = compose["services"]
    otelcol = services["otelcol"]
    local_text = (CONFIG_DIR / "local.yaml").read_text()
    assert "./local.yaml:/etc/otelcol-visiontel/local.yaml:ro" in otelcol["volumes"]
    assert otelcol["command"] == ["--config=/etc/otelcol-visiontel/local.yaml"]
    env = otelcol["environment"]
    assert set(env) <= _env_refs(local_text), set(env) - _env_refs(local_text)
    published = {int(p.split(":")[1]) for p in otelcol["ports"]}
    for name in (
        "VISIONTEL_OTLP_GRPC_ENDPOINT",
        "VISIONTEL_OTLP_HTTP_ENDPOINT",
        "VISIONTEL_HEALTH_ENDPOINT",
    ):
        assert env[name].startswith("0.0.0.0:"), name  # reachable from other containers
        assert _port(env[name]) in published, name
    # The backends the collector exports to are services of this file.
    assert env["VISIONTEL_JAEGER_OTLP_ENDPOINT"].split(":")[0] in services
    assert env["VISIONTEL_LOKI_OTLP_ENDPOINT"].split("/")[2].split(":")[0] in services
    # Prometheus scrapes the exporter port the collector is told to use.
    prometheus = load_yaml(CONFIG_DIR / "prometheus" / "prometheus.compose.yaml")
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for s in job["static_configs"]
        for t in s["targets"]
    }
    assert f"otelcol:{_port(env['VISIONTEL_PROMETHEUS_EXPORTER_ENDPOINT'])}" in targets
    assert (
        "--config.file=/etc/prometheus/prometheus.compose.yaml" in services["prometheus"]["command"]
    )


def test_compose_prometheus_config_differs_only_in_targets() -> None:
    local = load_yaml(CONFIG_DIR / "prometheus" / "prometheus.yaml")
    compose = load_yaml(CONFIG_DIR / "prometheus" / "prometheus.compose.yaml")
    for config in (local, compose):
        for job in config["scrape_configs"]:
            for static in job["static_configs"]:
                static["targets"] = [t.split(":")[1] for t in static["targets"]]
    assert local == compose


def test_compose_grafana_mounts_match_provisioning() -> None:
    grafana = load_yaml(CONFIG_DIR / "compose.yaml")["services"]["grafana"]
    provider = load_yaml(CONFIG_DIR / "grafana" / "provisioning" / "dashboards" / "visiontel.yaml")
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{dashboards_path}:ro" in grafana["volumes"]
    password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${"), "no secret in the compose file"


def test_helm_values_are_generated_from_the_recipes() -> None:
    result = subprocess.run(
        [sys.executable, str(CONFIG_DIR / "helm" / "generate.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    return node


def test_helm_values_carry_each_recipe_and_its_environment() -> None:
    for name in ("agent", "gateway", "tailsampling"):
        recipe_path = CONFIG_DIR / f"{name}.yaml"
        values = load_yaml(CONFIG_DIR / "helm" / f"values-{name}.yaml")
        assert _without_nulls(values["config"]) == load_yaml(recipe_path), name
        env = {e["name"]: e for e in values["extraEnvs"]}
        missing = required_env(recipe_path.read_text()) - env.keys()
        assert not missing, f"{name}: {missing}"
        mounts = [m["mountPath"] for m in values["extraVolumeMounts"]]
        for var, entry in env.items():
            if "TOKEN" in var:
                assert "secretKeyRef" in entry["valueFrom"], var  # secrets from Secrets
            if var.endswith("_FILE"):
                assert any(entry["value"].startswith(m + "/") for m in mounts), var
        # The chart's own receivers and plain-HTTP OTLP must be switched off.
        receivers = values["config"]["receivers"]
        assert receivers["jaeger"] is None and receivers["zipkin"] is None
        if name != "agent":
            assert receivers["otlp"]["protocols"]["http"] is None
