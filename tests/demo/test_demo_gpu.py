"""The GPU summary, with visiontel-gpu reading a simulated NVML library (no GPU needed).

visiontel.gpu.testing compiles a stand-in libnvidia-ml.so.1 with the C compiler; the
detector's GPUInstrumentor loads it like the driver's library, so the run exports hw.gpu.*
metrics and the report prints their last reading instead of "no GPU found".
"""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
from demo_support import clean_env, run_visiontel

if shutil.which("cc") is None and shutil.which("gcc") is None:
    pytest.skip(
        "needs cc: no C compiler (cc or gcc) to build the NVML simulator; install one",
        allow_module_level=True,
    )

from visiontel.gpu.testing import NvmlSimulator


def test_gpu_summary_from_simulated_nvml(tmp_path: pathlib.Path) -> None:
    sim = NvmlSimulator.build(tmp_path / "sim")
    sim.write({"device_count": 1, **sim.gpu(0)})
    env = {**clean_env(), **sim.env()}
    result = run_visiontel("demo", "--frames", "10", "--fps", "0", cwd=tmp_path, env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "no GPU found" not in result.stdout
    summary = result.stdout[result.stdout.index("GPU (last reading):") :].splitlines()[1:]
    assert any("hw.gpu.utilization" in line for line in summary), summary
    assert any("hw.gpu.memory.usage" in line for line in summary), summary
    (run_dir,) = (tmp_path / "visiontel-output").iterdir()
    names = {
        metric["name"]
        for line in (run_dir / "detector" / "metrics.jsonl").read_text().splitlines()
        for rm in json.loads(line)["resourceMetrics"]
        for scope in rm["scopeMetrics"]
        for metric in scope["metrics"]
    }
    assert {"hw.gpu.utilization", "hw.gpu.memory.usage"} <= names
