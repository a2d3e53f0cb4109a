"""`--stack`: the demo starts collector-config's local stack and ships the run through it.

Needs the stack's binaries (otelcol-visiontel, Jaeger, Prometheus, Zipkin's jar), which
collector-config/toolchain.py builds and the `stack`/`demo` nox sessions pass in
VISIONTEL_OTELCOL, VISIONTEL_JAEGER, VISIONTEL_PROMETHEUS and VISIONTEL_ZIPKIN (and
VictoriaLogs, the log store, in VISIONTEL_VICTORIALOGS). Without them
the only thing checked is the one-line message saying what is missing.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

import pytest
from demo_support import clean_env, run_visiontel

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARIES = (
    "VISIONTEL_OTELCOL",
    "VISIONTEL_JAEGER",
    "VISIONTEL_PROMETHEUS",
    "VISIONTEL_ZIPKIN",
    "VISIONTEL_VICTORIALOGS",
)
FRAMES = 12


def test_stack_without_binaries_says_what_is_missing(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in clean_env().items() if k not in BINARIES}
    env["VISIONTEL_STACK_SCRIPT"] = str(ROOT / "collector-config" / "stack" / "stack.py")
    result = run_visiontel("demo", "--stack", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "VISIONTEL_OTELCOL" in line and "nox -s demo -- --stack" in line


@pytest.mark.e2e
def test_stack_receives_the_run(tmp_path: pathlib.Path) -> None:
    missing = [v for v in BINARIES if not os.access(os.environ.get(v, ""), os.X_OK)]
    if missing:
        pytest.skip(
            f"needs stack: {', '.join(missing)} not set: the stack's binaries come from nox "
            "(`nox -s stack`)"
        )
    env = clean_env()
    env.update({v: os.environ[v] for v in BINARIES})
    result = run_visiontel(
        "demo", "--stack", "--frames", str(FRAMES), "--fps", "0", cwd=ROOT,
        env={**env, "VISIONTEL_DEMO_OUTPUT": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Telemetry went to http://127.0.0.1:" in result.stdout
    # The trace UI that works (Zipkin's Lens), and one frame's trace in it.
    assert "Zipkin UI   http://127.0.0.1:" in result.stdout
    assert re.search(
        r"a frame     http://127\.0\.0\.1:\d+/zipkin/traces/[0-9a-f]{32}\n", result.stdout
    )
    (run_dir,) = tmp_path.iterdir()
    # The stack's collector sent the logs pipeline to its VictoriaLogs, which keeps them in
    # the run's folder: the demo stopped the stack, so open that store again and read the
    # tracker's records back through its query API (their stop drained the collector first).
    sys.path.insert(0, str(ROOT / "collector-config" / "stack"))
    import stack as stack_module

    store = stack_module.Stack(run_dir / "stack")
    store.start_victorialogs()
    try:
        records = store.victorialogs.query('"service.name":="tracker"')
    finally:
        store.stop()
    assert "Logs UI     http://127.0.0.1:" in result.stdout
    bodies = [record["_msg"] for record in records]
    assert sum(body.startswith("frame ") for body in bodies) == FRAMES, bodies
