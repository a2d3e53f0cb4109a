"""Observable instruments over the sampler's latest snapshot.

Names, units and instrument kinds are those of the OpenTelemetry hardware semantic
conventions (hw.gpu.*, hw.power, hw.energy, hw.temperature, hw.errors, hw.status); what the
conventions do not cover is under `nvidia.gpu.*` (`nvidia.jetson.*` for Jetson boards, in
_instruments_jetson.py). Counters and up-down counters of the
conventions are cumulative readings here, so they are their observable forms. Every callback
reports only what the snapshot holds: an unsupported reading has no series at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.semconv._incubating.attributes.hw_attributes import (
    HW_DRIVER_VERSION,
    HW_GPU_TASK,
    HW_ID,
    HW_MODEL,
    HW_NAME,
    HW_PARENT,
    HW_SENSOR_LOCATION,
    HW_STATE,
    HW_TYPE,
    HW_VENDOR,
)
from opentelemetry.semconv._incubating.attributes.network_attributes import NETWORK_IO_DIRECTION
from opentelemetry.semconv._incubating.attributes.process_attributes import PROCESS_PID
from opentelemetry.semconv._incubating.metrics.hw_metrics import (
    HW_ENERGY,
    HW_ERRORS,
    HW_GPU_IO,
    HW_GPU_MEMORY_LIMIT,
    HW_GPU_MEMORY_USAGE,
    HW_GPU_MEMORY_UTILIZATION,
    HW_GPU_UTILIZATION,
    HW_POWER,
    HW_STATUS,
    HW_TEMPERATURE,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.util.types import AttributeValue

from visiontel.gpu import _model as m
from visiontel.gpu._instruments_jetson import register_jetson
from visiontel.gpu._sampler import Sampler

Attrs = dict[str, AttributeValue]
VENDOR = "NVIDIA"
STATES = ("ok", "degraded", "failed")
TASKS = (("general", m.UTIL_GENERAL), ("encoder", m.UTIL_ENCODER), ("decoder", m.UTIL_DECODER))
# NVML clock-event (throttle) reason bits, nvml.h nvmlClocksEventReason*.
CLOCK_EVENT_REASONS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
COLLECTION_ERRORS = "visiontel.gpu.collection.errors"


def device_attributes(info: m.DeviceInfo) -> Attrs:
    attrs: Attrs = {
        HW_ID: info.uuid,
        HW_NAME: info.name,
        HW_VENDOR: VENDOR,
        HW_MODEL: info.model,
        HW_DRIVER_VERSION: info.driver_version,
    }
    if info.parent:
        attrs[HW_PARENT] = info.parent
    return attrs


Emit = Callable[[m.DeviceSample, Attrs], Iterator[tuple[float, Attrs]]]


class _Instruments:
    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self._attrs: dict[m.DeviceInfo, Attrs] = {}

    def _base(self, info: m.DeviceInfo) -> Attrs:
        attrs = self._attrs.get(info)
        if attrs is None:
            attrs = self._attrs[info] = device_attributes(info)
        return attrs

    def per_device(self, emit: Emit) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            collected = self._sampler.current()
            if collected is None:
                return []
            return [
                Observation(value, attrs)
                for sample in collected.snapshot.devices
                for value, attrs in emit(sample, self._base(sample.info))
            ]

        return callback

    def reading(self, key: str, extra: Attrs | None = None) -> Emit:
        def emit(sample: m.DeviceSample, base: Attrs) -> Iterator[tuple[float, Attrs]]:
            value = sample.readings.get(key)
            if value is not None:
                yield value, {**base, **extra} if extra else base

        return emit

    def readings(self, pairs: Iterable[tuple[str, Attrs]]) -> Emit:
        pairs = tuple(pairs)

        def emit(sample: m.DeviceSample, base: Attrs) -> Iterator[tuple[float, Attrs]]:
            for key, extra in pairs:
                value = sample.readings.get(key)
                if value is not None:
                    yield value, {**base, **extra}

        return emit

    def errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {ERROR_TYPE: kind, HW_ID: device} if device else {ERROR_TYPE: kind})
            for (kind, device), count in list(self._sampler.errors.items())
        ]


def _memory_utilization(sample: m.DeviceSample, base: Attrs) -> Iterator[tuple[float, Attrs]]:
    used, limit = sample.readings.get(m.MEMORY_USED), sample.readings.get(m.MEMORY_LIMIT)
    if used is not None and limit:
        yield used / limit, base


def _temperature(sample: m.DeviceSample, base: Attrs) -> Iterator[tuple[float, Attrs]]:
    # A temperature sensor is its own hardware component whose parent is the GPU.
    for key, location in ((m.TEMP_GPU, "gpu"), (m.TEMP_MEMORY, "memory")):
        value = sample.readings.get(key)
        if value is not None:
            yield (
                value,
                {
                    HW_ID: f"{sample.info.uuid}/temperature/{location}",
                    HW_NAME: f"{sample.info.name} {location} temperature",
                    HW_PARENT: sample.info.uuid,
                    HW_SENSOR_LOCATION: location,
                },
            )


def _status(sample: m.DeviceSample, base: Attrs) -> Iterator[tuple[float, Attrs]]:
    for state in STATES:
        yield (1.0 if sample.state == state else 0.0), {**base, HW_TYPE: "gpu", HW_STATE: state}


def _clock_events(sample: m.DeviceSample, base: Attrs) -> Iterator[tuple[float, Attrs]]:
    mask = sample.readings.get(m.CLOCK_EVENT_REASONS)
    if mask is None:
        return
    bits = int(mask)
    for bit, reason in CLOCK_EVENT_REASONS:
        yield (1.0 if bits & bit else 0.0), {**base, "nvidia.gpu.clock.event_reason": reason}


class _ProcessEmit:
    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler

    def _attrs(self, sample: m.DeviceSample, p: m.ProcessSample) -> Attrs:
        collected = self._sampler.current()
        extra = collected.process_attributes.get(p.pid, {}) if collected else {}
        attrs: Attrs = {HW_ID: sample.info.uuid, HW_NAME: sample.info.name, PROCESS_PID: p.pid}
        attrs.update(extra)
        if p.gpu_instance_id is not None:
            attrs["nvidia.gpu.mig.gpu_instance_id"] = p.gpu_instance_id
        return attrs

    def memory(self, sample: m.DeviceSample, _base: Attrs) -> Iterator[tuple[float, Attrs]]:
        for p in sample.processes:
            if p.memory_used is not None:
                yield float(p.memory_used), self._attrs(sample, p)

    def utilization(self, sample: m.DeviceSample, _base: Attrs) -> Iterator[tuple[float, Attrs]]:
        for p in sample.processes:
            if p.utilization:
                attrs = self._attrs(sample, p)
                for task, value in p.utilization.items():
                    yield value, {**attrs, HW_GPU_TASK: task}


def register(meter: Meter, sampler: Sampler) -> None:
    """Create every instrument on `meter`, all fed by `sampler`."""
    i = _Instruments(sampler)
    gpu: Attrs = {HW_TYPE: "gpu"}
    gauge, counter, updown = (
        meter.create_observable_gauge,
        meter.create_observable_counter,
        meter.create_observable_up_down_counter,
    )
    gauge(
        HW_GPU_UTILIZATION,
        [i.per_device(i.readings((key, {HW_GPU_TASK: task}) for task, key in TASKS))],
        "1",
        "Fraction of time spent in a specific task.",
    )
    updown(HW_GPU_MEMORY_USAGE, [i.per_device(i.reading(m.MEMORY_USED))], "By", "GPU memory used.")
    updown(
        HW_GPU_MEMORY_LIMIT,
        [i.per_device(i.reading(m.MEMORY_LIMIT))],
        "By",
        "Size of the GPU memory.",
    )
    gauge(
        HW_GPU_MEMORY_UTILIZATION,
        [i.per_device(_memory_utilization)],
        "1",
        "Fraction of GPU memory used.",
    )
    counter(
        HW_GPU_IO,
        [
            i.per_device(
                i.readings(
                    [
                        (m.PCIE_TX, {NETWORK_IO_DIRECTION: "transmit"}),
                        (m.PCIE_RX, {NETWORK_IO_DIRECTION: "receive"}),
                    ]
                )
            )
        ],
        "By",
        "Received and transmitted bytes by the GPU.",
    )
    gauge(HW_POWER, [i.per_device(i.reading(m.POWER, gpu))], "W", "Instantaneous power consumed.")
    counter(HW_ENERGY, [i.per_device(i.reading(m.ENERGY, gpu))], "J", "Energy consumed.")
    gauge(HW_TEMPERATURE, [i.per_device(_temperature)], "Cel", "Temperature in degrees Celsius.")
    counter(
        HW_ERRORS,
        [
            i.per_device(
                i.readings(
                    [
                        (m.ECC_CORRECTED, {**gpu, ERROR_TYPE: "corrected"}),
                        (m.ECC_UNCORRECTED, {**gpu, ERROR_TYPE: "uncorrected"}),
                    ]
                )
            )
        ],
        "{error}",
        "Number of errors encountered by the GPU (ECC).",
    )
    updown(HW_STATUS, [i.per_device(_status)], "1", "Operational status of the GPU, 1 or 0.")
    _register_extensions(meter, sampler, i)
    register_jetson(meter, i)


def _register_extensions(meter: Meter, sampler: Sampler, i: _Instruments) -> None:
    gauge, counter, updown = (
        meter.create_observable_gauge,
        meter.create_observable_counter,
        meter.create_observable_up_down_counter,
    )
    domain = "nvidia.gpu.clock.domain"
    gauge(
        "nvidia.gpu.clock.speed",
        [
            i.per_device(
                i.readings([(m.CLOCK_SM, {domain: "sm"}), (m.CLOCK_MEMORY, {domain: "memory"})])
            )
        ],
        "Hz",
        "Current SM and memory clock frequency.",
    )
    gauge(
        "nvidia.gpu.clock.event_reason",
        [i.per_device(_clock_events)],
        "1",
        "1 while a clock-event (throttle) reason is active, else 0.",
    )
    ratio_gauges = (
        (
            "nvidia.gpu.memory_controller.utilization",
            m.MEMORY_CONTROLLER,
            "Fraction of time device memory was read or written.",
        ),
        ("nvidia.gpu.sm.activity", m.SM_ACTIVE, "Fraction of time an SM had a warp (DCGM)."),
        ("nvidia.gpu.sm.occupancy", m.SM_OCCUPANCY, "Resident warps per SM / maximum (DCGM)."),
        ("nvidia.gpu.tensor.activity", m.TENSOR_ACTIVE, "Tensor pipes active ratio (DCGM)."),
    )
    for name, key, description in ratio_gauges:
        gauge(name, [i.per_device(i.reading(key))], "1", description)
    for link, tx, rx in (
        ("pcie", m.PCIE_TX_RATE, m.PCIE_RX_RATE),
        ("nvlink", m.NVLINK_TX_RATE, m.NVLINK_RX_RATE),
    ):
        pairs: list[tuple[str, Attrs]] = [
            (tx, {NETWORK_IO_DIRECTION: "transmit"}),
            (rx, {NETWORK_IO_DIRECTION: "receive"}),
        ]
        gauge(
            f"nvidia.gpu.{link}.throughput",
            [i.per_device(i.readings(pairs))],
            "By/s",
            f"{link} bytes per second (DCGM).",
        )
    counter(
        "nvidia.gpu.pcie.replays",
        [i.per_device(i.reading(m.PCIE_REPLAYS))],
        "{replay}",
        "PCIe replays.",
    )
    cause = "nvidia.gpu.remap.cause"
    updown(
        "nvidia.gpu.memory.remapped_rows",
        [
            i.per_device(
                i.readings(
                    [
                        (m.REMAPPED_CORRECTABLE, {cause: "correctable"}),
                        (m.REMAPPED_UNCORRECTABLE, {cause: "uncorrectable"}),
                    ]
                )
            )
        ],
        "{row}",
        "Memory rows remapped, by the kind of error that caused it.",
    )
    processes = _ProcessEmit(sampler)
    updown(
        "nvidia.gpu.process.memory.usage",
        [i.per_device(processes.memory)],
        "By",
        "GPU memory used by one process.",
    )
    gauge(
        "nvidia.gpu.process.utilization",
        [i.per_device(processes.utilization)],
        "1",
        "Fraction of time one process used the GPU, by task.",
    )
    counter(
        COLLECTION_ERRORS,
        [i.errors],
        "{error}",
        "GPU readings that failed, by NVML/DCGM error (not_supported is counted once per reading)"
        " or, on Jetson, by sysfs failure (counted once per node and outage).",
    )
