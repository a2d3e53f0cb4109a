"""``--stack``: run the demo against the local stack of collector-config/.

The stack (otelcol-visiontel with collector-config/local.yaml, Jaeger, Prometheus, and
Zipkin, whose UI shows the frame traces; on loopback ports it picks, and picks again
should one be taken) is started by
``collector-config/stack/stack.py`` from a visiontel checkout, with binaries that
``collector-config/toolchain.py`` builds or fetches once (``nox -s demo -- --stack`` does
both). This module only finds and drives it; the addresses it prints are read from the
started stack.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import urllib.parse
from typing import Any

from visiontel._support.env import env_str
from visiontel.demo._errors import DemoError, UsageError
from visiontel.demo._telemetry import SERVICE_NAMES

_SCRIPT = pathlib.Path("collector-config", "stack", "stack.py")
BINARIES = (
    "VISIONTEL_OTELCOL",
    "VISIONTEL_JAEGER",
    "VISIONTEL_PROMETHEUS",
    "VISIONTEL_VICTORIALOGS",
)
JARS = ("VISIONTEL_ZIPKIN",)  # run with the java on PATH: a file, not an executable
_HOW = "run `nox -s demo -- --stack` from a visiontel checkout, which builds them"


def find_script(start: pathlib.Path | None = None) -> pathlib.Path | None:
    """collector-config/stack/stack.py in the current directory or one above it."""
    explicit = env_str("VISIONTEL_STACK_SCRIPT", "")
    if explicit:
        return pathlib.Path(explicit) if pathlib.Path(explicit).is_file() else None
    here = (start or pathlib.Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / _SCRIPT).is_file():
            return folder / _SCRIPT
    return None


def check() -> pathlib.Path:
    """Everything ``--stack`` needs is there, or one line saying what is missing."""
    script = find_script()
    if script is None:
        raise UsageError(
            f"--stack needs {_SCRIPT} from a visiontel checkout: run from the checkout "
            "(`nox -s demo -- --stack`), or set OTEL_EXPORTER_OTLP_ENDPOINT to your collector"
        )
    missing = [v for v in BINARIES if not os.access(env_str(v, ""), os.X_OK)]
    missing += [v for v in JARS if not os.path.isfile(env_str(v, ""))]
    if missing:
        raise UsageError(f"--stack needs {', '.join(missing)} (the stack's binaries): {_HOW}")
    return script


class LocalStack:
    """The running stack; ``endpoint`` is its collector's OTLP/HTTP address."""

    def __init__(self, script: pathlib.Path, workdir: pathlib.Path) -> None:
        spec = importlib.util.spec_from_file_location("visiontel_collector_stack", script)
        if spec is None or spec.loader is None:
            raise UsageError(f"--stack: cannot load {script}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        workdir.mkdir(parents=True, exist_ok=True)
        self._stack: Any = module.Stack(workdir)
        try:
            self._stack.start()
        except (RuntimeError, OSError, SystemExit) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DemoError(f"the local stack did not start ({first}): see {workdir}") from None
        self.endpoint = f"http://{self._stack.otlp_http}"

    def describe(self) -> list[str]:
        return describe(self._stack)

    def stop(self) -> None:
        self._stack.stop()


def describe(stack: Any) -> list[str]:
    """The lines ``--stack`` prints after a run: the address of each UI a person opens
    (stack.py's ``Stack``, started)."""
    services = tuple(SERVICE_NAMES.values())
    lines = [f"  Zipkin UI   {stack.lens_url()}  ({', '.join(services)})"]
    try:
        # The run's last spans may still sit in the collector's batch: wait a little.
        frame = stack.frame_trace(services, timeout=10)
    except OSError:
        frame = None
    if frame:
        lines.append(f"  a frame     {stack.lens_url(frame)}")
    lines += [
        f"  Prometheus  http://{stack.prometheus}  (metrics visiontel_*)",
        f"  Logs UI     {stack.victorialogs.ui_url}  (VictoriaLogs, LogsQL)",
    ]
    if frame:
        # vmui reads its query from the address: the same frame's log records.
        query = urllib.parse.quote(f'trace_id:="{frame}"', safe="")
        lines.append(f"  its logs    {stack.victorialogs.ui_url}#/?query={query}")
    return lines
