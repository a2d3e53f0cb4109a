"""The services bind their own ports: port 0 unless --detector-port/--sink-port give one.

The launcher picks no port (a port picked and released can be taken before the service
binds it). Each service binds, says the port it got, and only then does the launcher pass
that port to the service sending there and print it. A port given with a flag that is
taken between the launcher's check and the service's bind is refused by the service with
the check's own line.
"""

from __future__ import annotations

import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from demo_support import clean_env, one_line_error, visiontel_command

_STARTUP_S = 180.0  # the detector imports torch on two busy cores


def _ephemeral_range() -> tuple[int, int] | None:
    try:
        low, high = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except OSError:
        return None
    return int(low), int(high)


def _next_line(lines: queue.Queue[str | None], deadline: float) -> str:
    left = deadline - time.monotonic()
    try:
        line = lines.get(timeout=max(left, 0.01))
    except queue.Empty:
        raise AssertionError(f"the demo said nothing more within {_STARTUP_S:.0f}s") from None
    if line is None:
        raise AssertionError("the demo ended its output early")
    return line


def test_services_listen_on_the_ports_they_report(tmp_path: pathlib.Path) -> None:
    stderr = (tmp_path / "stderr.txt").open("w")
    command = [*visiontel_command(), "demo", "--frames", "0", "--fps", "20", "--no-telemetry"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + _STARTUP_S
        while not seen or not seen[-1].startswith("listening: "):
            seen.append(_next_line(lines, deadline))
        match = re.fullmatch(
            r"listening: detector 127\.0\.0\.1:(\d+), tracker 127\.0\.0\.1:(\d+)\n", seen[-1]
        )
        assert match, seen[-1]
        ports = [int(p) for p in match.groups()]
        assert 0 not in ports and ports[0] != ports[1], ports
        ephemeral = _ephemeral_range()
        if ephemeral is not None:
            # Where the kernel puts a port-0 bind; a port chosen ahead would be anywhere.
            assert all(ephemeral[0] <= p <= ephemeral[1] for p in ports), (ports, ephemeral)
        for port in ports:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=10)
        # The source got the detector's port: frames reach the tracker.
        while not re.match(r"frames [1-9]", seen[-1]):
            seen.append(_next_line(lines, deadline))
    finally:
        process.send_signal(signal.SIGINT)  # the source ends the stream, the rest drain
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        reader.join(10)
        stderr.close()
    rest = []
    while not lines.empty():
        rest.append(lines.get() or "")
    output = "".join(seen + rest)
    assert code == 0, (code, output, (tmp_path / "stderr.txt").read_text())


# The launcher's check is made to pass, as when the port is taken right after it.
_RACE = (
    "import sys\n"
    "from visiontel.demo import _preflight\n"
    "_preflight._port_free = lambda port: True\n"
    "from visiontel.cli._main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("flag", ["--sink-port", "--detector-port"])
def test_port_taken_after_the_check_gets_the_same_line(
    tmp_path: pathlib.Path, busy_port: int, flag: str
) -> None:
    command = [sys.executable, "-c", _RACE, "demo", "--frames", "5", "--no-telemetry"]
    result = subprocess.run(
        [*command, flag, str(busy_port)],
        check=False, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    line = one_line_error(result)
    assert line == (
        f"visiontel demo: error: port {busy_port} on 127.0.0.1 is in use ({flag}): stop what "
        f"holds it, pick another {flag}, or leave {flag} out to use a free port"
    )
