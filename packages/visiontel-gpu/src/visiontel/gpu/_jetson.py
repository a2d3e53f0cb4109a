"""Jetson (Tegra) backend: the integrated GPU read from sysfs and procfs, without NVML.

On Jetson boards NVML answers little or nothing for the integrated GPU, so this backend
reads the kernel files jetson-stats and tegrastats read. Every node is found once, when the
backend starts; a sweep then opens and reads a few dozen small files (no subprocess, no
directory walk). All paths are under `root` (VISIONTEL_GPU_SYSFS_ROOT, default /): a
container reads a host's sys/, proc/ and etc/ mounted elsewhere, a test a tree it built.

Paths, relative to root (docs/gpu.md has the metric each one feeds):

- GPU load and clock: sys/class/devfreq/<addr>.<gpu>/{cur,min,max}_freq (Hz), and
  device/load under it (tenths of a percent); sys/devices/gpu.0/load where that node has
  no load file (Nano and TX layouts). The GPU is the devfreq node whose
  device/of_node/name (or name after the address) is a Tegra GPU's, or contains "gpu" on
  a board the device tree or etc/nv_tegra_release shows to be a Tegra.
- Memory: proc/meminfo. The GPU shares RAM with the CPU, so its limit is MemTotal and its
  usage MemTotal - MemAvailable; NvMapMemUsed (nvmap's GPU/multimedia buffers) on its own.
- Temperatures: sys/class/thermal/thermal_zone*/{type,temp} (millidegrees C).
- Power: the INA3221 monitors. hwmon driver (JetPack 5 and later): sys/class/hwmon/hwmon*/
  with name "ina3221", channels 1-3: in<N>_label, in<N>_input (mV), curr<N>_input (mA).
  iio driver (JetPack 4 and before): sys/bus/i2c/devices/*/iio:device*/rail_name_<N>,
  in_power<N>_input (mW), else in_voltage<N>_input (mV) x in_current<N>_input (mA).
- EMC (memory controller): clock from sys/kernel/debug/bpmp/debug/clk/emc/rate,
  sys/class/devfreq/bwmgr/cur_freq or sys/kernel/debug/clk/override.emc/clk_rate (Hz);
  activity from sys/kernel/actmon_avg_activity/mc_all or the debugfs actmon nodes.
- Identity: proc/device-tree/{model,serial-number,compatible} (else the same names under
  sys/firmware/devicetree/base, where proc/device-tree links to); etc/nv_tegra_release.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import time
from dataclasses import dataclass

from visiontel.gpu import _model as m
from visiontel.gpu._backend import BackendUnavailable

_log = logging.getLogger("visiontel.gpu")

# devfreq names of the integrated GPUs: Nano/TX1, TX2, Xavier, Orin, Thor. JetPack 6
# names Orin's node "gpu" (17000000.gpu), hence the substring match as well.
GPU_NODES = frozenset({"gm20b", "gp10b", "gv11b", "ga10b", "gb10b"})
_LEGACY_LOAD = "sys/devices/gpu.0/load"
_EMC_RATES = (
    "sys/kernel/debug/bpmp/debug/clk/emc/rate",  # Xavier, Orin (debugfs: root only)
    "sys/class/devfreq/bwmgr/cur_freq",  # Thor
    "sys/kernel/debug/clk/override.emc/clk_rate",  # Nano, TX2
)
_EMC_ACTIVITY = (
    "sys/kernel/actmon_avg_activity/mc_all",
    "sys/kernel/debug/bpmp/debug/actmon/mc_all_avg_activity",
    "sys/kernel/debug/cactmon/mc_all",
)
# A thermal zone whose sensor is powered down (e.g. the CV cluster idle) reads -256 C.
_OFFLINE_MILLIDEGREES = -256000.0
_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)")
_MEMINFO_KEYS = {b"MemTotal": "total", b"MemAvailable": "available", b"NvMapMemUsed": "nvmap"}


def _static(path: str) -> str | None:
    """A file read once at start (a label, a name); NULs and whitespace stripped."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() or None


@dataclass(frozen=True)
class _Gpu:
    node: str  # devfreq directory name, e.g. 17000000.ga10b
    name: str  # of_node name, e.g. ga10b
    devfreq: str | None
    load: str


