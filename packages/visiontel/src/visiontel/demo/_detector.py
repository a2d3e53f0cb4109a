"""The detector service: queues frames from gRPC, runs the model, sends results on.

Each frame continues its own trace: ``detect`` with the stages ``preprocess``, the
model's ``inference`` span (one child per top-level module, e.g. ``backbone``, ``neck``,
``head``, ``nms`` for tinydet, from visiontel.torch), ``postprocess`` and the ``send result``
client call. An Ultralytics model (``--model yolov8n``) brings its own stages: ``detect``
holds visiontel-ultralytics' ``predict yolov8n`` span with ``preprocess``, ``inference`` and
``postprocess`` below it, then ``send result``.

Frames wait in a :class:`visiontel.propagation.FrameBatcher` between the gRPC handler and
the model loop. The model takes one frame at a time (batches of one, ``_BATCH``), so the
batcher changes nothing in what runs; it reports the queue's depth
(``visiontel.batcher.queue.depth``) and each frame's wait (``visiontel.batcher.wait.duration``).
Every frame counts in the detector's stream health (``visiontel.frames.received`` and
``visiontel.frames.lost`` by sequence gap, through ``continue_frame``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import grpc
import torch
from opentelemetry import trace
from opentelemetry.trace import SpanKind

import visiontel.propagation as vp
import visiontel.torch as vt
from visiontel.demo import _child, _faults, _yolo
from visiontel.demo._config import DemoConfig
from visiontel.demo._errors import DemoError
from visiontel.demo._model import to_frame
from visiontel.demo._telemetry import Telemetry
from visiontel.demo._wire import (
    FRAME_METHOD,
    KIND_END,
    KIND_FRAME,
    RESULT_METHOD,
    Frame,
    Result,
    WireError,
    connect,
    serve,
)  # fmt: skip
from visiontel.demo._zoo import Detector, build

_log = logging.getLogger("visiontel.demo.detector")
_QUEUE = 4  # frames waiting; a full queue holds the source's call: backpressure
_BATCH = 1  # the model's batch size: one frame per forward
_CONNECT_TIMEOUT = 60.0
_IN_FLIGHT = 8  # results sent and not yet acknowledged by the tracker
_STAGES = ("preprocess", "postprocess")


class _GPUNote(logging.Handler):
    """Keeps what visiontel-gpu says when it finds no GPU, for the run's summary."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _start_gpu_metrics(telemetry: Telemetry) -> None:
    from visiontel.gpu import GPUInstrumentor

    note = _GPUNote()
    gpu_log = logging.getLogger("visiontel.gpu")
    gpu_log.addHandler(note)
    try:
        instrumentor = GPUInstrumentor()
        instrumentor.instrument(
            meter_provider=telemetry.meter_provider, logger_provider=telemetry.logger_provider
        )
        devices = instrumentor.devices
    finally:
        gpu_log.removeHandler(note)
    if devices:
        _child.say("GPU", len(devices))
    else:
        reason = note.messages[-1] if note.messages else "no GPU metrics"
        _child.say("NOGPU", reason.replace("\n", " "))


class _Sender:
    """Results go to the tracker without waiting for it: the model never idles on a hop.

    At most ``_IN_FLIGHT`` calls are outstanding (then the oldest is waited for); the
    ``send result`` client span (``vp.start_span``: the tracer's span, made for less) ends
    when its call completes, so it covers the RPC.
    """

    def __init__(self, send: grpc.UnaryUnaryMultiCallable) -> None:
        self._send = send
        self._pending: collections.deque[grpc.Future] = collections.deque()

    def send(self, payload: bytes, tracer: trace.Tracer | None) -> None:
        metadata: list[tuple[str, str | bytes]] = []
        if tracer is None:
            future = self._send.future(payload, timeout=30)
        else:
            span = vp.start_span("send result", tracer=tracer, kind=SpanKind.CLIENT)
            vp.inject_grpc(metadata, trace.set_span_in_context(span))
            future = self._send.future(payload, metadata=metadata, timeout=30)
            future.add_done_callback(lambda _: span.end())
        self._pending.append(future)
        while self._pending and (len(self._pending) > _IN_FLIGHT or self._pending[0].done()):
            self._pending.popleft().result()  # a failed call stops the detector here

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()


def _router(config: DemoConfig) -> Callable[[int], str]:
    """Which model version serves a frame: a seeded coin per frame, so reruns agree."""
    if not config.canary_version:
        return lambda sequence: config.model_version
    canary, stable, fraction = config.canary_version, config.model_version, config.canary_fraction
    return lambda sequence: canary if random.Random(sequence).random() < fraction else stable


def _device(config: DemoConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda: torch sees no CUDA device; use --device cpu or auto")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def _build_yolos(
    config: DemoConfig, telemetry: Telemetry, device: torch.device
) -> dict[str, _yolo.YoloDetector]:
    yolos = {}
    for version in config.versions:
        yolo = _yolo.build(
            config.model, version, config.weights, device, (config.width, config.height)
        )
        if telemetry.enabled:
            _yolo.instrument(
                yolo, config.model, version, telemetry.tracer_provider, telemetry.meter_provider
            )
        yolos[version] = yolo
    if config.threads:
        # Ultralytics sets torch's CPU threads when it sets up a predictor: back to ours.
        torch.set_num_threads(config.threads)
    return yolos


