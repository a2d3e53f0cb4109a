"""The canary gates of collector-config/canary/: valid against the real CRDs, in step with
each other, selecting only exported metrics; and the stand-ins for Argo's and Flagger's
evaluation (canary_gates.py) behave as the controllers do.

The CRDs come from the Go module proxy at pinned versions and checksums
(collector-config/canary/crds.py, cached after the first run). The queries themselves run
against a real Prometheus in test_canary_gates_e2e.py.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import pathlib
import re
from typing import Any

import pytest
from canary_gates import (
    TemplateError,
    argo_metrics,
    argo_phase,
    evaluate,
    flagger_passes,
    flagger_render,
    flagger_value,
)
from collector_support import CONFIG_DIR
from metric_catalog import prometheus_names
from promql_names import selected_names

CANARY_DIR = CONFIG_DIR / "canary"
ANALYSIS_TEMPLATE = CANARY_DIR / "argo" / "analysis-template.yaml"
ROLLOUT = CANARY_DIR / "argo" / "rollout-example.yaml"
METRIC_TEMPLATES = CANARY_DIR / "flagger" / "metric-templates.yaml"
CANARY = CANARY_DIR / "flagger" / "canary.yaml"
GATES = ("canary-traffic", "p99-latency-ratio", "error-ratio", "detections-drift", "gpu-memory")
# CRD file (a key of crds.CRDS) of each kind.
CRD_OF = {
    "AnalysisTemplate": "analysis-template",
    "Rollout": "rollout",
    "MetricTemplate": "flagger",
    "Canary": "flagger",
}


def _yaml_docs(path: pathlib.Path) -> list[Any]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _crds_module() -> Any:
    spec = importlib.util.spec_from_file_location("visiontel_canary_crds", CANARY_DIR / "crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _strict(schema: Any) -> Any:
    """The schema with unknown fields rejected, as `kubectl apply` (strict field validation,
    the default since Kubernetes 1.27) rejects them; the API server would prune them."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def validators() -> dict[str, Any]:
    import jsonschema

    crds = _crds_module()
    found = {}
    for kind, name in CRD_OF.items():
        for crd in _yaml_docs(crds.path(name)):
            if (
                crd.get("kind") == "CustomResourceDefinition"
                and crd["spec"]["names"]["kind"] == kind
            ):
                group = crd["spec"]["group"]
                for version in crd["spec"]["versions"]:
                    schema = _strict(version["schema"]["openAPIV3Schema"])
                    found[f"{group}/{version['name']}/{kind}"] = jsonschema.Draft4Validator(schema)
    return found


