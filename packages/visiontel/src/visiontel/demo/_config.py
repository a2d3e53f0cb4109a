"""Settings of one demo run: flags, with ``VISIONTEL_DEMO_*`` variables as their defaults.

The two follow visiontel's one policy (``visiontel._support.env``): a malformed flag stops
the run with a line saying what to pass; a malformed variable (not a number, out of range,
not one of the choices) is logged once and its default used. A well-formed value that names
something that is not there (a model, a file, a camera) fails the same way from either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
from dataclasses import dataclass

from visiontel._support.env import env_bool, env_choice, env_float, env_int, env_parsed, env_str
from visiontel.demo._errors import UsageError

MODELS = ("tinydet", "ssdlite")
"""The demo's own detectors (built in ``visiontel.demo._zoo``); any other ``--model`` is an
Ultralytics one (``visiontel.demo._yolo``)."""
# Names Ultralytics' bundled yamls go by (yolov8n, yolo11s, yolov8n-seg...); the launcher's
# check looks the yaml itself up. A model loaded with --weights may be named anything.
_YOLO_NAME = re.compile(r"yolo[a-z0-9-]*")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DEVICES = ("auto", "cpu", "cuda")
FAULTS = {
    "overdetect": "the canary keeps low-score boxes: several times the detections per image",
    "slow": "the canary's forward takes 40 ms longer",
}
"""What ``--canary-fault`` can break in the canary model (``visiontel.demo._faults``)."""


@dataclass
class DemoConfig:
    frames: int = 300
    source: str = "synthetic"
    width: int = 320
    height: int = 240
    fps: float = 30.0
    model: str = "tinydet"
    weights: str | None = None
    model_version: str = "1.0"
    canary_version: str | None = None
    canary_fraction: float = 0.1
    canary_fault: str | None = None
    output: str = "visiontel-output"
    otlp_endpoint: str | None = None
    stack: bool = False
    detector_port: int = 0
    sink_port: int = 0
    telemetry: bool = True
    device: str = "auto"
    threads: int = 1
    drop_every: int = 0
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
    def ultralytics(self) -> bool:
        """True when the detector runs an Ultralytics model (``--model yolov8n``, ``--weights``)."""
        return self.weights is not None or self.model not in MODELS

    @property
    def run_path(self) -> pathlib.Path:
        return pathlib.Path(self.run_dir)


def _size(raw: str) -> tuple[int, int]:
    width, _, height = raw.lower().partition("x")
    size = int(width), int(height)
    if not (16 <= size[0] <= 7680 and 16 <= size[1] <= 4320):
        raise ValueError(raw)
    return size


_size.__name__ = "size WIDTHxHEIGHT (16..7680 x 16..4320)"


def _env_optional(name: str) -> str | None:
    return env_str(name, "") or None


def _env_fault() -> str | None:
    # "none" is listed so that the warning for a bad value names every accepted one.
    fault = env_choice("VISIONTEL_DEMO_CANARY_FAULT", "none", ("none", *FAULTS))
    return None if fault == "none" else fault


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``visiontel demo`` flags; each default comes from its variable."""
    d = DemoConfig()
    add = parser.add_argument
    add(
        "--frames",
        type=int,
        default=env_int("VISIONTEL_DEMO_FRAMES", d.frames, minimum=0),
        help="frames to process; 0 = until the source ends or Ctrl-C (default %(default)s)",
    )
    add(
        "--source",
        default=env_str("VISIONTEL_DEMO_SOURCE", d.source),
        help="'synthetic', a video file, a folder of images, or an rtsp:// URL "
        "(default %(default)s)",
    )
    size = env_parsed("VISIONTEL_DEMO_SIZE", (d.width, d.height), _size, _size.__name__)
    add(
        "--size",
        type=_size,
        default=size,
        metavar="WxH",
        help=f"size of synthetic frames (default {size[0]}x{size[1]})",
    )
    add(
        "--fps",
        type=float,
        default=env_float("VISIONTEL_DEMO_FPS", d.fps, minimum=0.0),
        help="frames per second the source sends; 0 = as fast as the pipeline takes them "
        "(default %(default)s)",
    )
    add(
        "--model",
        # None: tinydet, or with --weights the checkpoint's name (from_arguments decides).
        default=_env_optional("VISIONTEL_DEMO_MODEL"),
        help="detector: the demo's own 'tinydet', torchvision's 'ssdlite' (SSDlite320 "
        "MobileNetV3, needs visiontel[torchvision]), or an Ultralytics YOLO model built from "
        "the yaml Ultralytics ships, e.g. 'yolov8n', 'yolov8s', 'yolo11n' (random weights, "
        f"so a low conf; needs visiontel[yolo]) (default {d.model}; with --weights, the "
        "checkpoint's file name)",
    )
    add(
        "--weights",
        default=_env_optional("VISIONTEL_DEMO_WEIGHTS"),
        metavar="PATH",
        help="an Ultralytics checkpoint (e.g. yolov8n.pt) for the detector instead of "
        "random weights; --model then names it (default: none)",
    )
    add(
        "--model-version",
        default=env_str("VISIONTEL_DEMO_MODEL_VERSION", d.model_version),
        help="version of the stable model (default %(default)s)",
    )
    add(
        "--canary-version",
        default=_env_optional("VISIONTEL_DEMO_CANARY_VERSION"),
        help="run a second model version side by side (off by default)",
    )
    add(
        "--canary-fraction",
        type=float,
        default=env_float(
            "VISIONTEL_DEMO_CANARY_FRACTION", d.canary_fraction, minimum=0.0, maximum=1.0
        ),
        help="share of frames the canary model gets (default %(default)s)",
    )
    add(
        "--canary-fault",
        default=_env_fault(),
        metavar="FAULT",
        help="break the canary model on purpose, to see the canary gates catch it: "
        "'overdetect' (many more detections per image) or 'slow' (40 ms more per forward) "
        "(default: none)",
    )
    add(
        "--output",
        default=env_str("VISIONTEL_DEMO_OUTPUT", d.output),
        help="folder for the OTLP JSON files when no endpoint is set (default %(default)s)",
    )
    add(
        "--otlp-endpoint",
        default=_env_optional("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="send OTLP here instead of writing files (default $OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    add(
        "--stack",
        action="store_true",
        default=env_bool("VISIONTEL_DEMO_STACK", False),
        help="send to the local collector stack of collector-config/",
    )
    add(
        "--detector-port",
        type=int,
        default=env_int("VISIONTEL_DEMO_DETECTOR_PORT", 0, minimum=0, maximum=65535),
        help="gRPC port of the detector on 127.0.0.1; 0 = a free one (default)",
    )
    add(
        "--sink-port",
        type=int,
        default=env_int("VISIONTEL_DEMO_SINK_PORT", 0, minimum=0, maximum=65535),
        help="gRPC port of the tracker on 127.0.0.1; 0 = a free one (default)",
    )
    add(
        "--no-telemetry",
        dest="telemetry",
        action="store_false",
        default=env_bool("VISIONTEL_DEMO_TELEMETRY", True),
        help="run the same pipeline with every instrumentation off (the benchmark baseline)",
    )
    add(
        "--device",
        default=env_choice("VISIONTEL_DEMO_DEVICE", d.device, _DEVICES),
        choices=_DEVICES,
        help="where the detector runs (default %(default)s)",
    )
    add(
        "--threads",
        type=int,
        default=env_int("VISIONTEL_DEMO_THREADS", d.threads, minimum=0),
        help="torch CPU threads in the detector; 0 = torch's choice (default %(default)s)",
    )
    add(
        "--drop-every",
        type=int,
        default=env_int("VISIONTEL_DEMO_DROP_EVERY", d.drop_every, minimum=0),
        metavar="N",
        help="the source skips every N-th sequence number, as a camera that loses frames "
        "would; the closing report shows them lost at the detector and the tracker "
        "(default %(default)s: none)",
    )


def from_arguments(args: argparse.Namespace) -> DemoConfig:
    config = DemoConfig(
        frames=args.frames, source=args.source, width=args.size[0], height=args.size[1],
        fps=args.fps, model=_model_name(args.model, args.weights), weights=args.weights or None,
        model_version=args.model_version,
        canary_version=args.canary_version, canary_fraction=args.canary_fraction,
        canary_fault=args.canary_fault or None, output=args.output,
        otlp_endpoint=args.otlp_endpoint or None, stack=args.stack,
        detector_port=args.detector_port, sink_port=args.sink_port, telemetry=args.telemetry,
        device=args.device, threads=args.threads, drop_every=args.drop_every,
    )  # fmt: skip
    _validate(config)
    return config


def _model_name(model: str | None, weights: str | None) -> str:
    if model:
        return model
    return pathlib.PurePath(weights).stem if weights else DemoConfig.model


def _validate(config: DemoConfig) -> None:
    if config.frames < 0:
        raise UsageError("--frames must be 0 (no limit) or more")
    if config.fps < 0:
        raise UsageError("--fps must be 0 (as fast as possible) or more")
    if not 0.0 <= config.canary_fraction <= 1.0:
        raise UsageError("--canary-fraction must be between 0 and 1, e.g. 0.1")
    if config.canary_version is not None and config.canary_version == config.model_version:
        raise UsageError("--canary-version must differ from --model-version")
    _validate_fault(config)
    for flag, port in (
        ("--detector-port", config.detector_port),
        ("--sink-port", config.sink_port),
    ):
        if not 0 <= port <= 65535:
            raise UsageError(f"{flag} must be a port number (1-65535), or 0 for a free one")
    if config.detector_port and config.detector_port == config.sink_port:
        raise UsageError("--detector-port and --sink-port must differ")
    _validate_model(config)
    if config.threads < 0:
        raise UsageError("--threads must be 0 (torch's choice) or more")
    if config.drop_every < 0 or config.drop_every == 1:
        raise UsageError(
            "--drop-every must be 0 (drop nothing) or 2 or more (1 would drop every frame), "
            "e.g. --drop-every 10"
        )


def _validate_fault(config: DemoConfig) -> None:
    fault = config.canary_fault
    if fault is None:
        return
    if fault not in FAULTS:
        choices = "; ".join(f"{name} ({effect})" for name, effect in FAULTS.items())
        raise UsageError(
            f"--canary-fault {fault!r} is not a fault: pick one of {choices}, or leave it out"
        )
    if config.canary_version is None:
        raise UsageError(
            "--canary-fault breaks the canary model only: add --canary-version, e.g. "
            "--canary-version 2.0-canary"
        )
    if config.weights is not None or config.model not in MODELS:
        raise UsageError(
            f"--canary-fault works with the demo's own models ({', '.join(MODELS)}), not with "
            f"--model {config.model}: leave --canary-fault out, or pick --model tinydet"
        )


def _validate_model(config: DemoConfig) -> None:
    if config.weights is None:
        if config.model not in MODELS and not _YOLO_NAME.fullmatch(config.model):
            raise UsageError(
                f"unknown model {config.model!r}: pick one of {', '.join(MODELS)}, or an "
                "Ultralytics YOLO model such as yolov8n or yolo11n"
            )
        return
    if config.model in MODELS:
        raise UsageError(
            f"--weights loads an Ultralytics checkpoint, which --model {config.model} does not "
            "take: leave --model out, or name the checkpoint's model, e.g. --model yolov8n"
        )
    if not _MODEL_NAME.fullmatch(config.model):
        raise UsageError(
            f"{config.model!r} cannot name the model of --weights (letters, digits, '.', '_', "
            "'-'): name it with --model, e.g. --model yolov8n"
        )
