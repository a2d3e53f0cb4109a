"""The Jetson (Tegra) backend on fabricated sysfs/procfs trees (jetson_trees.py): what it
reads on Orin, Xavier and Nano layouts, through the real GPUInstrumentor and the SDK's
in-memory reader, and under `visiontel-gpu serve` as a subprocess scraped over loopback.
Nothing of ours is mocked: the backend reads the files the trees hold."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from gpu_test_helpers import GUARD_S, Metrics, eventually, point
from jetson_trees import BOARDS, JetsonTree, break_read, mend_read, orin, xavier
from test_gpu_serve import Lines, serve_command

from visiontel.gpu import GPUInstrumentor
from visiontel.gpu._backend import BackendUnavailable, open_backend, resource_attributes
from visiontel.gpu._config import GPUConfig
from visiontel.gpu._jetson import JetsonBackend
from visiontel.gpu._serve import _parser

ERRORS = "visiontel.gpu.collection.errors"
Points = dict[str, list[tuple[dict[str, Any], float]]]


@pytest.fixture
def jetson(metrics: Metrics) -> Iterator[tuple[GPUInstrumentor, Metrics]]:
    inst = GPUInstrumentor()
    yield inst, metrics
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()


def instrument(inst: GPUInstrumentor, metrics: Metrics, tree: JetsonTree) -> None:
    # A long interval: the tests sweep with refresh(), so values change only when they say.
    inst.instrument(
        meter_provider=metrics.provider,
        backend="jetson",
        sysfs_root=str(tree.root),
        interval=600,
        events=False,
    )
    assert inst.devices == (tree.hw_id,)


def sweep(inst: GPUInstrumentor, metrics: Metrics) -> Points:
    assert inst.refresh(GUARD_S)
    return metrics.collect()


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_readings_reach_the_hw_metrics(board, tmp_path, jetson):
    inst, metrics = jetson
    tree = BOARDS[board](tmp_path)
    instrument(inst, metrics, tree)
    points = sweep(inst, metrics)
    e = tree.expected

    attrs = points["hw.gpu.utilization"][0][0]
    assert attrs["hw.id"] == tree.hw_id and attrs["hw.model"] == tree.model
    assert attrs["hw.driver_version"] == tree.driver_version and attrs["hw.vendor"] == "NVIDIA"
    assert point(points, "hw.gpu.utilization", **{"hw.gpu.task": "general"}) == pytest.approx(
        e["utilization.general"]
    )
    assert point(points, "hw.gpu.utilization", **{"hw.gpu.task": "encoder"}) is None
    assert point(points, "hw.gpu.memory.limit") == e["memory.limit"]
    assert point(points, "hw.gpu.memory.usage") == e["memory.used"]
    assert point(points, "hw.gpu.memory.utilization") == pytest.approx(
        e["memory.used"] / e["memory.limit"]
    )
    assert point(points, "nvidia.jetson.memory.nvmap.usage") == e.get("nvmap")
    assert point(points, "hw.temperature", **{"hw.sensor_location": "gpu"}) == pytest.approx(
        e["temperature.gpu"]
    )
    zones = {a["nvidia.jetson.thermal_zone"]: v for a, v in points["nvidia.jetson.temperature"]}
    assert zones == pytest.approx(tree.zones)  # offline and PMIC placeholder zones left out
    rails = {a["nvidia.jetson.rail"]: v for a, v in points["nvidia.jetson.rail.power"]}
    assert rails == pytest.approx(tree.rails)  # NC channels and shunt sums left out
    assert tree.gpu_rail is not None
    assert point(points, "hw.power", **{"hw.type": "gpu"}) == pytest.approx(
        tree.rails[tree.gpu_rail]
    )
    # instrument() swept once, refresh() once more: the energy of the time between them.
    energy = point(points, "hw.energy", **{"hw.type": "gpu"})
    assert energy is not None and 0 < energy < tree.rails[tree.gpu_rail] * GUARD_S
    clock = "nvidia.gpu.clock.speed"
    assert point(points, clock, **{"nvidia.gpu.clock.domain": "sm"}) == e["clock.sm"]
    assert point(points, clock, **{"nvidia.gpu.clock.domain": "memory"}) is None
    limit = "nvidia.jetson.gpu.frequency.limit"
    assert point(points, limit, **{limit: "min"}) == e["min"]
    assert point(points, limit, **{limit: "max"}) == e["max"]
    assert point(points, "nvidia.jetson.emc.frequency") == e["emc.frequency"]
    assert point(points, "nvidia.jetson.emc.utilization") == pytest.approx(e["emc.utilization"])
    assert point(points, "hw.status", **{"hw.state": "ok"}) == 1
    assert ERRORS not in points  # every node read
    for nvml_only in ("hw.gpu.io", "hw.errors", "nvidia.gpu.clock.event_reason"):
        assert nvml_only not in points


def test_resource_attributes_and_identity(tmp_path):
    tree = orin(tmp_path / "a")
    backend = JetsonBackend(str(tree.root))
    assert resource_attributes(backend) == {
        "nvidia.gpu.count": 1,
        "nvidia.gpu.models": ["NVIDIA Jetson AGX Orin Developer Kit"],
        "nvidia.gpu.driver_version": "35.4.1",
    }
    # hw.id comes from the device tree, so a restart (a new backend) keeps it.
    assert JetsonBackend(str(tree.root)).devices == backend.devices
    # A host's /proc mounted elsewhere: its device-tree link points outside the root, and
    # the same properties are read from sys/firmware/devicetree/base.
    (tree.root / "proc/device-tree").rename(tree.root / "dt")
    (tree.root / "sys/firmware/devicetree").mkdir(parents=True)
    (tree.root / "dt").rename(tree.root / "sys/firmware/devicetree/base")
    (tree.root / "proc/device-tree").symlink_to("/nonexistent/devicetree/base")
    assert JetsonBackend(str(tree.root)).devices == backend.devices
    # Without a release file the driver version says so rather than guess.
    (tree.root / "etc/nv_tegra_release").unlink()
    assert JetsonBackend(str(tree.root)).driver_version == "unknown"


def test_values_follow_the_files_and_energy_integrates_power(tmp_path):
    tree = orin(tmp_path)
    backend = JetsonBackend(str(tree.root))
    gpu_power = tree.rails["VDD_GPU_SOC"]  # 6.0288 W

    first = backend.sweep()
    second = backend.sweep()
    dt = second.taken_at - first.taken_at
    readings = second.devices[0].readings
    assert readings["energy"] == pytest.approx(gpu_power * dt)
    assert readings["jetson.rail.energy/VDD_GPU_SOC"] == readings["energy"]

    tree.set("ma:VDD_GPU_SOC", 2400)  # power doubles
    tree.set("load", 875)
    tree.set("gpu_temp", 61250)
    third = backend.sweep()
    readings = third.devices[0].readings
    doubled = 5024 * 2400 / 1e6
    assert readings["power"] == pytest.approx(doubled)
    assert readings["utilization.general"] == pytest.approx(0.875)
    assert readings["temperature.gpu"] == 61.25
    # The interval between sweeps counts the mean of its two ends (trapezoid).
    step = (gpu_power + doubled) / 2 * (third.taken_at - second.taken_at)
    assert readings["energy"] == pytest.approx(gpu_power * dt + step)

    # Power that reads negative (a noisy zero) never makes the counter go down.
    tree.set("ma:VDD_GPU_SOC", -5000)
    before = readings["energy"]
    for _ in range(3):
        energy = backend.sweep().devices[0].readings["energy"]
        assert energy >= before
        before = energy


def test_metrics_follow_between_sweeps_and_energy_only_grows(tmp_path, jetson):
    inst, metrics = jetson
    tree = xavier(tmp_path)
    instrument(inst, metrics, tree)
    energies = []
    for n, (load, mw) in enumerate([(100, 3000), (500, 9000), (0, 1000), (1000, 15000)]):
        tree.set("load", load)
        tree.set("mw:GPU", mw)
        points = sweep(inst, metrics)
        assert point(points, "hw.gpu.utilization", **{"hw.gpu.task": "general"}) == load / 1000
        assert point(points, "hw.power", **{"hw.type": "gpu"}) == mw / 1000
        rail = point(points, "nvidia.jetson.rail.power", **{"nvidia.jetson.rail": "GPU"})
        assert rail == mw / 1000
        energies.append(point(points, "hw.energy", **{"hw.type": "gpu"}))
        if n:
            assert energies[-1] > energies[-2]
    assert metrics.metrics["hw.energy"].data.is_monotonic


def test_missing_node_drops_only_its_series_and_is_counted_once(tmp_path, jetson):
    inst, metrics = jetson
    tree = orin(tmp_path)
    instrument(inst, metrics, tree)
    full = sweep(inst, metrics)
    tree.nodes["gpu_temp"].unlink()
    for _ in range(3):
        points = sweep(inst, metrics)
    assert point(points, "hw.temperature", **{"hw.sensor_location": "gpu"}) is None
    zones = {a["nvidia.jetson.thermal_zone"] for a, _v in points["nvidia.jetson.temperature"]}
    assert zones == set(tree.zones) - {"gpu-thermal"}
    assert point(points, ERRORS, **{"error.type": "node_missing", "hw.id": tree.hw_id}) == 1
    # Every other series is still there, with the same value.
    for name in (
        "hw.gpu.utilization",
        "hw.power",
        "hw.gpu.memory.usage",
        "nvidia.jetson.emc.frequency",
    ):
        assert points[name] == full[name]

    tree.set("gpu_temp", 50000)  # the node comes back: so does its series
    points = sweep(inst, metrics)
    assert point(points, "hw.temperature", **{"hw.sensor_location": "gpu"}) == 50.0
    tree.nodes["gpu_temp"].unlink()  # a second outage is counted again, once
    sweep(inst, metrics)
    points = sweep(inst, metrics)
    assert point(points, ERRORS, **{"error.type": "node_missing", "hw.id": tree.hw_id}) == 2


def test_unreadable_nodes_drop_their_series(tmp_path, jetson):
    inst, metrics = jetson
    tree = orin(tmp_path)
    instrument(inst, metrics, tree)
    sweep(inst, metrics)
    energy = point(sweep(inst, metrics), "hw.energy", **{"hw.type": "gpu"})
    assert energy is not None and energy > 0
    break_read(tree.nodes["load"])
    break_read(tree.nodes["mv:VDD_GPU_SOC"])
    tree.set("emc_activity", "garbage")
    tree.set("min_freq", "nan")
    for _ in range(2):
        points = sweep(inst, metrics)
    assert point(points, "hw.gpu.utilization", **{"hw.gpu.task": "general"}) is None
    assert point(points, "hw.power", **{"hw.type": "gpu"}) is None
    assert point(points, "hw.energy", **{"hw.type": "gpu"}) is None
    rails = {a["nvidia.jetson.rail"] for a, _v in points["nvidia.jetson.rail.power"]}
    assert rails == set(tree.rails) - {"VDD_GPU_SOC"}
    assert point(points, "nvidia.jetson.emc.utilization") is None
    assert point(points, "nvidia.jetson.emc.frequency") == 2133000000
    assert point(points, ERRORS, **{"error.type": "read_failed"}) == 2  # load, rail voltage
    assert point(points, ERRORS, **{"error.type": "unparsable"}) == 2  # EMC activity, min
    limit = "nvidia.jetson.gpu.frequency.limit"
    assert point(points, limit, **{limit: "min"}) is None
    assert point(points, limit, **{limit: "max"}) == 1300500000
    assert point(points, "hw.status", **{"hw.state": "ok"}) == 1  # the GPU itself is fine

    mend_read(tree.nodes["mv:VDD_GPU_SOC"], "5024\n")
    points = sweep(inst, metrics)
    # The counter resumes where it stopped: the unread gap is not guessed at.
    assert point(points, "hw.energy", **{"hw.type": "gpu"}) == energy
    points = sweep(inst, metrics)
    assert point(points, "hw.energy", **{"hw.type": "gpu"}) > energy


def test_a_rail_shared_with_the_cpu_is_not_the_gpu_s_power(tmp_path):
    # Orin NX/Nano and Xavier NX feed CPU, GPU and CV from one rail: no GPU-only figure.
    tree = orin(tmp_path)
    tree.put("sys/class/hwmon/hwmon1/in1_label", "VDD_CPU_GPU_CV\n")
    readings = JetsonBackend(str(tree.root)).sweep().devices[0].readings
    assert "power" not in readings and "energy" not in readings
    assert readings["jetson.rail.power/VDD_CPU_GPU_CV"] == pytest.approx(6.0288)


def test_forced_backend_without_a_tegra_gpu_says_what_is_missing(tmp_path, monkeypatch):
    (tmp_path / "sys/class/devfreq/bwmgr").mkdir(parents=True)  # a devfreq node, not a GPU
    monkeypatch.setenv("VISIONTEL_GPU_BACKEND", "jetson")
    monkeypatch.setenv("VISIONTEL_GPU_SYSFS_ROOT", str(tmp_path))
    config = GPUConfig.resolve()
    assert (config.backend, config.sysfs_root) == ("jetson", str(tmp_path))
    with pytest.raises(BackendUnavailable) as raised:
        open_backend(config)
    message = str(raised.value)
    assert raised.value.missing == "Tegra GPU"
    assert str(tmp_path / "sys/class/devfreq") in message and "ga10b" in message
    assert "VISIONTEL_GPU_SYSFS_ROOT" in message
    assert "jetson" in _parser().parse_args(["serve", "--backend", "jetson"]).backend


@pytest.mark.parametrize("root", ["", "  ", "relative/nowhere", "/dev/null", "/proc/self/fd/0"])
def test_odd_roots_only_ever_mean_unavailable(root):
    with pytest.raises(BackendUnavailable):
        JetsonBackend(root)


def test_another_soc_s_gpu_devfreq_is_not_taken_for_a_tegra(tmp_path):
    # Rockchip RK3588: the Mali GPU's devfreq node is fb000000.gpu, of_node name "gpu".
    mali = JetsonTree(tmp_path, hw_id="", model="Radxa ROCK 5B", driver_version="")
    mali.put("sys/devices/platform/fb000000.gpu/devfreq/fb000000.gpu/cur_freq", "300000000\n")
    mali.put("sys/devices/platform/fb000000.gpu/of_node/name", "gpu\0")
    mali.put("sys/devices/platform/fb000000.gpu/load", "12\n")
    mali.link(
        "sys/class/devfreq/fb000000.gpu", "../../devices/platform/fb000000.gpu/devfreq/fb000000.gpu"
    )
    mali.link("sys/devices/platform/fb000000.gpu/devfreq/fb000000.gpu/device", "../..")
    mali.put("proc/device-tree/compatible", "radxa,rock-5b\0rockchip,rk3588\0")
    with pytest.raises(BackendUnavailable):
        JetsonBackend(str(tmp_path))
    # The same node on a Tegra device tree is the GPU (JetPack 6 names Orin's this way).
    mali.put("proc/device-tree/compatible", "nvidia,p3768-0000+p3767-0005\0nvidia,tegra234\0")
    assert (
        JetsonBackend(str(tmp_path)).devices[0].uuid
        == "jetson-nvidia,p3768-0000+p3767-0005/fb000000.gpu"
    )


def test_config_defaults_and_arguments_win(monkeypatch):
    monkeypatch.delenv("VISIONTEL_GPU_SYSFS_ROOT", raising=False)
    assert GPUConfig.resolve().sysfs_root == "/"
    monkeypatch.setenv("VISIONTEL_GPU_SYSFS_ROOT", "/host")
    assert GPUConfig.resolve(sysfs_root="/elsewhere").sysfs_root == "/elsewhere"


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A fresh process: nvidia-ml-py keeps the first library it loaded for the process's life.
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_auto_picks_jetson_only_when_nvml_is_unavailable_and_a_gpu_is_there(tmp_path):
    tree = orin(tmp_path / "board")
    (tmp_path / "empty").mkdir()
    env = {
        **os.environ,
        "VISIONTEL_GPU_NVML_LIBRARY": str(tmp_path / "nowhere/libnvidia-ml.so.1"),
        "VISIONTEL_GPU_BACKEND": "auto",
    }
    code = (
        "from visiontel.gpu._backend import open_backend\n"
        "from visiontel.gpu._config import GPUConfig\n"
        "from visiontel.gpu.resource import GPUResourceDetector\n"
        "b = open_backend(GPUConfig.resolve())\n"
        "print(b.name, b.devices[0].uuid)\n"
        "print(dict(GPUResourceDetector().detect().attributes))\n"
    )
    done = _run_python(code, {**env, "VISIONTEL_GPU_SYSFS_ROOT": str(tree.root)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"jetson {tree.hw_id}"
    assert "'nvidia.gpu.driver_version': '35.4.1'" in lines[1]
    # Neither NVML nor a Tegra GPU: the error is NVML's, naming the library to install.
    done = _run_python(code, {**env, "VISIONTEL_GPU_SYSFS_ROOT": str(tmp_path / "empty")})
    assert done.returncode == 1
    assert "BackendUnavailable" in done.stderr and "nowhere/libnvidia-ml.so.1" in done.stderr
    assert "Tegra" not in done.stderr


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _sample(text: str, name: str, label: str = "") -> float | None:
    """The value of the first Prometheus sample of metric family `name` with `label` in it."""
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_serve_on_a_jetson_tree_without_nvml(tmp_path):
    tree = orin(tmp_path / "board")
    env = {
        **os.environ,
        "VISIONTEL_GPU_NVML_LIBRARY": str(tmp_path / "nowhere/libnvidia-ml.so.1"),
        "VISIONTEL_GPU_SYSFS_ROOT": str(tree.root),
        "VISIONTEL_GPU_INTERVAL": "0.1",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    env.pop("VISIONTEL_GPU_BACKEND", None)  # auto: NVML is absent, the tree has a GPU
    proc = subprocess.Popen(
        serve_command("--prometheus-port", "0"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = Lines(proc.stderr)
    try:
        started = stderr.wait_for(r"serve: (\w+), (\d+) device\(s\).*Prometheus on (http://\S+)$")
        assert started.group(1, 2) == ("jetson", "1")
        text = eventually(
            lambda: (t := _scrape(started[3])) and "nvidia_jetson_rail_power" in t and t,
            "a Prometheus scrape with Jetson series",
        )
        gpu = 'hw_gpu_utilization{hw_driver_version="35.4.1",hw_gpu_task="general"'
        assert _sample(text, gpu) == pytest.approx(0.456)
        assert _sample(text, "hw_gpu_memory_limit", tree.hw_id) == tree.expected["memory.limit"]
        assert _sample(text, "hw_power", 'hw_type="gpu"') == pytest.approx(6.0288)
        rail = _sample(text, "nvidia_jetson_rail_power", 'nvidia_jetson_rail="VIN_SYS_5V0"')
        assert rail == pytest.approx(tree.rails["VIN_SYS_5V0"])
        assert _sample(text, "nvidia_jetson_emc_utilization") == pytest.approx(0.25)
        cpu = _sample(text, "nvidia_jetson_temperature", 'thermal_zone="cpu-thermal"')
        assert cpu == 45.5
        first_energy = _sample(text, "hw_energy", 'hw_type="gpu"')
        assert first_energy is not None

        tree.set("load", 999)  # the next sweeps read the new value
        text = eventually(
            lambda: (t := _scrape(started[3])) and _sample(t, gpu) == pytest.approx(0.999) and t,
            "the new GPU load",
        )
        energy = _sample(text, "hw_energy", 'hw_type="gpu"')
        assert energy is not None and energy > first_energy
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=GUARD_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, stderr.text()


def test_serve_forced_to_jetson_without_one_fails_with_the_reason(tmp_path):
    env = {
        **os.environ,
        "VISIONTEL_GPU_BACKEND": "jetson",
        "VISIONTEL_GPU_SYSFS_ROOT": str(tmp_path),
        "OTEL_METRICS_EXPORTER": "none",
    }
    done = subprocess.run(
        serve_command(), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "cannot collect GPU metrics: no Tegra GPU" in done.stderr
    assert "VISIONTEL_GPU_SYSFS_ROOT" in done.stderr


def test_a_kernel_without_gpu_devfreq_still_gives_the_load(tmp_path):
    legacy = tmp_path / "sys/devices/gpu.0/load"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("300\n")
    with pytest.raises(BackendUnavailable):  # nothing says this is a Tegra
        JetsonBackend(str(tmp_path))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R32 (release), REVISION: 7.4\n")
    backend = JetsonBackend(str(tmp_path))
    assert backend.driver_version == "32.7.4"
    sample = backend.sweep()
    assert sample.devices[0].readings == {"utilization.general": 0.3}
    assert sample.devices[0].info.uuid == "jetson-unknown/gpu.0"
    assert sample.devices[0].info.model == "NVIDIA Tegra gpu"
    # meminfo is missing here: counted once, not on every sweep.
    assert [e.error_type for e in sample.errors] == ["node_missing"]
    assert backend.sweep().errors == ()
