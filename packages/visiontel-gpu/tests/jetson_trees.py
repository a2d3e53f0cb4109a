"""Fabricated Jetson sysfs/procfs trees for the jetson backend's tests.

Layouts follow what public documentation says each board and release exposes (NVIDIA's
Jetson Linux power/performance guides, the kernel's ina3221 hwmon ABI, jetson-stats'
documented paths); the values are plausible numbers chosen by hand, not captured from a
board. Three layouts:

- Orin: AGX Orin on JetPack 5 (L4T R35.4.1): devfreq 17000000.ga10b under
  devices/platform, INA3221 through hwmon (two monitors, NC channels), bpmp debugfs EMC.
- Xavier: AGX Xavier on JetPack 4.6 (L4T R32.7.1): devfreq 17000000.gv11b, INA3221
  through the older iio driver (rail_name_N, in_powerN_input), actmon mc_all.
- Nano: Jetson Nano on JetPack 4.6: devfreq 57000000.gpu whose device has no load file
  (load in devices/gpu.0), iio rails, no serial number in the device tree.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JetsonTree:
    root: Path
    hw_id: str
    model: str
    driver_version: str
    nodes: dict[str, Path] = field(default_factory=dict)  # named files tests rewrite
    expected: dict[str, float] = field(default_factory=dict)  # reading values it implies
    rails: dict[str, float] = field(default_factory=dict)  # rail label -> W
    zones: dict[str, float] = field(default_factory=dict)  # zone type -> Cel (online ones)
    gpu_rail: str | None = None

    def put(self, relative: str, value: str) -> Path:
        """Write a file (atomically: a sweep may be reading it), making its directories."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(value)
        os.replace(tmp, path)
        return path

    def set(self, node: str, value: float | str) -> None:
        self.put(str(self.nodes[node].relative_to(self.root)), f"{value}\n")

    def link(self, relative: str, target: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)


def break_read(path: Path) -> None:
    """Make reading `path` fail with an OSError other than "not found".

    chmod 000 does that for an ordinary user; root reads through it, so there the file is
    replaced by a directory (open() then fails with IsADirectoryError).
    """
    if os.geteuid() == 0:
        path.unlink()
        path.mkdir()
    else:
        path.chmod(0)
    try:
        path.read_bytes()
    except OSError:
        return
    raise AssertionError(f"{path} is still readable")


def mend_read(path: Path, value: str) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.chmod(0o644)
    path.write_text(value)


def _meminfo(total_kb: int, available_kb: int, nvmap_kb: int | None) -> str:
    lines = [
        f"MemTotal:       {total_kb} kB",
        f"MemFree:        {available_kb - 400000} kB",
        f"MemAvailable:   {available_kb} kB",
        "Buffers:           98304 kB",
        "Cached:          1800000 kB",
        "SwapTotal:      15999488 kB",
    ]
    if nvmap_kb is not None:
        lines.append(f"NvMapMemUsed:   {nvmap_kb} kB")
    return "\n".join(lines) + "\n"


def _devfreq(t: JetsonTree, device: str, node: str, name: str, freqs: tuple[int, int, int]) -> None:
    """A GPU devfreq node as the kernel lays it out: class/devfreq/<node> links to the
    device's devfreq directory, whose `device` links back to the device."""
    freq_dir = f"sys/{device}/devfreq/{node}"
    for file, hz in zip(("cur_freq", "min_freq", "max_freq"), freqs, strict=True):
        t.nodes[file] = t.put(f"{freq_dir}/{file}", f"{hz}\n")
    t.put(f"{freq_dir}/governor", "nvhost_podgov\n")
    t.put(f"sys/{device}/of_node/name", f"{name}\0")
    t.put(f"sys/{device}/railgate_enable", "1\n")
    t.link(f"sys/class/devfreq/{node}", f"../../{device}/devfreq/{node}")
    t.link(f"{freq_dir}/device", "../..")
    t.expected["clock.sm"], t.expected["min"], t.expected["max"] = map(float, freqs)


def _zones(t: JetsonTree, zones: list[tuple[str, int]]) -> None:
    for n, (kind, milli) in enumerate(zones):
        t.put(f"sys/class/thermal/thermal_zone{n}/type", f"{kind}\n")
        path = t.put(f"sys/class/thermal/thermal_zone{n}/temp", f"{milli}\n")
        if kind.lower().startswith("gpu"):
            t.nodes["gpu_temp"] = path
            t.expected["temperature.gpu"] = milli / 1000
        if milli > -256000 and not kind.startswith("PMIC"):
            t.zones[kind] = milli / 1000