def run(config: DemoConfig, telemetry: Telemetry) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config)
    tracer = trace.get_tracer("visiontel.demo.detector")
    inbox: vp.FrameBatcher[Frame] = vp.FrameBatcher("detector", capacity=_QUEUE)

    def submit(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            frame = Frame.unpack(request)
        except WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        carried = vp.extract_grpc(context.invocation_metadata()) if telemetry.enabled else None
        inbox.put(carried, frame)  # None without telemetry: the handler's (empty) context
        return b""

    # Bound before the models are built, so a port taken since the launcher's check fails
    # the run at once; no frame comes before READY, which is said once the models are built.
    try:
        server, port = serve(FRAME_METHOD, submit, config.detector_port)
    except OSError:
        raise _child.bind_error("detector", config.detector_port, "--detector-port") from None
    model_name = config.model
    models: dict[str, Detector] = {}
    yolos: dict[str, _yolo.YoloDetector] = {}
    try:
        if telemetry.enabled:
            _start_gpu_metrics(telemetry)
        if config.ultralytics:
            yolos = _build_yolos(config, telemetry, device)
        else:
            models = {version: build(model_name, version, device) for version in config.versions}
            if config.canary_fault and config.canary_version:
                _faults.inject(config.canary_fault, models[config.canary_version].module)
        if telemetry.enabled:
            for version, model in models.items():
                vt.instrument_model(model.module, name=model_name, version=version)
        sink_port = _child.upstream_port("tracker")
        try:
            channel = connect(sink_port, _CONNECT_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise DemoError(f"the tracker did not answer on port {sink_port}") from None
    except BaseException:
        server.stop(0)
        raise
    route = _router(config)
    send = channel.unary_unary(RESULT_METHOD)
    sender = _Sender(send)
    _log.info("serving %s %s on %s, port %d", model_name, "/".join(config.versions), device, port)
    _child.say("READY", port)

    # Built once per version, not per frame: the frame loop is the pipeline's bottleneck.
    # A stage object is entered by this thread only, one frame after the other.
    stages = {
        version: {name: vt.stage(name, model=model_name, version=version) for name in _STAGES}
        for version in config.versions
    }
    model_attributes = {
        version: {"visiontel.model.name": model_name, "visiontel.model.version": version}
        for version in config.versions
    }
    no_stage = contextlib.nullcontext()

    def stage(name: str, version: str) -> AbstractContextManager[object]:
        return stages[version][name] if telemetry.enabled else no_stage

    done = 0
    with torch.inference_mode():
        while True:
            ((carried, frame),) = inbox.next_batch(_BATCH, 0.0)
            _child.first_frame()
            if frame.kind == KIND_END:
                if telemetry.enabled:
                    vp.end_streams()  # the gaps of the stream's last frames count now
                break
            if frame.kind != KIND_FRAME:
                continue
            version = route(frame.sequence)
            span_cm: AbstractContextManager[object] = contextlib.nullcontext()
            if telemetry.enabled:
                span_cm = vp.continue_frame(
                    "detect", carried, tracer=tracer, attributes=model_attributes[version]
                )
            with span_cm:
                if yolos:
                    # The frame's span is current here: Ultralytics' spans join its trace.
                    boxes = yolos[version].detect(
                        frame.pixels, frame.width, frame.height, frame.channels
                    )
                    result = Result(KIND_FRAME, frame.sequence, frame.capture_ns, version, boxes)
                else:
                    with stage("preprocess", version):
                        model = models[version]
                        tensor, scale = model.prepare(
                            frame.pixels, frame.width, frame.height, frame.channels, device
                        )
                    rows = model.rows(model.module(tensor))
                    with stage("postprocess", version):
                        boxes = to_frame(rows, scale, frame.width, frame.height)
                        result = Result(
                            KIND_FRAME, frame.sequence, frame.capture_ns, version, boxes
                        )
                sender.send(result.pack(), tracer if telemetry.enabled else None)
            done += 1
    sender.drain()
    if telemetry.meter_provider is not None:
        # While the batcher still exists: its queue depth is read at collection, and the
        # batcher is gone by the time the process's final export runs.
        telemetry.meter_provider.force_flush(5_000)
    send(Result(KIND_END, done, 0).pack(), timeout=30)
    channel.close()
    server.stop(0.2).wait()
    if telemetry.enabled:
        vt.flush(5.0)
        traced_yolo = sys.modules.get("visiontel.ultralytics")  # loaded only for --model yolo*
        if traced_yolo is not None:  # its per-image metrics are recorded off this thread
            traced_yolo.flush(5.0)
    _log.info("detected on %d frames with %s", done, model_name)
