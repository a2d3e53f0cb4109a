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
    meter = metrics.get_meter("visiontel.demo.source")
    frames_sent = meter.create_counter(
        "visiontel.demo.frames.sent", unit="{frame}", description="Frames sent to the detector"
    )
    frames_dropped = meter.create_counter(
        "visiontel.demo.frames.dropped",
        unit="{frame}",
        description="Sequence numbers the source skipped (--drop-every): frames lost on purpose",
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
    # Built once: used on every frame. The stream id as the hops' stream health names it.
    sent_attributes = {"visiontel.source.kind": kind, "visiontel.stream.id": STREAM_ID}
    _log.info("reading %s frames from %s", kind, name)
    interval = 1.0 / config.fps if config.fps > 0 else 0.0
    next_due = time.perf_counter()
    sent = 0
    sequence = 0  # runs ahead of `sent` by the frames dropped
    dropped = 0
    if telemetry.enabled and config.drop_every:
        frames_dropped.add(0, sent_attributes)  # the series exists even before a drop
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
            if config.drop_every and (sequence + 1) % config.drop_every == 0:
                # A camera that loses a frame: its number is skipped. Only ever just before
                # a frame that is sent, so every drop is a gap the hops can see.
                sequence += 1
                dropped += 1
                if telemetry.enabled:
                    frames_dropped.add(1, sent_attributes)
            identity = vp.FrameIdentity.now(STREAM_ID, sequence)
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
                    KIND_FRAME, sequence, identity.capture_ns, width, height, channels, pixels
                ).pack()
                submit(payload, metadata=metadata, timeout=60)
            sent += 1
            sequence += 1
            if telemetry.enabled:
                frames_sent.add(1, sent_attributes)
    except SourceError as exc:
        raise DemoError(str(exc)) from None
    finally:
        # Tell the detector the stream ended, so it can drain and tell the tracker.
        with contextlib.suppress(grpc.RpcError):
            submit(Frame(KIND_END, sent, time.time_ns()).pack(), timeout=60)
        channel.close()
    _log.info("sent %d frames (%d sequence numbers dropped)", sent, dropped)
