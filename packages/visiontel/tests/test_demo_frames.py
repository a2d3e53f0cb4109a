"""Frame sources and credential redaction (no processes, no network)."""

from __future__ import annotations

import pathlib
import socket

import numpy as np
import pytest

from visiontel.demo._frames import SourceError, check, describe, open_source, redact_url, synthetic


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/live", "rtsp://10.0.0.5:554/live"),
        ("rtsp://admin@cam.local/stream1", "rtsp://cam.local/stream1"),
        (
            "rtsp://cam.local/s?user=bob&password=pw&fps=5",
            "rtsp://cam.local/s?user=REDACTED&password=REDACTED&fps=5",
        ),
        ("http://u:p@[fd00::1]:8080/mjpg", "http://[fd00::1]:8080/mjpg"),
        ("rtsp://cam.local/stream#frag", "rtsp://cam.local/stream"),
    ],
)
def test_redact_url_drops_credentials(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_describe_never_returns_credentials() -> None:
    kind, name = describe("rtsp://a:b@host:8554/x")
    assert (kind, name) == ("stream", "rtsp://host:8554/x")
    assert describe("synthetic") == ("synthetic", "synthetic")


def test_synthetic_frames_move() -> None:
    frames = synthetic(160, 120, seed=1)
    first, second = next(frames), next(frames)
    assert first.shape == (120, 160, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, second)
    # Deterministic per seed: reruns see the same video.
    assert np.array_equal(next(synthetic(160, 120, seed=1)), first)


def test_missing_path_says_what_to_do(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SourceError, match=r"no such video file or image folder.*--source"):
        check(str(tmp_path / "missing.mp4"))


def test_unreachable_camera_is_refused_without_credentials() -> None:
    # Bound and held but not listening: a connection is refused for as long as the test
    # holds it, and no other process can start listening there meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(SourceError) as caught:
            check(f"rtsp://root:pa55@127.0.0.1:{port}/h264", timeout=1.0)
    message = str(caught.value)
    assert f"rtsp://127.0.0.1:{port}/h264" in message
    assert "root" not in message and "pa55" not in message


cv2 = pytest.importorskip(
    "cv2", reason="needs cv2: opencv-python-headless (the test extra) is missing"
)


def test_video_file_frames(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for value in range(6):
        writer.write(np.full((48, 64, 3), value * 40, np.uint8))
    writer.release()
    check(str(path))
    frames = list(open_source(str(path), 320, 240))
    assert len(frames) == 6
    assert frames[0].shape == (48, 64, 3)
    assert frames[5].mean() > frames[0].mean()


def test_unreadable_video_file_is_a_source_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "not-a-video.mp4"
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot open video file"):
        list(open_source(str(path), 320, 240))


def test_image_folder_in_name_order(tmp_path: pathlib.Path) -> None:
    for index in (2, 0, 1):
        image = np.full((30, 40, 3), index * 80, np.uint8)
        cv2.imwrite(str(tmp_path / f"frame{index}.png"), image)
    (tmp_path / "readme.txt").write_text("skipped")
    check(str(tmp_path))
    frames = list(open_source(str(tmp_path), 320, 240))
    assert [int(f.mean()) for f in frames] == [0, 80, 160]
