"""Bad input ends the demo with one line saying what to do, a non-zero exit, no traceback.

Each case is refused before any service starts, so these run in about a second each.
"""

from __future__ import annotations

import pathlib
import socket
from collections.abc import Iterator

import pytest
from demo_support import clean_env, one_line_error


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: bound and held, never listening, so connections
    are refused and no other process can start listening there during the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_unreachable_endpoint_flag(run, closed_port: int) -> None:
    result = run("demo", "--frames", "5", "--otlp-endpoint", f"http://127.0.0.1:{closed_port}")
    one_line_error(result, "cannot reach the OTLP endpoint", str(closed_port), "unset it")


def test_unreachable_endpoint_from_environment(run, closed_port: int) -> None:
    env = clean_env()
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://user:hunter2@127.0.0.1:{closed_port}"
    line = one_line_error(run("demo", "--frames", "5", env=env), "cannot reach the OTLP endpoint")
    assert "hunter2" not in line and "user" not in line


def test_missing_video_file(run, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nowhere" / "clip.mp4"
    result = run("demo", "--source", str(missing))
    one_line_error(result, "no such video file or image folder", str(missing), "--source")


def test_unreadable_rtsp_url_keeps_credentials_out(run, closed_port: int) -> None:
    url = f"rtsp://admin:s3cret@127.0.0.1:{closed_port}/live?token=abc123"
    line = one_line_error(run("demo", "--source", url), "cannot reach camera", "check the URL")
    assert f"rtsp://127.0.0.1:{closed_port}/live" in line
    for secret in ("admin", "s3cret", "abc123"):
        assert secret not in line


@pytest.mark.parametrize("flag", ["--detector-port", "--sink-port"])
def test_port_in_use(run, busy_port: int, flag: str) -> None:
    result = run("demo", "--frames", "5", flag, str(busy_port))
    one_line_error(result, f"port {busy_port} on 127.0.0.1 is in use ({flag})", f"another {flag}")


def test_folder_without_images(run, tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("no pictures here")
    one_line_error(run("demo", "--source", str(tmp_path)), "holds no images")


def test_bad_flag_values(run) -> None:
    one_line_error(
        run("demo", "--canary-version", "2.0", "--canary-fraction", "1.5"), "between 0 and 1"
    )
    one_line_error(run("demo", "--frames", "-1"), "--frames")


@pytest.mark.parametrize(
    ("name", "raw", "shown"),
    [
        ("VISIONTEL_DEMO_FPS", "fast", "(default 30.0)"),
        ("VISIONTEL_DEMO_FRAMES", "-3", "(default 300)"),
        ("VISIONTEL_DEMO_DEVICE", "tpu", "(default auto)"),
        ("VISIONTEL_DEMO_SIZE", "10x10", "(default 320x240)"),
        # test_demo_canary: a bad --canary-fault flag stops the run
        ("VISIONTEL_DEMO_CANARY_FAULT", "fast", "(default: none)"),
    ],
)
def test_malformed_environment_variable_is_logged_and_defaulted(
    run, name: str, raw: str, shown: str
) -> None:
    # visiontel's one policy: a bad variable is said once and its default used (a bad flag
    # stops the run, see above). --help shows the default the run would use.
    env = clean_env()
    env[name] = raw
    result = run("demo", "--help", env=env)
    assert result.returncode == 0, result.stderr
    assert shown in " ".join(result.stdout.split())
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, result.stderr
    assert name in warnings[0] and repr(raw) in warnings[0] and "default" in warnings[0]


def test_unknown_model_from_environment(run) -> None:
    # argparse checks choices on the command line only; the variable's value is checked too.
    env = clean_env()
    env["VISIONTEL_DEMO_MODEL"] = "yolov99"
    one_line_error(run("demo", env=env), "unknown model", "yolov99", "tinydet, ssdlite")


def test_undecodable_video_fails_at_the_source(run, tmp_path: pathlib.Path) -> None:
    pytest.importorskip(
        "cv2", reason="needs cv2: opencv-python-headless (the test extra) is missing"
    )
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00not a video" * 100)
    result = run("demo", "--source", str(video), "--output", str(tmp_path / "out"))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "frame-source: cannot open video file" in lines[0], lines
