"""Write Helm values for the official opentelemetry-collector chart from the recipes.

    python collector-config/helm/generate.py          # rewrite values-*.yaml
    python collector-config/helm/generate.py --check  # exit 1 if a file is stale

Each values file carries its recipe unchanged as `config`, plus what the chart needs
to run it: our image and binary name, the environment the recipe reads (secrets from
Kubernetes Secrets, TLS files from a mounted Secret), and `null`s that switch off the
parts of the chart's default config our distribution does not have (jaeger, zipkin and
prometheus receivers, the debug exporter) or that would bypass TLS and auth (the
chart's plain OTLP/HTTP receiver). Helm merges maps and replaces lists, so a recipe's
pipelines replace the chart's. Needs PyYAML.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from generated import write_or_check  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
RECIPES = HERE.parent
TLS_DIR = "/etc/otelcol-visiontel/tls"
IMAGE = {"repository": "registry.example.com/visiontel/otelcol-visiontel", "tag": "0.161.0"}

# The parts of the chart's default `config` that must not survive the merge.
CHART_RECEIVERS = ("jaeger", "zipkin", "prometheus")
CHART_EXPORTERS = ("debug",)
CHART_PIPELINES = ("traces", "metrics", "logs")


def _secret(name: str, key: str) -> dict[str, Any]:
    return {"valueFrom": {"secretKeyRef": {"name": name, "key": key}}}


RELEASES: dict[str, dict[str, Any]] = {
    "agent": {
        "mode": "daemonset",
        "env": {
            "VISIONTEL_GATEWAY_ENDPOINT": "visiontel-gateway:4317",
            "VISIONTEL_GATEWAY_TOKEN": _secret("visiontel-gateway-token", "token"),
            "VISIONTEL_GATEWAY_CA_FILE": f"{TLS_DIR}/ca.crt",
            "VISIONTEL_NODE_NAME": {"valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            "VISIONTEL_OTLP_GRPC_ENDPOINT": "0.0.0.0:4317",
            "VISIONTEL_OTLP_HTTP_ENDPOINT": "0.0.0.0:4318",
            "VISIONTEL_HEALTH_ENDPOINT": "0.0.0.0:13133",
            "VISIONTEL_AGENT_QUEUE_DIR": "/var/lib/otelcol-visiontel/queue",
        },
        "tls_secret": "visiontel-gateway-ca",
        # The persistent queue must outlive the pod: a hostPath per node.
        "volumes": [{"name": "queue", "hostPath": {
            "path": "/var/lib/otelcol-visiontel/queue", "type": "DirectoryOrCreate"}}],
        "mounts": [{"name": "queue", "mountPath": "/var/lib/otelcol-visiontel/queue"}],
        "ports": {"otlp": True, "otlp-http": True},
    },
    "gateway": {
        "mode": "deployment",
        "replicas": 2,
        "env": {
            "VISIONTEL_GATEWAY_TOKEN": _secret("visiontel-gateway-token", "token"),
            "VISIONTEL_GATEWAY_CERT_FILE": f"{TLS_DIR}/tls.crt",
            "VISIONTEL_GATEWAY_KEY_FILE": f"{TLS_DIR}/tls.key",
            # The tail-sampling release's headless Service: one A record per replica.
            "VISIONTEL_TAILSAMPLING_DNS": "visiontel-tailsampling",
            "VISIONTEL_TAILSAMPLING_CA_FILE": f"{TLS_DIR}/ca.crt",
            "VISIONTEL_PROMETHEUS_REMOTE_WRITE_URL": "https://prometheus:9090/api/v1/write",
            "VISIONTEL_PROMETHEUS_TOKEN": _secret("visiontel-prometheus-token", "token"),
            "VISIONTEL_LOKI_OTLP_ENDPOINT": "http://loki-gateway/otlp",
        },
        "tls_secret": "visiontel-gateway-tls",
        "ports": {"otlp": True, "otlp-http": False},
    },
    "tailsampling": {
        "mode": "deployment",
        "service": {"clusterIP": "None"},
        "replicas": 2,
        "env": {
            "VISIONTEL_TAILSAMPLING_CERT_FILE": f"{TLS_DIR}/tls.crt",
            "VISIONTEL_TAILSAMPLING_KEY_FILE": f"{TLS_DIR}/tls.key",
            "VISIONTEL_JAEGER_OTLP_ENDPOINT": "jaeger-collector:4317",
            "VISIONTEL_JAEGER_CA_FILE": f"{TLS_DIR}/ca.crt",
        },
        "tls_secret": "visiontel-tailsampling-tls",
        "ports": {"otlp": True, "otlp-http": False},
    },
}


def _env_list(env: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, value in env.items():
        entry: dict[str, Any] = {"name": name}
        entry.update(value if isinstance(value, dict) else {"value": value})
        out.append(entry)
    return out


def _config(recipe: dict[str, Any]) -> dict[str, Any]:
    config = dict(recipe)
    receivers = dict(config["receivers"])
    for name in CHART_RECEIVERS:
        receivers.setdefault(name, None)
    otlp = dict(receivers["otlp"])
    protocols = dict(otlp["protocols"])
    for protocol in ("grpc", "http"):
        protocols.setdefault(protocol, None)
    receivers["otlp"] = {**otlp, "protocols": protocols}
    config["receivers"] = receivers
    config["exporters"] = {**{n: None for n in CHART_EXPORTERS}, **config["exporters"]}
    service = dict(config["service"])
    service["pipelines"] = {**{p: None for p in CHART_PIPELINES}, **service["pipelines"]}
    config["service"] = service
    return config


def values(name: str, release: dict[str, Any]) -> dict[str, Any]:
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    volumes = [{"name": "tls", "secret": {"secretName": release["tls_secret"]}}]
    mounts = [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}]
    out: dict[str, Any] = {
        "mode": release["mode"],
        "image": IMAGE,
        "command": {"name": "/otelcol-visiontel"},
        "fullnameOverride": f"visiontel-{name}",
        "extraEnvs": _env_list(release["env"]),
        "extraVolumes": volumes + release.get("volumes", []),
        "extraVolumeMounts": mounts + release.get("mounts", []),
        "ports": {
            "otlp": {"enabled": release["ports"]["otlp"]},
            "otlp-http": {"enabled": release["ports"]["otlp-http"]},
            "jaeger-compact": {"enabled": False},
            "jaeger-thrift": {"enabled": False},
            "jaeger-grpc": {"enabled": False},
            "zipkin": {"enabled": False},
        },
        "config": _config(recipe),
    }
    if "service" in release:
        out["service"] = release["service"]
    if "replicas" in release:
        out["replicaCount"] = release["replicas"]
    return out


def render() -> dict[str, str]:
    files = {}
    for name, release in RELEASES.items():
        header = (
            f"# Generated by collector-config/helm/generate.py from {name}.yaml: do not edit.\n"
            f"# helm install visiontel-{name} open-telemetry/opentelemetry-collector"
            f" -f values-{name}.yaml\n"
        )
        body = yaml.safe_dump(values(name, release), sort_keys=False, width=100)
        files[f"values-{name}.yaml"] = header + body
    return files


def main(argv: list[str]) -> int:
    return write_or_check({HERE / name: text for name, text in render().items()}, argv, __file__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
