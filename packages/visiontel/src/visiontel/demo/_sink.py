"""The tracker/sink: associates detections into tracks and records frame latency.

It ends each frame's trace (``track``, with a ``associate`` child), records the
capture-to-result latency histogram from visiontel.propagation (and, through it and
``continue_frame``, the tracker's stream health: each frame counted once), writes one log record per
frame (in the frame's trace context, so logs and traces join up) and reports each frame
to the launcher for the live progress line.

The per-frame work runs for every frame on a core the detector shares, so it is kept
lean: attribute dicts are built once per model version, and the per-frame log record goes
through a logger of its own whose only handler is the OpenTelemetry bridge (formatting
and writing it to the stderr file too cost more than the record itself).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import grpc
import numpy as np
import numpy.typing as npt
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind

import visiontel.propagation as vp
from visiontel.demo import _child
from visiontel.demo._config import DemoConfig
from visiontel.demo._telemetry import LogBridge, Telemetry
from visiontel.demo._wire import (
    DETECTION_FIELDS,
    KIND_END,
    RESULT_METHOD,
    Result,
    WireError,
    serve,
)

_log = logging.getLogger("visiontel.demo.tracker")
# Per-frame records: to OpenTelemetry only (see the module docstring); set up in run().
_frame_log = logging.getLogger("visiontel.demo.tracker.frames")
Boxes = npt.NDArray[np.float32]
_MATCH_IOU = 0.3
_MAX_MISSES = 5  # frames a track survives without a matching detection


def _iou(a: Boxes, b: Boxes) -> npt.NDArray[np.float32]:
    """Pairwise IoU of two box sets (x1, y1, x2, y2)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:4] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:4] - b[:, :2]).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    result: npt.NDArray[np.float32] = inter / np.maximum(union, 1e-6)
    return result


class IoUTracker:
    """Greedy IoU association, the simplest tracker that still keeps identities."""

    def __init__(self) -> None:
        self._boxes = np.zeros((0, 4), np.float32)
        self._ids: list[int] = []
        self._misses: list[int] = []
        self._next_id = 1

    def update(self, detections: Boxes) -> tuple[int, int]:
        """Take one frame's detections; return (active tracks, tracks started)."""
        boxes = detections[:, :4]
        matched_det: set[int] = set()
        matched_track: set[int] = set()
        if len(self._ids) and len(boxes):
            overlap = _iou(self._boxes, boxes)
            for flat in np.argsort(overlap, axis=None)[::-1]:
                track, det = divmod(int(flat), len(boxes))
                if overlap[track, det] < _MATCH_IOU:
                    break
                if track in matched_track or det in matched_det:
                    continue
                matched_track.add(track)
                matched_det.add(det)
                self._boxes[track] = boxes[det]
        for track in range(len(self._ids)):
            self._misses[track] = 0 if track in matched_track else self._misses[track] + 1
        keep = [t for t in range(len(self._ids)) if self._misses[t] <= _MAX_MISSES]
        new = [d for d in range(len(boxes)) if d not in matched_det]
        self._boxes = np.concatenate([self._boxes[keep], boxes[new]]).astype(np.float32)
        self._ids = [self._ids[t] for t in keep] + list(
            range(self._next_id, self._next_id + len(new))
        )
        self._misses = [self._misses[t] for t in keep] + [0] * len(new)
        self._next_id += len(new)
        return len(self._ids), len(new)


def run(config: DemoConfig, telemetry: Telemetry) -> None:
    tracer = trace.get_tracer("visiontel.demo.tracker")
    tracks_started = metrics.get_meter("visiontel.demo.tracker").create_counter(
        "visiontel.demo.tracks.started", unit="{track}", description="Tracks the tracker opened"
    )
    latency = vp.FrameLatency()
    tracker = IoUTracker()
    lock = threading.Lock()
    ended = threading.Event()
    expected: list[int] = []
    per_version: dict[str, dict[str, str]] = {}  # read-only once built: shared by every call
    if telemetry.enabled:
        _frame_log.propagate = False
        _frame_log.setLevel(logging.INFO)
        _frame_log.handlers = [h for h in logging.getLogger().handlers if isinstance(h, LogBridge)]

    def result(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            message = Result.unpack(request)
        except WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if message.kind == KIND_END:
            if telemetry.enabled:
                vp.end_streams()  # the gaps of the stream's last frames count now
            expected.append(message.sequence)
            ended.set()
            return b""
        _child.first_frame()
        rows = np.frombuffer(message.detections, np.float32).reshape(-1, DETECTION_FIELDS)
        span_cm: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        carried = None
        if telemetry.enabled:
            version = per_version.get(message.model_version)
            if version is None:
                version = per_version.setdefault(
                    message.model_version, {"visiontel.model.version": message.model_version}
                )
            carried = vp.extract_grpc(context.invocation_metadata())
            span_cm = vp.continue_frame(
                "track", carried, tracer=tracer, kind=SpanKind.SERVER, attributes=version
            )
        with span_cm, lock:
            if telemetry.enabled:
                # A leaf span: nothing inside needs it current, so no context attach/detach.
                with tracer.start_span("associate"):
                    active, started = tracker.update(rows)
                latency.record(carried, attributes=version)
                tracks_started.add(started, version)
                _frame_log.info(
                    "frame %d: %d detections, %d active tracks (%d new)",
                    message.sequence, len(rows), active, started,
                )  # fmt: skip
            else:
                tracker.update(rows)
        age_ns = time.time_ns() - message.capture_ns
        _child.say("DONE", message.sequence, age_ns, len(rows), message.model_version)
        return b""

    try:
        # One worker: results are tracked in the order they arrive, as a tracker needs.
        server, port = serve(RESULT_METHOD, result, config.sink_port, workers=1)
    except OSError:
        raise _child.bind_error("tracker", config.sink_port, "--sink-port") from None
    _child.say("READY", port)
    while not ended.wait(0.5):
        pass
    server.stop(0.2).wait()
    _child.say("END", expected[0] if expected else 0)
