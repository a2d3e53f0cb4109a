"""Trace context into Triton requests: the real ``tritonclient`` http client, a real predict.

``YOLO("http://127.0.0.1:<port>/yolov8n")`` runs Ultralytics' own ``TritonRemoteModel``
with the real ``tritonclient.http`` client against a small KServe-v2 server started here
(what Triton answers: the model configuration, with Ultralytics' metadata in its
parameters, and ``infer`` with the binary tensor extension tritonclient uses). The server
records every request's headers, so the tests read what Triton would have been sent.

Ultralytics 8.3.0 does not read the Triton metadata, and its AutoBackend then fails on a
missing ``task`` unless the class names come from ``data=``: every predict passes a
data.yaml with the same names.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import tritonclient.http
from opentelemetry import propagate
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ultralytics import YOLO
from ultralytics.utils.triton import TritonRemoteModel

from visiontel.ultralytics import UltralyticsInstrumentor, _triton, instrument_yolo

MODEL = "yolov8n"
NAMES = {0: "person", 1: "car"}
IMGSZ = 64
# What Ultralytics' exporter writes into a Triton model's config (parameters.metadata).
METADATA = {
    "description": "fake Triton model",
    "stride": 32,
    "task": "detect",
    "batch": 1,
    "imgsz": [IMGSZ, IMGSZ],
    "names": NAMES,
    "args": {"nms": False, "dynamic": False},
}


# -- a KServe v2 (Triton) HTTP server ---------------------------------------------------------
@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    input_shapes: list[list[int]] = field(default_factory=list)


class FakeTriton(ThreadingHTTPServer):
    """Answers one detection model: its config, and ``infer`` with one box per image."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)  # bound here, held until server_close
        self.requests: list[Request] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{MODEL}"

    def infers(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == f"/v2/models/{MODEL}/infer"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # tritonclient keeps its connections open
    timeout = 30  # an idle kept-alive connection ends its thread
    server: FakeTriton

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self, input_shapes: list[list[int]] | None = None) -> None:
        request = Request(
            self.command,
            self.path,
            {name.lower(): value for name, value in self.headers.items()},
            input_shapes or [],
        )
        with self.server.lock:
            self.server.requests.append(request)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode())

    def do_GET(self) -> None:
        self._record()
        if self.path != f"/v2/models/{MODEL}/config":
            self._error(404, f"no route {self.path}")
            return
        config = {
            "name": MODEL,
            "platform": "onnxruntime_onnx",
            "max_batch_size": 0,
            "input": [{"name": "images", "data_type": "TYPE_FP32", "dims": [1, 3, IMGSZ, IMGSZ]}],
            "output": [{"name": "output0", "data_type": "TYPE_FP32", "dims": [1, 6, -1]}],
            "parameters": {"metadata": {"string_value": str(METADATA)}},
        }
        self._reply(200, json.dumps(config).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != f"/v2/models/{MODEL}/infer":
            self._record()
            self._error(404, f"no route {self.path}")
            return
        # the binary tensor extension: a JSON header, then the raw tensors
        json_size = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        request = json.loads(body[:json_size])
        offset, images = json_size, None
        for tensor in request["inputs"]:
            size = tensor.get("parameters", {}).get("binary_data_size")
            if size is None:
                data = np.asarray(tensor["data"], np.float32)
            else:
                data = np.frombuffer(body[offset : offset + size], np.float32)
                offset += size
            images = data.reshape(tensor["shape"])
        self._record([list(t["shape"]) for t in request["inputs"]])
        assert images is not None
        batch, _, height, width = images.shape
        anchors = sum((height // s) * (width // s) for s in (8, 16, 32))
        out = np.zeros((batch, 4 + len(NAMES), anchors), np.float32)
        out[:, :4, 0] = (width / 2, height / 2, width / 4, height / 4)  # xywh
        out[:, 4, 0] = 0.9  # one "person" per image
        wanted = {o["name"]: o.get("parameters", {}) for o in request.get("outputs", [])}
        output: dict[str, Any] = {"name": "output0", "datatype": "FP32", "shape": list(out.shape)}
        if wanted.get("output0", {}).get("binary_data", False):
            raw = out.tobytes()
            output["parameters"] = {"binary_data_size": len(raw)}
            header = json.dumps({"model_name": MODEL, "outputs": [output]}).encode()
            self._reply(200, header + raw, {"Inference-Header-Content-Length": str(len(header))})
        else:
            output["data"] = out.ravel().tolist()
            self._reply(200, json.dumps({"model_name": MODEL, "outputs": [output]}).encode())


@pytest.fixture
def triton() -> Iterator[FakeTriton]:
    server = FakeTriton()
    thread = threading.Thread(target=server.serve_forever, name="fake-triton", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


# -- telemetry and the two ways to instrument ------------------------------------------------
@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter

    def spans(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


@pytest.fixture
def telemetry() -> Telemetry:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return Telemetry(tracer_provider, meter_provider, exporter)


Instrument = Callable[..., Any]  # (url, **settings) -> an instrumented YOLO model


@pytest.fixture(params=["instrumentor", "instrument_yolo"])
def instrumented(request: pytest.FixtureRequest, telemetry: Telemetry) -> Iterator[Instrument]:
    providers = {
        "tracer_provider": telemetry.tracer_provider,
        "meter_provider": telemetry.meter_provider,
    }
    instrumentor = UltralyticsInstrumentor()
    models: list[Any] = []

    def make(url: str, **settings: Any) -> Any:
        if request.param == "instrumentor":
            instrumentor.instrument(**providers, **settings)  # before the model is made
            model = YOLO(url, task="detect")
        else:
            model = instrument_yolo(YOLO(url, task="detect"), **providers, **settings)
        models.append(model)
        return model

    yield make
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    for model in models:  # close the client's connections to the fake server
        client = _triton_client(model)
        if client is not None:
            client.close()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Two images in a folder: two batches of one, so two image spans in two traces."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        image = rng.integers(0, 255, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"frame{index}.png"), image)
    return folder


@pytest.fixture
def predict_args(tmp_path: Path) -> dict[str, Any]:
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"names": NAMES}))  # JSON is YAML
    return {
        "imgsz": IMGSZ,
        "device": "cpu",
        "data": str(data),
        "project": str(tmp_path / "runs"),
        "verbose": False,
    }


@pytest.fixture
def global_propagator() -> Iterator[Callable[[str], None]]:
    """Sets the global propagator as ``OTEL_PROPAGATORS=<names>`` would; restores it after."""
    saved = propagate.get_global_textmap()

    def use(names: str) -> None:
        propagators = []
        for name in names.split(","):
            (entry_point,) = importlib.metadata.entry_points(
                group="opentelemetry_propagator", name=name.strip()
            )
            propagators.append(entry_point.load()())
        propagate.set_global_textmap(CompositePropagator(propagators))

    yield use
    propagate.set_global_textmap(saved)


def _triton_client(model: Any) -> Any:
    """The client Ultralytics' TritonRemoteModel calls (8.4: under ``backend``)."""
    backend = getattr(getattr(model, "predictor", None), "model", None)
    if backend is None:
        return None
    holder = backend.__dict__.get("backend", backend)
    remote = getattr(holder, "model", None)
    return getattr(remote, "triton_client", None)


def _hex(span: ReadableSpan) -> tuple[str, str]:
    context = span.context
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _stage_of(telemetry: Telemetry, image: ReadableSpan, name: str) -> ReadableSpan:
    (stage,) = [
        s
        for s in telemetry.spans(name)
        if s.context.trace_id == image.context.trace_id
        and s.parent is not None
        and s.parent.span_id == image.context.span_id
    ]
    return stage


def _assert_one_box_per_image(results: list[Any]) -> None:
    """The predictions are the fake server's: the infer calls really went there."""
    assert len(results) == 2
    for result in results:
        assert result.boxes.cls.tolist() == [0.0]
        assert result.names[0] == "person"


# -- the tests ---------------------------------------------------------------------------------
def test_each_infer_request_carries_its_inference_stage_as_traceparent(
    triton: FakeTriton,
    instrumented: Instrument,
    telemetry: Telemetry,
    images: Path,
    predict_args: dict[str, Any],
) -> None:
    model = instrumented(triton.url)
    results = model.predict(str(images), **predict_args)
    _assert_one_box_per_image(results)
    assert isinstance(_triton_client(model), _triton._TracingTritonClient)

    image_spans = telemetry.spans(f"predict {MODEL}")
    assert len(image_spans) == 2
    assert len({s.context.trace_id for s in image_spans}) == 2  # one trace per image
    expected = set()
    for image in image_spans:
        inference = _stage_of(telemetry, image, "inference")
        trace_id, span_id = _hex(inference)
        assert trace_id == _hex(image)[0]
        expected.add((trace_id, span_id))

    traced = [r for r in triton.infers() if "traceparent" in r.headers]
    assert len(traced) == 2  # one per image, each from its own inference stage
    received = set()
    for request in traced:
        version, trace_id, parent_id, flags = request.headers["traceparent"].split("-")
        assert version == "00"
        assert int(flags, 16) & 0x01  # sampled
        received.add((trace_id, parent_id))
        assert request.input_shapes == [[1, 3, IMGSZ, IMGSZ]]
    assert received == expected
    # any other infer (the warmup) ran outside every stage: nothing to propagate
    for request in triton.infers():
        if request not in traced:
            assert not any(
                name.startswith(("traceparent", "x-b3", "b3")) for name in request.headers
            )


def test_a_batch_of_images_sends_the_batch_span_context(
    triton: FakeTriton,
    instrumented: Instrument,
    telemetry: Telemetry,
    predict_args: dict[str, Any],
) -> None:
    """With ``n > 1`` images the stages run under the batch span: its trace reaches Triton."""
    model = instrumented(triton.url)
    frames = [np.full((IMGSZ, IMGSZ, 3), value, np.uint8) for value in (0, 128)]
    results = model.predict(frames, **predict_args)
    _assert_one_box_per_image(results)
    (batch,) = telemetry.spans(f"predict batch {MODEL}")
    inference = _stage_of(telemetry, batch, "inference")
    traced = [r.headers["traceparent"] for r in triton.infers() if "traceparent" in r.headers]
    # a fixed-batch Triton model (8.4 splits the batch into two calls) or one call (8.3)
    assert traced
    for header in traced:
        assert header.split("-")[1:3] == list(_hex(inference))


@pytest.mark.parametrize(
    ("propagators", "expected"),
    [("b3multi", {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}), ("b3", {"b3"})],
)
def test_the_global_propagator_writes_the_headers(
    triton: FakeTriton,
    instrumented: Instrument,
    telemetry: Telemetry,
    images: Path,
    predict_args: dict[str, Any],
    global_propagator: Callable[[str], None],
    propagators: str,
    expected: set[str],
) -> None:
    global_propagator(propagators)
    model = instrumented(triton.url)
    _assert_one_box_per_image(model.predict(str(images), **predict_args))
    traced = [r for r in triton.infers() if expected <= set(r.headers)]
    assert len(traced) == 2
    assert not any("traceparent" in r.headers for r in triton.infers())
    inference = {_hex(s) for s in telemetry.spans("inference")}
    for request in traced:
        if propagators == "b3multi":
            sent = (request.headers["x-b3-traceid"], request.headers["x-b3-spanid"])
            assert request.headers["x-b3-sampled"] == "1"
        else:
            trace_id, span_id, sampled = request.headers["b3"].split("-")
            sent = (trace_id, span_id)
            assert sampled == "1"
        assert sent in inference


@pytest.mark.parametrize("how", ["environment", "argument"])
def test_triton_headers_off_leaves_the_client_unwrapped(
    triton: FakeTriton,
    instrumented: Instrument,
    telemetry: Telemetry,
    images: Path,
    predict_args: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    if how == "environment":
        monkeypatch.setenv("VISIONTEL_ULTRALYTICS_TRITON_HEADERS", "false")
        model = instrumented(triton.url)
    else:
        model = instrumented(triton.url, triton_headers=False)
    _assert_one_box_per_image(model.predict(str(images), **predict_args))
    assert type(_triton_client(model)) is tritonclient.http.InferenceServerClient
    assert len(triton.infers()) >= 2
    for request in triton.infers():
        assert "traceparent" not in request.headers
    assert len(telemetry.spans(f"predict {MODEL}")) == 2  # still traced, only not propagated
    assert len(telemetry.spans("inference")) == 2


def test_inject_headers_on_each_autobackend_layout(
    triton: FakeTriton, telemetry: Telemetry
) -> None:
    """The real TritonRemoteModel and client, held the way 8.4 and 8.3 AutoBackends hold it."""
    remote = TritonRemoteModel(triton.url)
    client = remote.triton_client
    layouts = {
        "8.4": SimpleNamespace(format="triton", backend=SimpleNamespace(model=remote)),
        "8.3": SimpleNamespace(pt=False, onnx=False, triton=True, model=remote),
    }
    tracer = telemetry.tracer_provider.get_tracer("test")
    try:
        for name, autobackend in layouts.items():
            remote.triton_client = client
            assert _triton.inject_headers(autobackend), name
            wrapped = remote.triton_client
            assert isinstance(wrapped, _triton._TracingTritonClient), name
            assert _triton.inject_headers(autobackend)  # again: wrapped once only
            assert remote.triton_client is wrapped
        own = {"x-tenant": "gate-3"}
        with tracer.start_as_current_span("call") as span:
            (out,) = remote(np.zeros((1, 3, IMGSZ, IMGSZ), np.float32))
            remote.triton_client.infer(
                model_name=MODEL,
                inputs=_inputs(remote, np.zeros((1, 3, IMGSZ, IMGSZ), np.float32)),
                headers=own,
            )
        assert out.shape == (1, 4 + len(NAMES), 84)
        assert own == {"x-tenant": "gate-3"}  # the caller's dict is not written to
        first, second = triton.infers()
        trace_id, span_id = (
            format(span.get_span_context().trace_id, "032x"),
            format(span.get_span_context().span_id, "016x"),
        )
        for request in (first, second):
            assert request.headers["traceparent"].split("-")[1:3] == [trace_id, span_id]
        assert second.headers["x-tenant"] == "gate-3"  # the caller's headers are kept
        remote.triton_client.infer(  # outside any span: nothing to add, nothing added
            model_name=MODEL, inputs=_inputs(remote, np.zeros((1, 3, IMGSZ, IMGSZ), np.float32))
        )
        assert "traceparent" not in triton.infers()[-1].headers
    finally:
        client.close()
    for autobackend in (
        SimpleNamespace(format="onnx", backend=SimpleNamespace(model=remote)),
        SimpleNamespace(pt=True, model=remote),
        SimpleNamespace(format="triton", backend=SimpleNamespace(model=None)),
    ):
        assert not _triton.inject_headers(autobackend)


def _inputs(remote: TritonRemoteModel, x: np.ndarray) -> list[Any]:
    infer_input = remote.InferInput(remote.input_names[0], list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    return [infer_input]
