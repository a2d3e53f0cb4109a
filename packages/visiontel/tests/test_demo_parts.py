"""The demo's pieces: wire format, model, tracker, report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiontel.demo import _child, _preflight
from visiontel.demo._config import DemoConfig
from visiontel.demo._errors import UsageError, port_in_use
from visiontel.demo._model import MAX_DETECTIONS, MAX_SIDE, build, preprocess, to_frame
from visiontel.demo._report import Span, percentile, waterfall
from visiontel.demo._sink import IoUTracker
from visiontel.demo._wire import KIND_FRAME, Frame, Result, WireError, connect, serve


def test_frame_and_result_round_trip() -> None:
    frame = Frame(KIND_FRAME, 7, 123456789, 4, 2, 3, bytes(range(24)))
    assert Frame.unpack(frame.pack()) == frame
    rows = np.arange(12, dtype=np.float32).tobytes()
    result = Result(KIND_FRAME, 7, 123456789, "2.0-canary", rows)
    back = Result.unpack(result.pack())
    assert back == result and back.count == 2


@pytest.mark.parametrize("payload", [b"", b"VTF1", b"XXXX" + bytes(40)])
def test_foreign_bytes_are_refused(payload: bytes) -> None:
    with pytest.raises(WireError):
        Frame.unpack(payload)
    with pytest.raises(WireError):
        Result.unpack(payload)


def test_server_binds_port_zero_and_reports_the_port_it_got() -> None:
    server, port = serve("/t.Echo/Call", lambda request, context: request[::-1], 0)
    try:
        assert port != 0
        channel = connect(port, timeout=10)
        assert channel.unary_unary("/t.Echo/Call")(b"abc", timeout=10) == b"cba"
        channel.close()
    finally:
        server.stop(0)


def test_server_does_not_share_a_port_in_use(busy_port: int) -> None:
    # gRPC's default SO_REUSEPORT would let it bind beside another SO_REUSEPORT listener.
    other, port = serve("/t.Echo/Call", lambda request, context: request, 0)
    try:
        for taken in (busy_port, port):
            with pytest.raises(OSError, match=f"port {taken} on 127.0.0.1 is in use"):
                serve("/t.Echo/Call", lambda request, context: request, taken)
    finally:
        other.stop(0)


def test_launcher_picks_no_port_and_checks_the_ones_given(busy_port: int) -> None:
    config = DemoConfig(run_dir="unused")
    _preflight.ports(config)
    assert (config.detector_port, config.sink_port) == (0, 0)  # the services bind port 0
    config.sink_port = busy_port
    with pytest.raises(UsageError) as caught:
        _preflight.ports(config)
    assert str(caught.value) == str(port_in_use(busy_port, "--sink-port"))


def test_a_service_that_cannot_bind_says_the_launchers_line() -> None:
    error = _child.bind_error("tracker", 50051, "--sink-port")
    assert isinstance(error, UsageError) and error.exit_code == 2
    assert str(error) == (
        "port 50051 on 127.0.0.1 is in use (--sink-port): stop what holds it, pick another "
        "--sink-port, or leave --sink-port out to use a free port"
    )
    unbound = _child.bind_error("tracker", 0, "--sink-port")
    assert not isinstance(unbound, UsageError) and "no free port" in str(unbound)


def test_model_versions_are_reproducible_and_distinct() -> None:
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    tensor, scale = preprocess(image.tobytes(), 320, 240, 3)
    assert scale == 1.0 and tensor.shape == (1, 3, 240, 320)
    with torch.inference_mode():
        a1, a2, b = build("1.0")(tensor)[0], build("1.0")(tensor)[0], build("2.0")(tensor)[0]
    assert torch.equal(a1, a2)
    assert not (a1.shape == b.shape and torch.equal(a1, b))
    for rows in (a1, b):
        assert rows.shape[1] == 6 and rows.shape[0] <= MAX_DETECTIONS
        assert bool((rows[:, 4] >= 0.3).all())  # above the score threshold


def test_large_frames_are_scaled_and_boxes_mapped_back() -> None:
    image = np.zeros((1080, 1920, 3), np.uint8)
    tensor, scale = preprocess(image.tobytes(), 1920, 1080, 3)
    assert max(tensor.shape[2:]) == MAX_SIDE and scale == pytest.approx(MAX_SIDE / 1920)
    rows = torch.tensor([[10.0, 10.0, 700.0, 400.0, 0.9, 1.0]])
    boxes = np.frombuffer(to_frame(rows, scale, 1920, 1080), np.float32).reshape(-1, 6)
    assert boxes[0, 0] == pytest.approx(30.0) and boxes[0, 2] == 1920  # clipped
    assert boxes[0, 3] == 1080


def test_tracker_keeps_identity_of_a_moving_box() -> None:
    tracker = IoUTracker()
    box = np.array([[10, 10, 50, 50, 0.9, 0]], np.float32)
    assert tracker.update(box) == (1, 1)
    moved = box.copy()
    moved[0, :4] += 5
    assert tracker.update(moved) == (1, 0)  # same track
    far = np.array([[200, 200, 240, 240, 0.9, 0]], np.float32)
    assert tracker.update(far) == (2, 1)  # new track; the old one is only missing
    for _ in range(6):
        tracker.update(far)
    assert tracker.update(far) == (1, 0)  # the missing one was dropped


def test_waterfall_and_percentile() -> None:
    ms = 1_000_000
    spans = [
        Span("frame-source", "t", "a", "", "capture", 0, 2 * ms, {"visiontel.frame.sequence": 4}),
        Span("detector", "t", "b", "a", "detect", 3 * ms, 9 * ms),
        Span("detector", "t", "c", "b", "preprocess", 3 * ms, 4 * ms),
        Span("tracker", "t", "d", "b", "track", 9 * ms, 10 * ms),
    ]
    lines = waterfall(spans)
    assert "frame 4" in lines[0] and "10.0 ms" in lines[0]
    body = lines[2:]
    assert [line.split("|")[0].split()[-1] for line in body] == [
        "capture", "detect", "preprocess", "track",
    ]  # fmt: skip
    assert body[2].split("|")[0].index("preprocess") > body[1].split("|")[0].index("detect")
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([1.0] * 99 + [100.0], 99) == 1.0
    assert percentile([1.0] * 98 + [100.0] * 2, 99) == 100.0