def _device_tree(t: JetsonTree, serial: str | None, compatible: list[str]) -> None:
    t.put("proc/device-tree/model", f"{t.model}\0")
    t.put("proc/device-tree/compatible", "".join(c + "\0" for c in compatible))
    if serial:
        t.put("proc/device-tree/serial-number", f"{serial}\0")


def _memory(t: JetsonTree, total_kb: int, available_kb: int, nvmap_kb: int | None) -> None:
    t.nodes["meminfo"] = t.put("proc/meminfo", _meminfo(total_kb, available_kb, nvmap_kb))
    t.expected["memory.limit"] = total_kb * 1024.0
    t.expected["memory.used"] = (total_kb - available_kb) * 1024.0
    if nvmap_kb is not None:
        t.expected["nvmap"] = nvmap_kb * 1024.0


def _iio_rails(t: JetsonTree, device: str, rails: list[tuple[str, int, int]]) -> None:
    """JetPack 4's ina3221x iio driver: rail_name_N, in_powerN_input (mW) and friends."""
    base = f"sys/bus/i2c/devices/{device}/iio:device{device[-1]}"
    t.put(f"sys/bus/i2c/devices/{device}/name", "ina3221x\n")
    for n, (label, mv, ma) in enumerate(rails):
        t.put(f"{base}/rail_name_{n}", f"{label}\n")
        t.put(f"{base}/in_voltage{n}_input", f"{mv}\n")
        t.put(f"{base}/in_current{n}_input", f"{ma}\n")
        mw = mv * ma // 1000
        t.nodes[f"mw:{label}"] = t.put(f"{base}/in_power{n}_input", f"{mw}\n")
        t.rails[label] = mw / 1000


def orin(root: Path) -> JetsonTree:
    t = JetsonTree(
        root,
        hw_id="jetson-1421622046293/17000000.ga10b",
        model="NVIDIA Jetson AGX Orin Developer Kit",
        driver_version="35.4.1",
        gpu_rail="VDD_GPU_SOC",
    )
    _device_tree(t, "1421622046293", ["nvidia,p3737-0000+p3701-0000", "nvidia,tegra234"])
    t.put(
        "etc/nv_tegra_release",
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
        "DATE: Tue Aug  1 19:57:35 UTC 2023\n",
    )
    device = "devices/platform/17000000.ga10b"
    _devfreq(t, device, "17000000.ga10b", "ga10b", (918000000, 306000000, 1300500000))
    t.nodes["load"] = t.put(f"sys/{device}/load", "456\n")
    t.expected["utilization.general"] = 0.456
    _memory(t, 31999028, 28000000, 1234560)
    _zones(
        t,
        [
            ("cpu-thermal", 45500),
            ("gpu-thermal", 43000),
            ("cv0-thermal", -256000),  # CV cluster powered down: sensor offline
            ("soc0-thermal", 44250),
            ("tj-thermal", 46000),
        ],
    )
    # Two INA3221 through hwmon; the driver also labels channel 7 (sum of shunt voltages).
    t.put("sys/class/hwmon/hwmon0/name", "pwmfan\n")
    t.put("sys/class/hwmon/hwmon0/pwm1", "80\n")
    # A PMBus regulator on a carrier board labels its inputs too; it is not an INA3221 rail.
    for file, value in (("name", "tps53681"), ("in1_label", "vin"), ("in1_input", "12000")):
        t.put(f"sys/class/hwmon/hwmon3/{file}", f"{value}\n")
    t.put("sys/class/hwmon/hwmon3/curr1_input", "2000\n")
    monitors = {
        "hwmon1": [
            ("VDD_GPU_SOC", 5024, 1200),
            ("VDD_CPU_CV", 5024, 600),
            ("VIN_SYS_5V0", 5008, 900),
        ],
        "hwmon2": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5016, 300), ("NC", 0, 0)],
    }
    for hwmon, channels in monitors.items():
        t.put(f"sys/class/hwmon/{hwmon}/name", "ina3221\n")
        t.put(f"sys/class/hwmon/{hwmon}/in7_label", "sum of shunt voltages\n")
        t.put(f"sys/class/hwmon/{hwmon}/in7_input", "3840\n")
        for n, (label, mv, ma) in enumerate(channels, start=1):
            t.put(f"sys/class/hwmon/{hwmon}/in{n}_label", f"{label}\n")
            t.put(f"sys/class/hwmon/{hwmon}/in{n + 3}_input", "1240\n")  # shunt, uV
            t.nodes[f"mv:{label}"] = t.put(f"sys/class/hwmon/{hwmon}/in{n}_input", f"{mv}\n")
            t.nodes[f"ma:{label}"] = t.put(f"sys/class/hwmon/{hwmon}/curr{n}_input", f"{ma}\n")
            if label != "NC":
                t.rails[label] = mv * ma / 1e6
    t.nodes["emc_rate"] = t.put("sys/kernel/debug/bpmp/debug/clk/emc/rate", "2133000000\n")
    # actmon activity / EMC kHz is a percentage: 25 % of 2133000 kHz.
    t.nodes["emc_activity"] = t.put(
        "sys/kernel/debug/bpmp/debug/actmon/mc_all_avg_activity", "53325000\n"
    )
    t.expected["emc.frequency"], t.expected["emc.utilization"] = 2133000000.0, 0.25
    return t


