"""Instruments for Jetson (Tegra) readings that have no hw.* meaning, all `nvidia.jetson.*`.

What a Jetson shares with a discrete GPU (load, memory, GPU temperature, GPU rail power and
energy, GPU clock) goes through the common instruments of _instruments.py. These carry the
rest: every INA3221 rail, every thermal zone, the GPU's devfreq limits, the memory
controller (EMC) and nvmap's share of RAM. Other backends never fill these readings, so on
them the instruments report no series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from opentelemetry.metrics import Meter

from visiontel.gpu import _model as m

if TYPE_CHECKING:  # _instruments imports this module to call register_jetson
    from visiontel.gpu._instruments import Attrs, Emit, _Instruments

RAIL = "nvidia.jetson.rail"
THERMAL_ZONE = "nvidia.jetson.thermal_zone"
LIMIT = "nvidia.jetson.gpu.frequency.limit"


def _named(prefix: str, attribute: str) -> Emit:
    """Emit every reading whose key starts with `prefix`, the rest of the key as `attribute`."""
    start = len(prefix)

    def emit(sample: m.DeviceSample, base: Attrs) -> Iterator[tuple[float, Attrs]]:
        for key, value in sample.readings.items():
            if key.startswith(prefix):
                yield value, {**base, attribute: key[start:]}

    return emit


def register_jetson(meter: Meter, i: _Instruments) -> None:
    gauge, counter, updown = (
        meter.create_observable_gauge,
        meter.create_observable_counter,
        meter.create_observable_up_down_counter,
    )
    gauge(
        "nvidia.jetson.rail.power",
        [i.per_device(_named(m.JETSON_RAIL_POWER, RAIL))],
        "W",
        "Power through one INA3221-monitored supply rail (e.g. VDD_IN, VDD_GPU_SOC).",
    )
    counter(
        "nvidia.jetson.rail.energy",
        [i.per_device(_named(m.JETSON_RAIL_ENERGY, RAIL))],
        "J",
        "Energy through one rail since collection began, integrated from its power.",
    )
    gauge(
        "nvidia.jetson.temperature",
        [i.per_device(_named(m.JETSON_TEMPERATURE, THERMAL_ZONE))],
        "Cel",
        "Temperature of one thermal zone (cpu-thermal, gpu-thermal, tj-thermal, ...).",
    )
    gauge(
        "nvidia.jetson.gpu.frequency.limit",
        [
            i.per_device(
                i.readings(
                    [
                        (m.JETSON_GPU_FREQ_MIN, {LIMIT: "min"}),
                        (m.JETSON_GPU_FREQ_MAX, {LIMIT: "max"}),
                    ]
                )
            )
        ],
        "Hz",
        "Lowest and highest GPU clock the devfreq governor may choose now (nvpmodel sets them).",
    )
    gauge(
        "nvidia.jetson.emc.frequency",
        [i.per_device(i.reading(m.JETSON_EMC_FREQUENCY))],
        "Hz",
        "External memory controller (DRAM) clock, shared by CPU and GPU.",
    )
    gauge(
        "nvidia.jetson.emc.utilization",
        [i.per_device(i.reading(m.JETSON_EMC_UTILIZATION))],
        "1",
        "Fraction of the memory controller's cycles that were busy (actmon).",
    )
    updown(
        "nvidia.jetson.memory.nvmap.usage",
        [i.per_device(i.reading(m.JETSON_NVMAP_USED))],
        "By",
        "RAM held by the nvmap allocator (GPU and multimedia buffers).",
    )
