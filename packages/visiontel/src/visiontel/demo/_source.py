"""The frame source: reads frames and sends each, with its own trace, to the detector."""

from __future__ import annotations

import contextlib
import logging
import time

import grpc
from opentelemetry import metrics, trace

import visiontel.propagation as vp
from visiontel.demo import _child
from visiontel.demo._config import DemoConfig
from visiontel.demo._errors import DemoError
from visiontel.demo._frames import SourceError, describe, open_source
from visiontel.demo._telemetry import Telemetry
from visiontel.demo._wire import FRAME_METHOD, KIND_END, KIND_FRAME, Frame, connect

_log = logging.getLogger("visiontel.demo.source")
STREAM_ID = "camera-0"
# The port comes once the detector serves (it has imported torch and built its models by
# then), so this only covers a busy machine.
_CONNECT_TIMEOUT = 30.0


def run(config: DemoConfig, telemetry: Telemetry) -> None:
    kind, name = describe(config.source)
    tracer = trace.get_tracer("visiontel.demo.source")
    frames_sent = metrics.get_meter("visiontel.demo.source").create_counter(
        "visiontel.demo.frames.sent", unit="{frame}", description="Frames sent to the detector"
    )
    port = _child.upstream_port("detector")
    try:
        channel = connect(port, _CONNECT_TIMEOUT)
    except grpc.FutureTimeoutError:
        raise DemoError(
            f"the detector did not answer on port {port} within {_CONNECT_TIMEOUT:.0f}s"
        ) from None
    submit = channel.unary_unary(FRAME_METHOD)
    attributes = {"visiontel.source.kind": kind, "visiontel.source.name": name}
    sent_attributes = {"visiontel.source.kind": kind}  # built once: used on every frame
    _log.info("reading %s frames from %s", kind, name)
    interval = 1.0 / config.fps if config.fps > 0 else 0.0
    next_due = time.perf_counter()
    sent = 0
    try:
        for image in open_source(config.source, config.width, config.height):
            if _child.stop.is_set() or (config.frames and sent >= config.frames):
                break
            if interval:
                # Pace like a camera: sleep to the next tick, never try to catch up.
                delay = next_due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_due = max(next_due + interval, time.perf_counter())
            _child.first_frame()
            height, width, channels = image.shape
            identity = vp.FrameIdentity.now(STREAM_ID, sent)
            metadata: list[tuple[str, str | bytes]] = []
            span_cm = (
                vp.start_frame("capture", identity, tracer=tracer, attributes=attributes)
                if telemetry.enabled
                else contextlib.nullcontext()
            )
            with span_cm:
                if telemetry.enabled:
                    vp.inject_grpc(metadata)
                pixels = image.tobytes()
                payload = Frame(
                    KIND_FRAME, sent, identity.capture_ns, width, height, channels, pixels
                ).pack()
                submit(payload, metadata=metadata, timeout=60)
            sent += 1
            if telemetry.enabled:
                frames_sent.add(1, sent_attributes)
    except SourceError as exc:
        raise DemoError(str(exc)) from None
    finally:
        # Tell the detector the stream ended, so it can drain and tell the tracker.
        with contextlib.suppress(grpc.RpcError):
            submit(Frame(KIND_END, sent, time.time_ns()).pack(), timeout=60)
        channel.close()
    _log.info("sent %d frames", sent)
