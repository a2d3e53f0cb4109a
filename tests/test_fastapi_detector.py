"""examples/fastapi_detector: run as its README says, under ``opentelemetry-instrument``,
configured by the environment only (ratio 0, the force-trace sampler and propagator).

One interpreter serves five requests through FastAPI's TestClient (uvicorn is not a test
dependency) and prints the responses and finished spans; the tests read that.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # one interpreter importing torch, torchvision and FastAPI

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "fastapi_detector"
INSTRUMENT = pathlib.Path(sys.executable).with_name("opentelemetry-instrument")
UPSTREAM = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACERESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

# The entry points visiontel-propagation declares, in a throw-away distribution on
# PYTHONPATH, so this runs before (and after) they are in the installed metadata.
ENTRY_POINTS = """\
[opentelemetry_traces_sampler]
visiontel_force_trace = visiontel.propagation:force_trace_sampler

[opentelemetry_propagator]
visiontel_force_trace = visiontel.propagation:ForceTracePropagator
"""

DRIVER = textwrap.dedent(
    """
    import json
    import sys

    import torch
    import torchvision
    from fastapi.testclient import TestClient
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import visiontel.torch as vt

    sys.path.insert(0, sys.argv[1])
    import detector_app

    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    torch.manual_seed(1)
    jpeg = torchvision.io.encode_jpeg(
        torch.randint(0, 255, (3, 240, 320), dtype=torch.uint8)
    ).numpy().tobytes()
    requests = {
        "plain": (jpeg, {}),
        "forced": (jpeg, {"visiontel-force-trace": "1"}),
        "forced_bad_image": (b"not an image", {"visiontel-force-trace": "1"}),
        "plain_bad_image": (b"not an image", {}),
        "sampled_upstream": (jpeg, {"traceparent": sys.argv[2]}),
    }
    responses = {}
    with TestClient(detector_app.app) as client:
        for name, (body, headers) in requests.items():
            r = client.post("/detect", content=body, headers=headers)
            responses[name] = {
                "status": r.status_code,
                "traceresponse": r.headers.get("traceresponse"),
                "body": r.json(),
            }
    vt.flush()
    spans = [
        {
            "name": s.name,
            "kind": s.kind.name,
            "trace_id": f"{s.context.trace_id:032x}",
            "span_id": f"{s.context.span_id:016x}",
            "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
            "attributes": {
                k: v for k, v in s.attributes.items() if isinstance(v, (str, int, bool))
            },
        }
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps({"responses": responses, "spans": spans}))
    """
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    where = tmp_path_factory.mktemp("entry_points")
    info = where / "visiontel_example_entry_points-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: visiontel-example-entry-points\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VISIONTEL_"))}
    env.update(
        # the README's settings
        OTEL_PROPAGATORS="tracecontext,baggage,visiontel_force_trace",
        OTEL_TRACES_SAMPLER="visiontel_force_trace",
        OTEL_TRACES_SAMPLER_ARG="0",
        VISIONTEL_TORCH_AUTO_DISCOVER="false",
        # the test's: nothing exported over the network, only this example's instrumentors
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="gpu,ultralytics,logging",
        PYTHONPATH=os.pathsep.join(filter(None, [str(where), os.environ.get("PYTHONPATH")])),
    )
    done = subprocess.run(
        [str(INSTRUMENT), sys.executable, "-c", DRIVER, str(EXAMPLE), UPSTREAM],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _trace(run: dict[str, Any], trace_id: str) -> list[dict[str, Any]]:
    return [s for s in run["spans"] if s["trace_id"] == trace_id]


def _traceresponse(response: dict[str, Any]) -> tuple[str, str, int]:
    match = TRACERESPONSE.fullmatch(response["traceresponse"] or "")
    assert match, response
    return match.group(1), match.group(2), int(match.group(3), 16)


def test_a_plain_request_is_answered_and_not_sampled(run):
    response = run["responses"]["plain"]
    assert response["status"] == 200
    assert response["body"]["model"] == "ssdlite"
    trace_id, _, flags = _traceresponse(response)
    assert flags & 1 == 0
    assert _trace(run, trace_id) == []  # ratio 0: nothing recorded, but the id is there


def test_a_forced_request_is_one_trace_from_server_span_to_model_stages(run):
    response = run["responses"]["forced"]
    assert response["status"] == 200
    trace_id, span_id, flags = _traceresponse(response)
    assert flags & 1 == 1
    spans = _trace(run, trace_id)
    (server,) = [s for s in spans if s["kind"] == "SERVER"]
    assert server["span_id"] == span_id  # traceresponse names the server span
    assert server["parent_id"] is None
    assert server["attributes"]["visiontel.force_trace"] is True
    assert server["name"] == "POST /detect"
    (forward,) = [s for s in spans if s["name"] == "inference ssdlite"]
    assert forward["parent_id"] == server["span_id"]
    assert forward["attributes"]["visiontel.model.name"] == "ssdlite"
    stages = {s["name"] for s in spans if s["parent_id"] == forward["span_id"]}
    assert {"transform", "backbone", "head"} <= stages, stages
    # only the entry span says it was forced; the rest follow it
    assert [s["name"] for s in spans if "visiontel.force_trace" in s["attributes"]] == [
        server["name"]
    ]


def test_a_failed_request_carries_its_trace_id_too(run):
    forced = run["responses"]["forced_bad_image"]
    assert forced["status"] == 400
    assert "JPEG or PNG" in forced["body"]["detail"]
    trace_id, span_id, flags = _traceresponse(forced)
    assert flags & 1 == 1
    (server,) = [s for s in _trace(run, trace_id) if s["kind"] == "SERVER"]
    assert server["span_id"] == span_id
    # the attribute's name depends on OTEL_SEMCONV_STABILITY_OPT_IN
    status = server["attributes"].get("http.response.status_code")
    assert (status or server["attributes"].get("http.status_code")) == 400
    plain = run["responses"]["plain_bad_image"]
    assert plain["status"] == 400
    assert _traceresponse(plain)[2] & 1 == 0


def test_a_sampled_upstream_parent_is_followed_without_forcing(run):
    response = run["responses"]["sampled_upstream"]
    trace_id, _, flags = _traceresponse(response)
    assert trace_id == UPSTREAM[3:35]
    assert flags & 1 == 1
    spans = _trace(run, trace_id)
    (server,) = [s for s in spans if s["kind"] == "SERVER"]
    assert server["parent_id"] == UPSTREAM[36:52]
    assert "visiontel.force_trace" not in server["attributes"]
    assert any(s["name"] == "inference ssdlite" for s in spans)


def test_no_other_trace_was_recorded(run):
    traced = {
        _traceresponse(run["responses"][name])[0]
        for name in ("forced", "forced_bad_image", "sampled_upstream")
    }
    assert {s["trace_id"] for s in run["spans"]} == traced