def xavier(root: Path) -> JetsonTree:
    t = JetsonTree(
        root,
        hw_id="jetson-1422919082741/17000000.gv11b",
        model="Jetson-AGX",
        driver_version="32.7.1",
        gpu_rail="GPU",
    )
    _device_tree(t, "1422919082741", ["nvidia,p2972-0000", "nvidia,tegra194"])
    t.put(
        "etc/nv_tegra_release",
        "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, "
        "DATE: Sat Feb 19 17:05:08 UTC 2022\n",
    )
    device = "devices/17000000.gv11b"
    _devfreq(t, device, "17000000.gv11b", "gv11b", (318750000, 114750000, 1377000000))
    t.nodes["load"] = t.put(f"sys/{device}/load", "997\n")
    t.expected["utilization.general"] = 0.997
    _memory(t, 32692948, 30100000, None)
    _zones(
        t,
        [
            ("AO-therm", 38500),
            ("CPU-therm", 40000),
            ("GPU-therm", 39500),
            ("AUX-therm", 39000),
            ("PMIC-Die", 100000),  # a fixed placeholder on Tegra boards: not reported
            ("Tboard_tegra", 36000),
            ("thermal-fan-est", 39600),
        ],
    )
    _iio_rails(t, "1-0040", [("GPU", 19104, 208), ("CPU", 19104, 312), ("SOC", 19104, 260)])
    _iio_rails(t, "1-0041", [("CV", 19104, 0), ("VDDRQ", 19104, 104), ("SYS5V", 4936, 808)])
    t.nodes["emc_rate"] = t.put("sys/kernel/debug/bpmp/debug/clk/emc/rate", "1600000000\n")
    t.nodes["emc_activity"] = t.put("sys/kernel/actmon_avg_activity/mc_all", "16000000\n")
    t.expected["emc.frequency"], t.expected["emc.utilization"] = 1600000000.0, 0.10
    return t


def nano(root: Path) -> JetsonTree:
    t = JetsonTree(
        root,
        hw_id="jetson-nvidia,p3450-0000/57000000.gpu",  # no serial: first compatible string
        model="NVIDIA Jetson Nano Developer Kit",
        driver_version="32.7.1",
        gpu_rail="POM_5V_GPU",
    )
    _device_tree(t, None, ["nvidia,p3450-0000", "nvidia,jetson-nano", "nvidia,tegra210"])
    t.put(
        "etc/nv_tegra_release",
        "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
        "DATE: Sat Feb 19 17:05:08 UTC 2022\n",
    )
    _devfreq(t, "devices/57000000.gpu", "57000000.gpu", "gpu", (76800000, 76800000, 921600000))
    t.nodes["load"] = t.put("sys/devices/gpu.0/load", "120\n")  # not under the devfreq device
    t.expected["utilization.general"] = 0.12
    _memory(t, 4051060, 2300000, 180000)
    _zones(
        t,
        [
            ("AO-therm", 37500),
            ("CPU-therm", 33000),
            ("GPU-therm", 32500),
            ("PLL-therm", 31000),
            ("PMIC-Die", 100000),
            ("thermal-fan-est", 32800),
        ],
    )
    _iio_rails(
        t, "6-0040", [("POM_5V_IN", 5048, 640), ("POM_5V_GPU", 5048, 40), ("POM_5V_CPU", 5048, 160)]
    )
    t.nodes["emc_rate"] = t.put("sys/kernel/debug/clk/override.emc/clk_rate", "1600000000\n")
    t.nodes["emc_activity"] = t.put("sys/kernel/actmon_avg_activity/mc_all", "8000000\n")
    t.expected["emc.frequency"], t.expected["emc.utilization"] = 1600000000.0, 0.05
    return t


BOARDS = {"orin": orin, "xavier": xavier, "nano": nano}
