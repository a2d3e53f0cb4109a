"""Frame sources: synthetic video, a video file, a folder of images, an RTSP camera.

Every source yields H x W x 3 uint8 RGB arrays. Decoding files and cameras needs OpenCV
(the ``video`` extra); synthetic frames need only numpy. Problems a user can fix come out
as :class:`SourceError` with a one-line message saying what to do.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from visiontel._support.redact import redact_url
from visiontel.demo._net import probe

Image = npt.NDArray[np.uint8]
SYNTHETIC = "synthetic"
IMAGE_SUFFIXES = frozenset((".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff"))
_STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}
__all__ = ["SourceError", "check", "describe", "open_source", "redact_url", "synthetic"]
_INSTALL_VIDEO = 'reading video needs OpenCV: pip install "visiontel[video]"'


class SourceError(Exception):
    """A frame source that cannot be used; the message says what to do."""


def is_stream(spec: str) -> bool:
    return spec.split("://", 1)[0].lower() in _STREAM_SCHEMES and "://" in spec


def describe(spec: str) -> tuple[str, str]:
    """(kind, printable name) of a source spec; the name is safe to log and export."""
    if spec == SYNTHETIC:
        return "synthetic", SYNTHETIC
    if is_stream(spec):
        return "stream", redact_url(spec)
    path = pathlib.Path(spec)
    return ("folder" if path.is_dir() else "file"), str(path)


def check(spec: str, timeout: float = 3.0) -> None:
    """Fail fast, before any process starts, on a source that cannot work."""
    if spec == SYNTHETIC:
        return
    if is_stream(spec):
        safe = redact_url(spec)
        try:
            reason = probe(spec, _DEFAULT_PORTS, timeout)
        except ValueError as exc:
            raise SourceError(f"camera URL {safe} {exc}: e.g. rtsp://camera:554/stream") from None
        if reason is not None:
            raise SourceError(
                f"cannot reach camera {safe} ({reason}): check the URL, that the camera is "
                "on and reachable, or leave --source out for synthetic frames"
            ) from None
        _cv2()
        return
    path = pathlib.Path(spec)
    if not path.exists():
        raise SourceError(
            f"no such video file or image folder: {spec}: check the path, or leave --source "
            "out for synthetic frames"
        )
    if path.is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise SourceError(f"{spec} holds no images ({suffixes}): point --source at images")
    _cv2()


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise SourceError(_INSTALL_VIDEO) from None
    return cv2


def synthetic(width: int, height: int, seed: int = 0) -> Iterator[Image]:
    """A dark noisy scene with a few coloured boxes bouncing around, forever."""
    rng = np.random.default_rng(seed)
    # A small pool of noise frames, reused, so generation costs a copy per frame.
    noise = rng.integers(0, 48, size=(4, height, width, 3), dtype=np.uint8)
    count = 5
    size = rng.uniform(0.08, 0.25, size=(count, 2)) * (width, height)
    position = rng.uniform(0, 1, size=(count, 2)) * ((width, height) - size)
    velocity = rng.uniform(-4, 4, size=(count, 2)) * (width / 320)
    colour = rng.integers(96, 256, size=(count, 3), dtype=np.uint8)
    tick = 0
    while True:
        image = noise[tick % len(noise)].copy()
        position += velocity
        for axis, limit in ((0, width), (1, height)):
            low = position[:, axis] < 0
            high = position[:, axis] + size[:, axis] > limit
            velocity[low | high, axis] *= -1
            position[:, axis] = np.clip(position[:, axis], 0, limit - size[:, axis])
        for (x, y), (w, h), rgb in zip(position.astype(int), size.astype(int), colour, strict=True):
            image[y : y + h, x : x + w] = rgb
        tick += 1
        yield image


def _capture(spec: str) -> Iterator[Image]:
    cv2 = _cv2()
    capture = cv2.VideoCapture(spec)
    try:
        if not capture.isOpened():
            kind, name = describe(spec)
            what = "camera stream" if kind == "stream" else "video file"
            raise SourceError(f"cannot open {what} {name}: check that it is a video OpenCV reads")
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def _folder(path: pathlib.Path) -> Iterator[Image]:
    cv2 = _cv2()
    for file in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            continue  # not an image after all: skip it like a dropped frame
        yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def open_source(spec: str, width: int, height: int) -> Iterator[Image]:
    """Frames of ``spec``; synthetic frames are ``width`` x ``height``."""
    if spec == SYNTHETIC:
        return synthetic(width, height)
    if is_stream(spec):
        return _capture(spec)
    path = pathlib.Path(spec)
    return _folder(path) if path.is_dir() else _capture(str(path))
