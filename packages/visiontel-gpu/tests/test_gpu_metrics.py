"""GPUInstrumentor end to end on the NVML simulator through the real nvidia-ml-py."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest
from gpu_test_helpers import GUARD_S, Metrics, eventually, point, two_gpus
from opentelemetry.sdk.metrics.export import Gauge, Sum

from visiontel.gpu import GPUInstrumentor
from visiontel.gpu.testing import DRIVER_NOT_LOADED, GPU_IS_LOST, NvmlSimulator

GPU0 = "GPU-00000000-1111-2222-3333-444455556666"
GPU1 = "GPU-00000001-1111-2222-3333-444455556666"
GiB = 1024**3
GENERAL = {"hw.gpu.task": "general"}
HANG_GPU0_UTILIZATION = {"gpu.0.delay.nvmlDeviceGetUtilizationRates": "hang"}


def memory_gpu0(metrics: Metrics) -> float | None:
    return point(metrics.collect(), "hw.gpu.memory.usage", **{"hw.id": GPU0})


def start(inst: GPUInstrumentor, metrics: Metrics, **kwargs: object) -> None:
    kwargs.setdefault("events", False)
    kwargs.setdefault("interval", 60.0)  # tests sweep explicitly through refresh()
    inst.instrument(meter_provider=metrics.provider, **kwargs)


def sweep(inst: GPUInstrumentor) -> None:
    """A fresh sweep, done by the sampler thread, before the test goes on."""
    assert inst.refresh(timeout=GUARD_S), "refresh() found no fresh sweep"


def test_two_gpus_follow_the_hardware_conventions(sim, metrics, instrumentor):
    start(instrumentor, metrics)
    assert instrumentor.devices == (GPU0, GPU1)
    p = metrics.collect()
    util = point(p, "hw.gpu.utilization", **{"hw.id": GPU0, "hw.gpu.task": "general"})
    assert util == pytest.approx(0.75)
    attrs = next(a for a, _ in p["hw.gpu.utilization"] if a["hw.id"] == GPU1)
    assert attrs["hw.vendor"] == "NVIDIA"
    assert attrs["hw.model"] == "NVIDIA H100 80GB HBM3"
    assert attrs["hw.name"] == "GPU 1"
    assert attrs["hw.driver_version"] == "550.54.15"
    assert point(p, "hw.gpu.utilization", **{"hw.id": GPU0, "hw.gpu.task": "encoder"}) == 0.1
    assert point(p, "hw.gpu.utilization", **{"hw.id": GPU0, "hw.gpu.task": "decoder"}) == 0.2
    assert point(p, "hw.gpu.memory.usage", **{"hw.id": GPU1}) == 11 * GiB
    assert point(p, "hw.gpu.memory.limit", **{"hw.id": GPU1}) == 80 * GiB
    # used / limit, not NVML's memory-controller busy percentage (30 %)...
    assert point(p, "hw.gpu.memory.utilization", **{"hw.id": GPU1}) == pytest.approx(11 / 80)
    # ...which has its own extension name.
    assert point(p, "nvidia.gpu.memory_controller.utilization", **{"hw.id": GPU1}) == 0.3
    assert point(p, "hw.gpu.io", **{"hw.id": GPU0, "network.io.direction": "transmit"}) == 5e6
    assert point(p, "hw.gpu.io", **{"hw.id": GPU0, "network.io.direction": "receive"}) == 9e6
    assert point(p, "hw.power", **{"hw.id": GPU0, "hw.type": "gpu"}) == pytest.approx(312.5)
    assert point(p, "hw.energy", **{"hw.id": GPU0, "hw.type": "gpu"}) == pytest.approx(1234567)
    sensor = point(p, "hw.temperature", **{"hw.id": f"{GPU0}/temperature/gpu"})
    assert sensor == 61
    temps = {a["hw.sensor_location"]: a for a, _ in p["hw.temperature"] if a["hw.parent"] == GPU0}
    assert set(temps) == {"gpu", "memory"}
    errors = {"hw.id": GPU0, "hw.type": "gpu"}
    error_type = "error.type"
    assert point(p, "hw.errors", **errors, **{error_type: "corrected"}) == 3
    assert point(p, "hw.errors", **errors, **{error_type: "uncorrected"}) == 0
    for state, expected in (("ok", 1), ("degraded", 0), ("failed", 0)):
        assert point(p, "hw.status", **{"hw.id": GPU0, "hw.state": state}) == expected
    assert (
        point(p, "nvidia.gpu.clock.speed", **{"nvidia.gpu.clock.domain": "sm", "hw.id": GPU0})
        == 1980e6
    )
    reason = "nvidia.gpu.clock.event_reason"
    assert point(p, reason, **{"hw.id": GPU0, reason: "sw_power_cap"}) == 1
    assert point(p, reason, **{"hw.id": GPU0, reason: "hw_thermal_slowdown"}) == 0
    assert point(p, "nvidia.gpu.pcie.replays", **{"hw.id": GPU0}) == 7
    cause = "nvidia.gpu.remap.cause"
    assert point(p, "nvidia.gpu.memory.remapped_rows", **{"hw.id": GPU0, cause: "correctable"}) == 1
    # Instrument kinds and units as the conventions define them.
    kinds = {
        "hw.gpu.utilization": (Gauge, "1"),
        "hw.gpu.memory.utilization": (Gauge, "1"),
        "hw.power": (Gauge, "W"),
        "hw.temperature": (Gauge, "Cel"),
        "hw.gpu.memory.usage": (Sum, "By"),
        "hw.gpu.memory.limit": (Sum, "By"),
        "hw.gpu.io": (Sum, "By"),
        "hw.energy": (Sum, "J"),
        "hw.errors": (Sum, "{error}"),
        "hw.status": (Sum, "1"),
    }
    for name, (kind, unit) in kinds.items():
        metric = metrics.metrics[name]
        assert isinstance(metric.data, kind), name
        assert metric.unit == unit, name
    monotonic = {"hw.gpu.io": True, "hw.energy": True, "hw.errors": True}
    for name in ("hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.status", *monotonic):
        assert metrics.metrics[name].data.is_monotonic == monotonic.get(name, False), name


def test_values_change_between_collections(sim, metrics, instrumentor):
    start(instrumentor, metrics)
    first = metrics.collect()
    assert point(first, "hw.gpu.memory.usage", **{"hw.id": GPU0}) == 10 * GiB
    sim.write(two_gpus(**{"gpu.0.memory.used": 70 * GiB, "gpu.0.field.83": 1_300_000_000}))
    sweep(instrumentor)
    second = metrics.collect()
    assert point(second, "hw.gpu.memory.usage", **{"hw.id": GPU0}) == 70 * GiB
    assert point(second, "hw.gpu.memory.utilization", **{"hw.id": GPU0}) == pytest.approx(70 / 80)
    assert point(second, "hw.energy", **{"hw.id": GPU0}) == pytest.approx(1_300_000)
    assert point(second, "hw.gpu.memory.usage", **{"hw.id": GPU1}) == 11 * GiB


def test_sampler_cadence_is_independent_of_collection(sim, metrics, instrumentor):
    start(instrumentor, metrics, interval=0.05)
    sim.write(two_gpus(**{"gpu.1.utilization.gpu": 5}))
    eventually(  # the sampler thread picks the change up by itself
        lambda: (
            point(metrics.collect(), "hw.gpu.utilization", **{"hw.id": GPU1}, **GENERAL) == 0.05
        ),
        "the sampler thread to pick up the new utilisation",
    )


def test_unsupported_readings_have_no_series_and_are_counted_once(sim, metrics, instrumentor):
    # GPU 1 answers only memory and utilisation: everything else is NOT_SUPPORTED.
    sim.write({"device_count": 2, **NvmlSimulator.gpu(0), **NvmlSimulator.gpu(1, full=False)})
    start(instrumentor, metrics)
    calls_before = sim.call_count()
    sweep(instrumentor)
    calls_per_sweep = sim.call_count() - calls_before
    p = metrics.collect()
    for name in ("hw.power", "hw.energy", "hw.temperature", "hw.gpu.io", "hw.errors"):
        ids = {a.get("hw.id") for a, _ in p[name]} | {a.get("hw.parent") for a, _ in p[name]}
        assert GPU1 not in ids, name  # never a fake 0
        assert GPU0 in ids, name
    assert point(p, "hw.gpu.utilization", **{"hw.id": GPU1, "hw.gpu.task": "encoder"}) is None
    assert point(p, "hw.gpu.utilization", **{"hw.id": GPU1, "hw.gpu.task": "general"}) == 0.75
    not_supported = point(
        p, "visiontel.gpu.collection.errors", **{"hw.id": GPU1, "error.type": "not_supported"}
    )
    assert not_supported and not_supported >= 5
    sweep(instrumentor)
    again = metrics.collect()
    assert (
        point(
            again,
            "visiontel.gpu.collection.errors",
            **{"hw.id": GPU1, "error.type": "not_supported"},
        )
        == not_supported
    )
    before = sim.call_count()
    sweep(instrumentor)
    assert sim.call_count() - before <= calls_per_sweep  # unsupported calls are not retried


def test_lost_gpu_is_skipped_and_counted_while_the_other_keeps_flowing(sim, metrics, instrumentor):
    start(instrumentor, metrics)
    sim.write(two_gpus(**{"gpu.1.error.all": GPU_IS_LOST, "gpu.0.memory.used": 33 * GiB}))
    sweep(instrumentor)
    p = metrics.collect()
    assert point(p, "hw.gpu.memory.usage", **{"hw.id": GPU0}) == 33 * GiB
    assert point(p, "hw.gpu.memory.usage", **{"hw.id": GPU1}) is None
    assert point(p, "hw.status", **{"hw.id": GPU1, "hw.state": "failed"}) == 1
    assert point(p, "hw.status", **{"hw.id": GPU1, "hw.state": "ok"}) == 0
    assert point(p, "hw.status", **{"hw.id": GPU0, "hw.state": "ok"}) == 1
    lost = point(
        p, "visiontel.gpu.collection.errors", **{"hw.id": GPU1, "error.type": "gpu_is_lost"}
    )
    assert lost == 1
    sweep(instrumentor)
    p = metrics.collect()
    assert (
        point(p, "visiontel.gpu.collection.errors", **{"hw.id": GPU1, "error.type": "gpu_is_lost"})
        == 2
    )


def test_remap_pending_and_failure_set_hw_status(sim, metrics, instrumentor):
    sim.write(two_gpus(**{"gpu.0.field.144": 1, "gpu.1.field.145": 1}))
    start(instrumentor, metrics)
    p = metrics.collect()
    assert point(p, "hw.status", **{"hw.id": GPU0, "hw.state": "degraded"}) == 1
    assert point(p, "hw.status", **{"hw.id": GPU1, "hw.state": "failed"}) == 1


def test_driver_not_loaded_logs_one_line_and_registers_nothing(sim, metrics, instrumentor, caplog):
    sim.write({"init_error": DRIVER_NOT_LOADED})
    with caplog.at_level(logging.INFO, logger="visiontel.gpu"):
        start(instrumentor, metrics)
    lines = [r for r in caplog.records if r.name == "visiontel.gpu"]
    assert len(lines) == 1
    assert "disabled" in lines[0].getMessage() and "Driver Not Loaded" in lines[0].getMessage()
    assert instrumentor.devices == ()
    assert metrics.collect() == {}


def test_no_gpu_logs_one_line(sim, metrics, instrumentor, caplog):
    sim.write({"device_count": 0})
    with caplog.at_level(logging.INFO, logger="visiontel.gpu"):
        start(instrumentor, metrics)
    messages = [r.getMessage() for r in caplog.records if r.name == "visiontel.gpu"]
    assert len(messages) == 1 and "no GPU" in messages[0]
    assert metrics.collect() == {}


def test_mig_instances_report_memory_with_their_parent(sim, metrics, instrumentor):
    mig = "MIG-aaaaaaaa-0000-0000-0000-000000000001"
    sim.write(
        two_gpus(
            **{
                "gpu.0.mig.count": 2,
                "gpu.0.mig.0.memory.total": 10 * GiB,
                "gpu.0.mig.0.memory.used": 2 * GiB,
                "gpu.0.mig.1.uuid": mig,
                "gpu.0.mig.1.memory.total": 20 * GiB,
                "gpu.0.mig.1.memory.used": 5 * GiB,
            }
        )
    )
    start(instrumentor, metrics)
    assert len(instrumentor.devices) == 4
    p = metrics.collect()
    assert point(p, "hw.gpu.memory.usage", **{"hw.id": mig}) == 5 * GiB
    assert point(p, "hw.gpu.memory.utilization", **{"hw.id": mig}) == pytest.approx(0.25)
    attrs = next(a for a, _ in p["hw.gpu.memory.usage"] if a["hw.id"] == mig)
    assert attrs["hw.parent"] == GPU0 and attrs["hw.name"] == "GPU 0 MIG 1"
    # NVML gives no utilisation for a MIG slice: no series rather than a 0.
    assert all(a["hw.id"] != mig for a, _ in p["hw.gpu.utilization"])


def test_transient_errors_are_counted_each_time_and_retried(sim, metrics, instrumentor):
    start(instrumentor, metrics)
    sim.write(two_gpus(**{"gpu.0.error.nvmlDeviceGetUtilizationRates": 10}))  # TIMEOUT
    sweep(instrumentor)
    sweep(instrumentor)
    p = metrics.collect()
    timeouts = {"hw.id": GPU0, "error.type": "timeout"}
    assert point(p, "visiontel.gpu.collection.errors", **timeouts) == 2
    assert point(p, "hw.gpu.utilization", **{"hw.id": GPU0, "hw.gpu.task": "general"}) is None
    assert point(p, "hw.gpu.memory.usage", **{"hw.id": GPU0}) == 10 * GiB  # the rest flows
    sim.write(two_gpus())  # the driver answers again: so does the series
    sweep(instrumentor)
    p = metrics.collect()
    assert point(p, "hw.gpu.utilization", **{"hw.id": GPU0, "hw.gpu.task": "general"}) == 0.75


def test_entry_point_and_environment_configuration(sim, metrics, instrumentor, monkeypatch, caplog):
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "gpu"]
    assert ep.load() is GPUInstrumentor
    monkeypatch.setenv("VISIONTEL_GPU_INTERVAL", "soon")
    monkeypatch.setenv("VISIONTEL_GPU_PROCESSES", "false")
    from visiontel.gpu import GPUConfig

    with caplog.at_level(logging.WARNING, logger="visiontel.gpu"):
        config = GPUConfig.resolve()
    assert config.interval == 1.0 and config.processes is False
    assert "VISIONTEL_GPU_INTERVAL" in caplog.text
    assert GPUConfig.resolve(interval=0.5, processes=True).interval == 0.5
    assert config.nvml_library == str(sim.library)  # from VISIONTEL_GPU_NVML_LIBRARY


def test_a_hung_driver_call_never_blocks_the_application(sim, metrics, instrumentor):
    start(instrumentor, metrics, interval=0.05)
    assert memory_gpu0(metrics) == 10 * GiB
    sim.write(two_gpus(**HANG_GPU0_UTILIZATION))
    eventually(lambda: sim.hung_calls() == 1, "the sampler thread to hang inside NVML")
    p = metrics.collect()  # the exporter's path makes no NVML call
    assert point(p, "hw.gpu.memory.usage", **{"hw.id": GPU0}) == 10 * GiB  # last snapshot
    assert instrumentor.refresh(timeout=0.1) is False  # no fresh sweep: says so, returns
    # The hung call cannot end before release(): both returned while it was still stuck.
    assert sim.hung_calls() == 1
    sim.release()
    sim.write(two_gpus(**{"gpu.0.memory.used": 12 * GiB}))
    eventually(  # once the call returns, sweeps resume on their own
        lambda: memory_gpu0(metrics) == 12 * GiB, "sweeps to resume after the hung call"
    )


def test_refreshes_during_a_hung_sweep_share_one_background_sweep(sim, metrics, instrumentor):
    start(instrumentor, metrics)  # interval 60 s: only refresh() sweeps
    before = sim.call_count()
    sweep(instrumentor)
    per_sweep = sim.call_count() - before
    sim.write(two_gpus(**{"gpu.0.memory.used": 44 * GiB}, **HANG_GPU0_UTILIZATION))
    before = sim.call_count()
    assert instrumentor.refresh(timeout=0) is False  # asks for a sweep, does not wait
    eventually(lambda: sim.hung_calls() == 1, "the requested sweep to hang inside NVML")
    # Each call wants a sweep begun after it; the hung one began before. None waits past
    # its timeout, none starts a sweep of its own (no new thread, no second NVML call).
    assert [instrumentor.refresh(timeout=0.05) for _ in range(5)] == [False] * 5
    assert sim.hung_calls() == 1
    samplers = [t for t in threading.enumerate() if t.name.startswith("visiontel-gpu")]
    assert [t.name for t in samplers] == ["visiontel-gpu-sampler"]
    assert memory_gpu0(metrics) == 10 * GiB  # meanwhile, the last readings
    sim.release()
    # With no caller waiting, the hung sweep completes and stores its readings (44 GiB was
    # read before the hang), then one sweep serves the five requests.
    eventually(lambda: memory_gpu0(metrics) == 44 * GiB, "the hung sweep's readings")
    eventually(
        lambda: sim.call_count() - before == 2 * per_sweep,
        "the NVML calls of exactly two sweeps (the hung one and one more)",
    )
    sweep(instrumentor)  # nothing else was pending: this one adds exactly one sweep
    assert sim.call_count() - before == 3 * per_sweep


@pytest.mark.parametrize("timeout", [-1, -0.001, math.nan, math.inf])
def test_refresh_rejects_a_timeout_it_cannot_keep(sim, metrics, instrumentor, timeout):
    with pytest.raises(ValueError, match="finite number of seconds >= 0"):
        instrumentor.refresh(timeout)  # checked even when not instrumented
    start(instrumentor, metrics)
    with pytest.raises(ValueError, match=r"refresh\(timeout="):
        instrumentor.refresh(timeout=timeout)


def test_refresh_timeout_must_be_a_number(sim, instrumentor):
    with pytest.raises(TypeError, match="number of seconds, not str"):
        instrumentor.refresh(timeout="1")


def test_refresh_without_a_running_sampler_returns_false(sim, metrics, instrumentor):
    assert instrumentor.refresh(timeout=0) is False  # not instrumented: nothing to sweep
    start(instrumentor, metrics)
    sweep(instrumentor)
    instrumentor.uninstrument()
    assert instrumentor.refresh(timeout=GUARD_S) is False


def test_field_values_of_every_declared_type_are_decoded(sim, metrics, instrumentor):
    sim.write(
        two_gpus(
            **{
                "gpu.0.field.186": "d:287250.5",  # power as a double, mW
                "gpu.0.field.82": "u:47",  # memory temperature as unsigned int
                "gpu.0.field.142": "i:12",  # remapped rows as signed 64-bit
                "gpu.1.field.83": "18446744073709",  # energy as unsigned 64-bit, mJ
            }
        )
    )
    start(instrumentor, metrics)
    p = metrics.collect()
    assert point(p, "hw.power", **{"hw.id": GPU0}) == pytest.approx(287.2505)
    assert point(p, "hw.temperature", **{"hw.id": f"{GPU0}/temperature/memory"}) == 47
    cause = "nvidia.gpu.remap.cause"
    assert (
        point(p, "nvidia.gpu.memory.remapped_rows", **{"hw.id": GPU0, cause: "correctable"}) == 12
    )
    assert point(p, "hw.energy", **{"hw.id": GPU1}) == pytest.approx(18446744073.709)


def test_a_stale_snapshot_is_withheld_not_exported_as_current(sim, metrics, instrumentor):
    start(instrumentor, metrics, interval=0.05)  # stale after 3 × 0.05 + 2 = 2.15 s
    started = time.monotonic()
    assert memory_gpu0(metrics) == 10 * GiB
    sim.write(two_gpus(**HANG_GPU0_UTILIZATION))
    (p,) = eventually(
        lambda: (p,) if not (p := metrics.collect()).get("hw.gpu.memory.usage") else None,
        "the snapshot from before the stuck call to be withheld",
    )
    assert sim.hung_calls() == 1  # withheld while the call is stuck, not after it failed
    assert p.get("hw.status", []) == []  # nothing old passed off as current
    assert time.monotonic() - started > 2.1  # withheld only once really stale
    sim.release()
    sim.write(two_gpus())
    eventually(  # the call returns; the next sweep brings the series back
        lambda: memory_gpu0(metrics) == 10 * GiB, "the series to come back after the stuck call"
    )