@dataclass
class _Rail:
    """One INA3221 channel, and the energy integrated from its power so far."""

    label: str
    milliwatts: str | None  # iio layout's own power file
    millivolts: str | None
    milliamps: str | None
    joules: float = 0.0
    last: tuple[float, float] | None = None  # (monotonic s, W) of the last good reading


def is_tegra(root: str) -> bool:
    """The board is an NVIDIA Tegra: its device tree says so, or L4T is installed. Other
    SoCs name their GPU's devfreq node "<addr>.gpu" too (Mali on Rockchip, MediaTek)."""
    compatible = device_tree(root, "compatible") or ""
    return "nvidia,tegra" in compatible or os.path.exists(
        os.path.join(root, "etc/nv_tegra_release")
    )


def find_gpu(root: str) -> _Gpu | None:
    devfreq = os.path.join(root, "sys/class/devfreq")
    legacy = os.path.join(root, _LEGACY_LOAD)
    try:
        entries = sorted(os.listdir(devfreq))
    except OSError:
        entries = []
    tegra = is_tegra(root)
    for entry in entries:
        path = os.path.join(devfreq, entry)
        name = _static(os.path.join(path, "device/of_node/name")) or entry.rsplit(".", 1)[-1]
        # The Tegra GPU names identify the board alone; a bare "gpu" only on a Tegra.
        if name.lower() not in GPU_NODES and not (tegra and "gpu" in name.lower()):
            continue
        load = os.path.join(path, "device/load")
        if not os.path.exists(load) and os.path.exists(legacy):
            load = legacy
        return _Gpu(entry, name, path, load)
    if tegra and os.path.exists(legacy):  # a kernel without GPU devfreq still has the load
        return _Gpu("gpu.0", "gpu", None, legacy)
    return None


def find_rails(root: str) -> list[_Rail]:
    """INA3221 channels with a real label, hwmon layout first, then the older iio one."""
    rails: dict[str, _Rail] = {}
    for hwmon in sorted(glob.glob(os.path.join(root, "sys/class/hwmon/hwmon*"))):
        if _static(os.path.join(hwmon, "name")) != "ina3221":
            continue
        # Channels 4-7 are shunt voltages and their sum, not rails.
        for n in (1, 2, 3):
            label = _static(os.path.join(hwmon, f"in{n}_label"))
            if label and label.upper() != "NC" and label not in rails:  # NC: not connected
                rails[label] = _Rail(
                    label,
                    None,
                    os.path.join(hwmon, f"in{n}_input"),
                    os.path.join(hwmon, f"curr{n}_input"),
                )
    iio = os.path.join(root, "sys/bus/i2c/devices/*/iio:device*/rail_name_*")
    for name_file in sorted(glob.glob(iio)):
        label = _static(name_file)
        if not label or label.upper() == "NC" or label in rails:
            continue
        base, channel = os.path.dirname(name_file), name_file.rsplit("_", 1)[-1]
        power = os.path.join(base, f"in_power{channel}_input")
        rails[label] = _Rail(
            label,
            power if os.path.exists(power) else None,
            os.path.join(base, f"in_voltage{channel}_input"),
            os.path.join(base, f"in_current{channel}_input"),
        )
    return list(rails.values())


def find_zones(root: str) -> dict[str, str]:
    """Thermal zone type -> its temp file."""
    zones: dict[str, str] = {}
    pattern = os.path.join(root, "sys/class/thermal/thermal_zone*")
    for zone in sorted(glob.glob(pattern), key=lambda p: (len(p), p)):
        kind = _static(os.path.join(zone, "type"))
        # PMIC-Die is a fixed placeholder value on Tegra boards, not a measurement.
        if not kind or kind.upper().startswith("PMIC"):
            continue
        zones[kind if kind not in zones else f"{kind} ({os.path.basename(zone)})"] = os.path.join(
            zone, "temp"
        )
    return zones


def gpu_rail(rails: list[_Rail]) -> _Rail | None:
    """The rail that feeds the GPU and not the CPU (GPU, POM_5V_GPU, VDD_GPU_SOC)."""
    for rail in rails:
        parts = set(rail.label.upper().split("_"))
        if "GPU" in parts and "CPU" not in parts:
            return rail
    return None


def device_tree(root: str, name: str) -> str | None:
    """A device-tree property. /proc/device-tree is an absolute link to
    /sys/firmware/devicetree/base, which misses when a host's /proc is mounted elsewhere."""
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        value = _static(os.path.join(root, base, name))
        if value:
            return value
    return None


