"""``visiontel``: the command of the meta distribution.

visiontel demo [flags]      the instrumented pipeline (see ``visiontel demo --help``)
visiontel --version         versions of every visiontel distribution installed
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

from visiontel.cli.version import __version__

_DISTRIBUTIONS = ("visiontel", "visiontel-torch", "visiontel-gpu", "visiontel-propagation")
_DEMO_MODULES = (
    "grpc",
    "numpy",
    "torch",
    "opentelemetry.sdk",
    "opentelemetry.exporter.otlp",
    "opentelemetry.exporter.otlp.json.file",
    "opentelemetry.instrumentation.logging",
)


def _versions() -> str:
    found = []
    for name in _DISTRIBUTIONS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return "\n".join(found)


def _missing_demo_modules() -> list[str]:
    import importlib.util

    missing = []
    for module in _DEMO_MODULES:
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        except ModuleNotFoundError:
            missing.append(module)
    return missing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visiontel", description="OpenTelemetry for computer-vision inference."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the instrumented three-service detection pipeline",
        description="Run a frame source, a torch detector and a tracker as three processes "
        "talking gRPC, fully instrumented. Without an OTLP endpoint, telemetry goes to OTLP "
        "JSON files and a report is printed at the end.",
    )
    from visiontel.demo._config import add_arguments

    add_arguments(demo)
    commands.add_parser("versions", help="list the installed visiontel distributions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from visiontel.demo._errors import DemoError

    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command == "versions":
            print(_versions())
            return 0
        if args.command != "demo":
            parser.error("give a command: demo (the instrumented pipeline) or versions")
        missing = _missing_demo_modules()
        if missing:
            print(
                f'visiontel demo: missing {", ".join(missing)}: pip install "visiontel[demo]"',
                file=sys.stderr,
            )
            return 2
        from visiontel.demo._config import from_arguments
        from visiontel.demo._launch import run

        return run(from_arguments(args))
    except DemoError as exc:
        print(f"visiontel demo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