def _errors(validators: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    validator = validators[f"{manifest['apiVersion']}/{manifest['kind']}"]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


def _manifests() -> list[dict[str, Any]]:
    return [doc for path in (ANALYSIS_TEMPLATE, ROLLOUT, METRIC_TEMPLATES, CANARY)
            for doc in _yaml_docs(path)]  # fmt: skip


def test_manifests_are_valid_against_the_crds(validators: dict[str, Any]) -> None:
    manifests = _manifests()
    assert sorted(m["kind"] for m in manifests) == sorted(
        ["AnalysisTemplate", "Rollout", "Canary"] + ["MetricTemplate"] * len(GATES)
    )
    for manifest in manifests:
        assert _errors(validators, manifest) == [], manifest["metadata"]["name"]


def test_schema_check_catches_bad_manifests(validators: dict[str, Any]) -> None:
    (template,) = _yaml_docs(ANALYSIS_TEMPLATE)
    misspelled = copy.deepcopy(template)
    metric = misspelled["spec"]["metrics"][0]
    metric["successCondtion"] = metric.pop("successCondition")
    assert any("successCondtion" in e for e in _errors(validators, misspelled))
    wrong_type = copy.deepcopy(template)
    wrong_type["spec"]["metrics"][1]["interval"] = 60  # a duration string in the CRD
    assert any("metrics/1/interval" in e for e in _errors(validators, wrong_type))

    (canary,) = _yaml_docs(CANARY)
    bad_range = copy.deepcopy(canary)
    bad_range["spec"]["analysis"]["metrics"][1]["thresholdRange"]["max"] = "1.2"
    assert any("thresholdRange/max" in e for e in _errors(validators, bad_range))
    bad_key = copy.deepcopy(canary)
    bad_key["spec"]["analysis"]["metrics"][0]["templateVariable"] = {"model": "x"}
    assert any("templateVariable" in e for e in _errors(validators, bad_key))


def _argo_queries(args: dict[str, str]) -> dict[str, dict[str, Any]]:
    (template,) = _yaml_docs(ANALYSIS_TEMPLATE)
    return {m["name"]: m for m in argo_metrics(template, args)}


def _flagger_queries(model: dict[str, Any]) -> dict[str, str]:
    return {
        doc["metadata"]["name"].removeprefix("visiontel-"): flagger_render(
            doc["spec"]["query"], model
        )
        for doc in _yaml_docs(METRIC_TEMPLATES)
    }


def test_argo_and_flagger_gates_are_the_same_queries() -> None:
    argo = _argo_queries(
        {"job": "vision/detector", "model-name": "yolov8n", "canary-version": "2.0", "window": "5m"}
    )
    flagger = _flagger_queries({
        "namespace": "vision", "target": "detector", "interval": "5m",
        "variables": {"model": "yolov8n", "canary_version": "2.0"},
    })  # fmt: skip
    assert set(argo) == set(flagger) == set(GATES)
    for gate in GATES:
        query = argo[gate]["provider"]["prometheus"]["query"]
        assert re.sub(r"\s+", " ", query).strip() == flagger[gate].strip(), gate
        assert selected_names(query) <= prometheus_names(), gate


def test_flagger_thresholds_are_the_argo_defaults() -> None:
    (template,) = _yaml_docs(ANALYSIS_TEMPLATE)
    defaults = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    (canary,) = _yaml_docs(CANARY)
    ranges = {m["name"]: m["thresholdRange"] for m in canary["spec"]["analysis"]["metrics"]}
    assert ranges == {
        "canary-traffic": {"min": float(defaults["min-canary-images-per-second"])},
        "p99-latency-ratio": {"max": float(defaults["max-p99-ratio"])},
        "error-ratio": {"max": float(defaults["max-error-ratio"])},
        "detections-drift": {"max": float(defaults["max-detections-drift"])},
        "gpu-memory": {"max": float(defaults["max-gpu-memory-ratio"])},
    }
    names = {m["templateRef"]["name"] for m in canary["spec"]["analysis"]["metrics"]}
    assert names == {d["metadata"]["name"] for d in _yaml_docs(METRIC_TEMPLATES)}


def test_rollout_passes_every_required_arg() -> None:
    (template,) = _yaml_docs(ANALYSIS_TEMPLATE)
    required = {a["name"] for a in template["spec"]["args"] if "value" not in a}
    (rollout,) = _yaml_docs(ROLLOUT)
    analysis = rollout["spec"]["strategy"]["canary"]["analysis"]
    assert {a["name"] for a in analysis["args"]} == required
    assert analysis["templates"] == [{"templateName": template["metadata"]["name"]}]


def test_argo_args_resolution() -> None:
    (template,) = _yaml_docs(ANALYSIS_TEMPLATE)
    with pytest.raises(TemplateError, match=r"args\.canary-version was not resolved"):
        argo_metrics(template, {"job": "a/b", "model-name": "m"})
    metrics = argo_metrics(
        template, {"job": 'a"b', "model-name": "m", "canary-version": "2", "max-p99-ratio": "1.5"}
    )
    latency = next(m for m in metrics if m["name"] == "p99-latency-ratio")
    assert latency["successCondition"] == "len(result) == 1 && result[0] <= 1.5"
    assert 'job="a"b"' in latency["provider"]["prometheus"]["query"]  # unescaped after JSON
    assert latency["initialDelay"] == "3m"


def test_expr_subset_and_argo_phases() -> None:
    metric = {
        "successCondition": "len(result) == 1 && result[0] <= 1.2",
        "failureCondition": "len(result) == 1 && result[0] > 1.2",
    }
    assert argo_phase(metric, [1.0]) == "Successful"
    assert argo_phase(metric, [1.3]) == "Failed"
    assert argo_phase(metric, []) == "Inconclusive"  # short-circuit: result[0] never read
    assert argo_phase(metric, [math.nan]) == "Inconclusive"
    guard = {"successCondition": "len(result) == 1 && result[0] >= 0.1"}
    assert argo_phase(guard, []) == "Failed"
    assert argo_phase(guard, [0.5]) == "Successful"
    assert argo_phase({"successCondition": "result[0] <= 1"}, []) == "Error"
    assert argo_phase({"failureCondition": "result[0] > 1"}, [0.5]) == "Successful"
    assert argo_phase({}, []) == "Successful"
    assert evaluate("not (result[0] < 2 and false) || isNaN(result[1])", [1.0, 2.0])
    assert evaluate("-result[0] * 2 + 1 == -1", [1.0])
    assert argo_phase({"successCondition": "result[0] +"}, [1.0]) == "Error"
    assert argo_phase({"successCondition": "result[0]"}, [1.0]) == "Error"  # not a bool


def test_flagger_rendering_and_thresholds() -> None:
    model = {"namespace": "ns", "target": "t", "interval": "1m", "variables": {"model": "m"}}
    assert flagger_render('x{job="{{ namespace }}/{{target}}"}[{{ interval }}]', model) == (
        'x{job="ns/t"}[1m]'
    )
    with pytest.raises(TemplateError, match="no entry for key"):
        flagger_render("{{ variables.canary_version }}", model)
    with pytest.raises(TemplateError, match="not defined"):
        flagger_render("{{ canary }}", model)
    assert flagger_value([{"value": [0, "0.5"]}, {"value": [0, "2"]}]) == 2.0
    assert flagger_value([]) is None and flagger_value([{"value": [0, "NaN"]}]) is None
    assert flagger_passes(1.2, {"max": 1.2}) and not flagger_passes(1.21, {"max": 1.2})
    assert not flagger_passes(None, {"max": 1.2}) and not flagger_passes(0.05, {"min": 0.1})
