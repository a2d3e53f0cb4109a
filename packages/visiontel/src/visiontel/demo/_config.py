"""Settings of one demo run: flags, with ``VISIONTEL_DEMO_*`` variables as their defaults."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from visiontel.demo._errors import UsageError

T = TypeVar("T")
MODELS = ("tinydet", "ssdlite")
"""Detectors `--model` can serve (built in ``visiontel.demo._zoo``)."""


@dataclass
class DemoConfig:
    frames: int = 300
    source: str = "synthetic"
    width: int = 320
    height: int = 240
    fps: float = 30.0
    model: str = "tinydet"
    model_version: str = "1.0"
    canary_version: str | None = None
    canary_fraction: float = 0.1
    output: str = "visiontel-output"
    otlp_endpoint: str | None = None
    stack: bool = False
    detector_port: int = 0
    sink_port: int = 0
    telemetry: bool = True
    device: str = "auto"
    threads: int = 1
    # Filled in by the launcher, not flags.
    run_id: str = ""
    run_dir: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DemoConfig:
        return cls(**json.loads(text))

    @property
    def versions(self) -> tuple[str, ...]:
        if self.canary_version:
            return (self.model_version, self.canary_version)
        return (self.model_version,)

    @property
    def run_path(self) -> pathlib.Path:
        return pathlib.Path(self.run_dir)


def _env(name: str, cast: Callable[[str], T], default: T) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise UsageError(
            f"{name}={raw!r} is not valid: unset it or give a {cast.__name__}"
        ) from None


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_bool.__name__ = "boolean (true/false)"


def _size(raw: str) -> tuple[int, int]:
    width, _, height = raw.lower().partition("x")
    size = int(width), int(height)
    if not (16 <= size[0] <= 7680 and 16 <= size[1] <= 4320):
        raise ValueError(raw)
    return size


_size.__name__ = "size WIDTHxHEIGHT (16..7680 x 16..4320)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``visiontel demo`` flags; each default comes from its variable."""
    d = DemoConfig()
    add = parser.add_argument
    add(
        "--frames",
        type=int,
        default=_env("VISIONTEL_DEMO_FRAMES", int, d.frames),
        help="frames to process; 0 = until the source ends or Ctrl-C (default %(default)s)",
    )
    add(
        "--source",
        default=_env("VISIONTEL_DEMO_SOURCE", str, d.source),
        help="'synthetic', a video file, a folder of images, or an rtsp:// URL "
        "(default %(default)s)",
    )
    add(
        "--size",
        type=_size,
        default=_env("VISIONTEL_DEMO_SIZE", _size, (d.width, d.height)),
        metavar="WxH",
        help="size of synthetic frames (default 320x240)",
    )
    add(
        "--fps",
        type=float,
        default=_env("VISIONTEL_DEMO_FPS", float, d.fps),
        help="frames per second the source sends; 0 = as fast as the pipeline takes them "
        "(default %(default)s)",
    )
    add(
        "--model",
        default=_env("VISIONTEL_DEMO_MODEL", str, d.model),
        choices=MODELS,
        help="detector: the demo's own 'tinydet', or torchvision's 'ssdlite' (SSDlite320 "
        "MobileNetV3, needs visiontel[torchvision]) (default %(default)s)",
    )
    add(
        "--model-version",
        default=_env("VISIONTEL_DEMO_MODEL_VERSION", str, d.model_version),
        help="version of the stable model (default %(default)s)",
    )
    add(
        "--canary-version",
        default=_env("VISIONTEL_DEMO_CANARY_VERSION", str, None),
        help="run a second model version side by side (off by default)",
    )
    add(
        "--canary-fraction",
        type=float,
        default=_env("VISIONTEL_DEMO_CANARY_FRACTION", float, d.canary_fraction),
        help="share of frames the canary model gets (default %(default)s)",
    )
    add(
        "--output",
        default=_env("VISIONTEL_DEMO_OUTPUT", str, d.output),
        help="folder for the OTLP JSON files when no endpoint is set (default %(default)s)",
    )
    add(
        "--otlp-endpoint",
        default=_env("OTEL_EXPORTER_OTLP_ENDPOINT", str, None),
        help="send OTLP here instead of writing files (default $OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    add(
        "--stack",
        action="store_true",
        default=_env("VISIONTEL_DEMO_STACK", _bool, False),
        help="send to the local collector stack of collector-config/",
    )
    add(
        "--detector-port",
        type=int,
        default=_env("VISIONTEL_DEMO_DETECTOR_PORT", int, 0),
        help="gRPC port of the detector on 127.0.0.1; 0 = a free one (default)",
    )
    add(
        "--sink-port",
        type=int,
        default=_env("VISIONTEL_DEMO_SINK_PORT", int, 0),
        help="gRPC port of the tracker on 127.0.0.1; 0 = a free one (default)",
    )
    add(
        "--no-telemetry",
        dest="telemetry",
        action="store_false",
        default=_env("VISIONTEL_DEMO_TELEMETRY", _bool, True),
        help="run the same pipeline with every instrumentation off (the benchmark baseline)",
    )
    add(
        "--device",
        default=_env("VISIONTEL_DEMO_DEVICE", str, d.device),
        choices=("auto", "cpu", "cuda"),
        help="where the detector runs (default %(default)s)",
    )
    add(
        "--threads",
        type=int,
        default=_env("VISIONTEL_DEMO_THREADS", int, d.threads),
        help="torch CPU threads in the detector; 0 = torch's choice (default %(default)s)",
    )


def from_arguments(args: argparse.Namespace) -> DemoConfig:
    config = DemoConfig(
        frames=args.frames, source=args.source, width=args.size[0], height=args.size[1],
        fps=args.fps, model=args.model, model_version=args.model_version,
        canary_version=args.canary_version, canary_fraction=args.canary_fraction,
        output=args.output,
        otlp_endpoint=args.otlp_endpoint or None, stack=args.stack,
        detector_port=args.detector_port, sink_port=args.sink_port, telemetry=args.telemetry,
        device=args.device, threads=args.threads,
    )  # fmt: skip
    _validate(config)
    return config


def _validate(config: DemoConfig) -> None:
    if config.frames < 0:
        raise UsageError("--frames must be 0 (no limit) or more")
    if config.fps < 0:
        raise UsageError("--fps must be 0 (as fast as possible) or more")
    if not 0.0 <= config.canary_fraction <= 1.0:
        raise UsageError("--canary-fraction must be between 0 and 1, e.g. 0.1")
    if config.canary_version is not None and config.canary_version == config.model_version:
        raise UsageError("--canary-version must differ from --model-version")
    for flag, port in (
        ("--detector-port", config.detector_port),
        ("--sink-port", config.sink_port),
    ):
        if not 0 <= port <= 65535:
            raise UsageError(f"{flag} must be a port number (1-65535), or 0 for a free one")
    if config.detector_port and config.detector_port == config.sink_port:
        raise UsageError("--detector-port and --sink-port must differ")
    if config.model not in MODELS:
        raise UsageError(f"unknown model {config.model!r}: pick one of {', '.join(MODELS)}")
    if config.threads < 0:
        raise UsageError("--threads must be 0 (torch's choice) or more")
