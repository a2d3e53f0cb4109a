"""Entry point of one demo service process: ``python -m visiontel.demo._child ROLE CONFIG``.

Talks to the launcher through stdout, one line per event (``READY port``, ``DONE seq
latency_ns detections version``, ``GPU ...``, ``END count``, ``ERROR message``); anything
else a library prints goes to stderr, which the launcher keeps in a file of the run.

A service that sends to another (source to detector, detector to tracker) reads that
one's port from stdin (``PORT port``): the launcher writes it once the other said
``READY port``, the port it bound itself (port 0 unless a flag gave one).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from types import FrameType

from visiontel.demo._config import DemoConfig
from visiontel.demo._errors import DemoError, port_in_use
from visiontel.demo._telemetry import Telemetry, setup

_print_lock = threading.Lock()
_first_frame_cpu: float | None = None
stop = threading.Event()
"""Set when the source should stop reading and end the stream (Ctrl-C, SIGTERM)."""


def say(*fields: object) -> None:
    """One protocol line to the launcher."""
    line = " ".join(str(f) for f in fields)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def upstream_port(service: str) -> int:
    """The port ``service`` serves on, as the launcher passes it on (see the docstring)."""
    fields = sys.stdin.readline().split()
    if len(fields) != 2 or fields[0] != "PORT" or not fields[1].isdigit():
        # EOF: the launcher is gone (or stopping the run) before the other one served.
        raise DemoError(f"the launcher did not pass on the {service}'s port")
    return int(fields[1])


def bind_error(service: str, port: int, flag: str) -> DemoError:
    """What a service says when its server cannot bind ``port`` (from ``flag``, or 0)."""
    if port:
        return port_in_use(port, flag)  # taken since the launcher's check: the same line
    return DemoError(f"the {service} found no free port on 127.0.0.1 to listen on")


def first_frame() -> None:
    """Mark the start of steady state: CPU time from here on is reported at exit."""
    global _first_frame_cpu
    if _first_frame_cpu is None:
        _first_frame_cpu = time.process_time()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if stop.is_set() or signum == signal.SIGTERM:
        raise SystemExit(128 + signum)  # second request, or a hard stop: unwind and flush
    stop.set()


def main(argv: list[str]) -> int:
    role, raw = argv
    config = DemoConfig.from_json(raw)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGTERM, _on_signal)
    # Ctrl-C reaches every process of the terminal's group: only the source acts on it
    # (it ends the stream); the others finish the frames already sent, then exit.
    signal.signal(signal.SIGINT, _on_signal if role == "source" else signal.SIG_IGN)
    telemetry = Telemetry()
    try:
        # Inside the try: a set-up problem (an exporter package missing) is an ERROR line.
        telemetry = setup(role, config.run_id, config.run_path, enabled=config.telemetry)
        if role == "source":
            from visiontel.demo._source import run
        elif role == "detector":
            from visiontel.demo._detector import run
        else:
            from visiontel.demo._sink import run
        run(config, telemetry)
        return 0
    except DemoError as exc:
        say("ERROR", str(exc))
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        telemetry.shutdown()
        if _first_frame_cpu is not None:
            # All threads of the process (exporters included), start-up excluded.
            say("CPU", f"{time.process_time() - _first_frame_cpu:.4f}")


if __name__ == "__main__":
    # Run the copy the services import (visiontel.demo._child), not this __main__ one,
    # so `stop` and the CPU mark are the same objects for both.
    from visiontel.demo._child import main as child_main

    sys.exit(child_main(sys.argv[1:]))