def driver_version(root: str) -> str:
    """The L4T release, e.g. 35.4.1 from "# R35 (release), REVISION: 4.1, ..."."""
    found = _RELEASE.search(_static(os.path.join(root, "etc/nv_tegra_release")) or "")
    return f"{found[1]}.{found[2]}" if found else "unknown"


def hardware_id(root: str, gpu: _Gpu) -> str:
    """Stable across restarts: the module's serial number, else its first compatible string.

    Both come from the device tree the bootloader passes, so they do not change with a
    reboot or a container restart; the devfreq node tells the GPU from any other.
    """
    serial = device_tree(root, "serial-number")
    compatible = (device_tree(root, "compatible") or "").split()
    board = serial or (compatible[0] if compatible else "unknown")
    return f"jetson-{board}/{gpu.node}"


def _first(root: str, candidates: tuple[str, ...]) -> str | None:
    for relative in candidates:
        path = os.path.join(root, relative)
        if os.path.exists(path):
            return path
    return None


class JetsonBackend:
    """Reads a Jetson's integrated GPU from sysfs/procfs. Construct, sweep(), close()."""

    name = "jetson"

    def __init__(self, root: str = "/") -> None:
        self.root = root
        gpu = find_gpu(root)
        if gpu is None:
            where = os.path.join(root, "sys/class/devfreq")
            raise BackendUnavailable(
                f"no Tegra GPU: no devfreq node in {where} names a GPU "
                f"({', '.join(sorted(GPU_NODES))}, or *gpu* on a board whose device tree is "
                f"nvidia,tegra*) and {os.path.join(root, _LEGACY_LOAD)} is absent. "
                "On a Jetson in a container, "
                "mount the host's /sys, /proc and /etc and point VISIONTEL_GPU_SYSFS_ROOT "
                "at them; elsewhere use the nvml backend",
                "Tegra GPU",
            )
        self._gpu = gpu
        self.driver_version = driver_version(root)
        self.cuda_version: str | None = None
        model = device_tree(root, "model") or f"NVIDIA Tegra {gpu.name}"
        self._info = m.DeviceInfo(0, hardware_id(root, gpu), "GPU 0", model, self.driver_version)
        self.devices: tuple[m.DeviceInfo, ...] = (self._info,)
        freq = gpu.devfreq
        self._freqs = (
            [
                (os.path.join(freq, "cur_freq"), m.CLOCK_SM),
                (os.path.join(freq, "min_freq"), m.JETSON_GPU_FREQ_MIN),
                (os.path.join(freq, "max_freq"), m.JETSON_GPU_FREQ_MAX),
            ]
            if freq
            else []
        )
        self._meminfo = os.path.join(root, "proc/meminfo")
        zones = find_zones(root)
        self._zones = [(m.JETSON_TEMPERATURE + kind, path) for kind, path in zones.items()]
        # gpu-thermal (Orin), GPU-therm (Xavier, Nano)
        gpu_zone = next((kind for kind in zones if kind.lower().startswith("gpu")), None)
        self._gpu_zone = None if gpu_zone is None else m.JETSON_TEMPERATURE + gpu_zone
        self._rails = find_rails(root)
        self._gpu_rail = gpu_rail(self._rails)
        self._emc_rate = _first(root, _EMC_RATES)
        self._emc_activity = _first(root, _EMC_ACTIVITY)
        self._failing: set[str] = set()  # nodes whose failure is already counted
        _log.info(
            "visiontel-gpu: Jetson GPU %s (%s), %d thermal zone(s), %d power rail(s)%s",
            gpu.node,
            model,
            len(self._zones),
            len(self._rails),
            f", GPU rail {self._gpu_rail.label}" if self._gpu_rail else "",
        )

    def _number(self, path: str, errors: list[m.CollectionError]) -> float | None:
        """The first number in a small file; None on failure, counted once per outage."""
        try:
            with open(path, "rb") as f:
                # Some nodes append a unit ("32760 ma"); only the number matters.
                value = float(f.read(256).split()[0])
            if not math.isfinite(value):  # "nan" parses, but is no reading
                raise ValueError(value)
        except FileNotFoundError:
            self._failed(path, "node_missing", errors)
            return None
        except OSError:
            self._failed(path, "read_failed", errors)
            return None
        except (ValueError, IndexError):
            self._failed(path, "unparsable", errors)
            return None
        if path in self._failing:
            self._failing.discard(path)  # a later failure is a new outage, counted again
        return value

    def _failed(self, path: str, kind: str, errors: list[m.CollectionError]) -> None:
        if path not in self._failing:
            self._failing.add(path)
            errors.append(m.CollectionError(kind, self._info.uuid))
            _log.debug("Jetson node %s: %s", path, kind)

    def sweep(self) -> m.Snapshot:
        errors: list[m.CollectionError] = []
        now = time.monotonic()
        out: dict[str, float] = {}
        load = self._number(self._gpu.load, errors)
        if load is not None:
            out[m.UTIL_GENERAL] = load / 1000.0
        for path, key in self._freqs:
            hz = self._number(path, errors)
            if hz is not None:
                out[key] = hz
        self._read_memory(out, errors)
        for key, path in self._zones:
            milli = self._number(path, errors)
            if milli is not None and milli > _OFFLINE_MILLIDEGREES:
                out[key] = milli / 1000.0
        if self._gpu_zone in out:
            out[m.TEMP_GPU] = out[self._gpu_zone]
        for rail in self._rails:
            self._read_rail(rail, now, out, errors)
        if self._gpu_rail is not None and m.JETSON_RAIL_POWER + self._gpu_rail.label in out:
            out[m.POWER] = out[m.JETSON_RAIL_POWER + self._gpu_rail.label]
            out[m.ENERGY] = self._gpu_rail.joules
        self._read_emc(out, errors)
        return m.Snapshot(now, (m.DeviceSample(self._info, out),), tuple(errors))

    def _read_memory(self, out: dict[str, float], errors: list[m.CollectionError]) -> None:
        try:
            with open(self._meminfo, "rb") as f:
                text = f.read(16384)
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            self._failed(self._meminfo, "node_missing" if missing else "read_failed", errors)
            return
        found: dict[str, float] = {}
        for line in text.splitlines():
            key, _, rest = line.partition(b":")
            name = _MEMINFO_KEYS.get(key)
            if name is not None and rest.split():
                found[name] = float(rest.split()[0]) * 1024  # kB
        if "total" not in found or "available" not in found:
            self._failed(self._meminfo, "unparsable", errors)
            return
        self._failing.discard(self._meminfo)
        out[m.MEMORY_LIMIT] = found["total"]
        out[m.MEMORY_USED] = found["total"] - found["available"]
        if "nvmap" in found:
            out[m.JETSON_NVMAP_USED] = found["nvmap"]

    def _read_rail(
        self, rail: _Rail, now: float, out: dict[str, float], errors: list[m.CollectionError]
    ) -> None:
        watts: float | None = None
        if rail.milliwatts is not None:
            mw = self._number(rail.milliwatts, errors)
            watts = None if mw is None else mw / 1000.0
        elif rail.millivolts is not None and rail.milliamps is not None:
            mv = self._number(rail.millivolts, errors)
            ma = self._number(rail.milliamps, errors)
            watts = None if mv is None or ma is None else mv * ma / 1e6
        if watts is None:
            # The gap is not integrated: energy may under-count an outage, never invent.
            rail.last = None
            return
        if rail.last is not None:
            # Trapezoid between two sweeps; clamped so the counter never goes down.
            then, before = rail.last
            rail.joules += max(0.0, (before + watts) / 2.0) * (now - then)
        rail.last = (now, watts)
        out[m.JETSON_RAIL_POWER + rail.label] = watts
        out[m.JETSON_RAIL_ENERGY + rail.label] = rail.joules

    def _read_emc(self, out: dict[str, float], errors: list[m.CollectionError]) -> None:
        if self._emc_rate is None:
            return
        hz = self._number(self._emc_rate, errors)
        if hz is None:
            return
        out[m.JETSON_EMC_FREQUENCY] = hz
        if self._emc_activity is not None and hz > 0:
            activity = self._number(self._emc_activity, errors)
            if activity is not None:
                # actmon's average activity divided by the EMC clock in kHz is a percentage
                # (how jetson-stats and tegrastats scale it).
                out[m.JETSON_EMC_UTILIZATION] = activity / (hz / 1000.0) / 100.0

    def close(self) -> None:
        """Nothing is held open between sweeps."""
