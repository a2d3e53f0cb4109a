"""Older drivers: each optional NVML entry point hidden from the simulator in turn.

The simulator is rebuilt without the named symbols (a linker version script), so the real
nvidia-ml-py lookup fails with FUNCTION_NOT_FOUND exactly as on a driver branch that
predates the call. Every other series must still be there, the series that need the call
must be gone, and the loss is counted once per device.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from gpu_test_helpers import GUARD_S, Metrics, eventually, point
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from visiontel.gpu import GPUInstrumentor, _nvml_private
from visiontel.gpu import _nvml_calls as calls
from visiontel.gpu.resource import GPUResourceDetector
from visiontel.gpu.testing import EVENT_XID, NvmlSimulator
from visiontel.gpu.testing.degrade import (
    COUNTED,
    GONE,
    GPU0,
    GPU1,
    GPUS,
    Series,
    errors,
    script,
    series,
    without,
)

GiB = 1024**3
PROCESS_MEMORY = "nvidia.gpu.process.memory.usage"


@pytest.fixture
def use(sim_build: NvmlSimulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """use(hide=[...], **script keys): that build of the simulator, with the script."""

    def select(hide: tuple[str, ...] = (), **extra: object) -> NvmlSimulator:
        sim = NvmlSimulator.build(sim_build.library.parent, hide=hide)
        for key, value in sim.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("VISIONTEL_GPU_PROC_ROOT", str(tmp_path))  # no pod attributes
        sim.write(script(**extra))
        return sim

    return select


def collect(**kwargs: Any) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """Instrument, sweep a second time (a loss is counted once, not per sweep), collect."""
    metrics = Metrics()
    inst = GPUInstrumentor()
    inst.instrument(meter_provider=metrics.provider, interval=60.0, **{"events": False, **kwargs})
    try:
        assert inst.devices, "the instrumentor found no GPU"
        assert inst.refresh(timeout=GUARD_S)
        return metrics.collect()
    finally:
        inst.uninstrument()
        metrics.provider.shutdown()


@pytest.fixture
def baseline(use: Any) -> Series:
    use()
    full = collect()
    assert errors(full) == {}, "the full simulator should answer everything"
    return series(full)


def test_hidden_entry_points_are_really_not_exported(sim_build):
    hide = [calls.PROCESS_UTILIZATION, calls.PROCESSES[0]]
    sim = NvmlSimulator.build(sim_build.library.parent, hide=hide)
    library = ctypes.CDLL(str(sim.library))
    assert not hasattr(library, calls.PROCESS_UTILIZATION)
    assert not hasattr(library, calls.PROCESSES[0])
    assert hasattr(library, calls.PROCESSES[1]) and hasattr(library, calls.MEMORY)
    assert sim.hidden == tuple(sorted(hide))
    assert sim.library != sim_build.library
    again = NvmlSimulator.build(sim_build.library.parent, hide=reversed(hide))
    assert again.library == sim.library  # one build per set of names
    with pytest.raises(ValueError, match="nvmlDeviceGetNoSuchCall"):
        NvmlSimulator.build(sim_build.library.parent, hide=["nvmlDeviceGetNoSuchCall"])


def test_every_optional_entry_point_has_an_expectation() -> None:
    assert set(GONE) == set(calls.METRICS), "add the new call to GONE (and COUNTED)"
    assert not set(calls.OPTIONAL) & set(calls.REQUIRED)


@pytest.mark.parametrize("hidden", calls.METRICS)
def test_a_missing_entry_point_takes_only_its_own_series(use, baseline, hidden):
    use(hide=(hidden,))
    points = collect()
    expected = without(baseline, hidden)
    if GONE[hidden]:
        assert expected != baseline, f"the baseline has no series for {hidden}"
    assert series(points) == expected
    where = COUNTED.get(hidden, GPUS)
    assert errors(points) == {("function_not_found", device): 1 for device in where}
    versions = {a.get("hw.driver_version") for a, _ in points["hw.status"]}
    assert versions == {"unknown" if hidden == calls.DRIVER_VERSION else "550.54.15"}


@pytest.mark.parametrize("hidden", [calls.DRIVER_VERSION, calls.CUDA_VERSION])
def test_the_resource_degrades_without_the_system_calls(use, hidden):
    use(hide=(hidden,))
    attrs = GPUResourceDetector().detect().attributes
    assert attrs["nvidia.gpu.count"] == 2
    want = "unknown" if hidden == calls.DRIVER_VERSION else "550.54.15"
    assert attrs["nvidia.gpu.driver_version"] == want
    assert ("nvidia.gpu.cuda_version" in attrs) is (hidden != calls.CUDA_VERSION)


def test_without_the_batch_the_per_reading_calls_answer(use):
    use(hide=(calls.FIELD_VALUES,))
    p = collect()
    assert point(p, "hw.power", **{"hw.id": GPU0}) == pytest.approx(312.5)
    assert point(p, "hw.energy", **{"hw.id": GPU1}) == pytest.approx(1_234_567)
    assert point(p, "hw.errors", **{"hw.id": GPU0, "error.type": "corrected"}) == 3
    assert point(p, "hw.errors", **{"hw.id": GPU0, "error.type": "uncorrected"}) == 0
    assert point(p, "nvidia.gpu.pcie.replays", **{"hw.id": GPU0}) == 7
    # ...and each of them may be missing as well: counted once, the others stay.
    use(hide=(calls.FIELD_VALUES, calls.POWER, calls.ECC))
    p = collect()
    assert point(p, "hw.power", **{"hw.id": GPU0}) is None
    assert [a for a, _ in p.get("hw.errors", [])] == []
    assert point(p, "hw.energy", **{"hw.id": GPU0}) == pytest.approx(1_234_567)
    assert errors(p) == {("function_not_found", g): 3 for g in GPUS}


PROCESS_SCRIPT = {
    # Replaces the two processes of script(); more entries than the first buffer holds, so
    # the element size decides every pid.
    **{f"gpu.0.process.{n}": f"{5000 + n},{(n + 1) * 4096},0,0" for n in range(12)},
    "gpu.1.process.0": f"6000,{5 * GiB},3,1",  # on the MIG GPU: GPU instance 3
}


@pytest.mark.parametrize(
    "hidden, instance",
    [
        ((), 3),
        (calls.PROCESSES[:1], 3),  # R470: _v2 with its instance ids
        (calls.PROCESSES[:2], None),  # v1 only: pid and bytes, no instance
    ],
    ids=["v3", "v2", "v1"],
)
def test_process_memory_follows_the_generation_the_driver_exports(use, hidden, instance):
    use(hide=hidden, **PROCESS_SCRIPT)
    p = collect()
    memory = {(a["hw.id"], a["process.pid"]): v for a, v in p[PROCESS_MEMORY]}
    want = {(GPU0, 5000 + n): (n + 1) * 4096 for n in range(12)}
    want[(GPU1, 6000)] = 5 * GiB
    assert memory == want
    (mig,) = [a for a, _ in p[PROCESS_MEMORY] if a["process.pid"] == 6000]
    assert mig.get("nvidia.gpu.mig.gpu_instance_id") == instance
    assert errors(p) == {("function_not_found", g): len(hidden) for g in GPUS if hidden}


def test_without_any_process_list_only_process_memory_goes(use):
    use(hide=calls.PROCESSES)
    p = collect()
    assert p.get(PROCESS_MEMORY, []) == []
    assert point(p, "nvidia.gpu.process.utilization", **{"hw.gpu.task": "general"}) == 0.6
    assert errors(p) == {("function_not_found", g): 3 for g in GPUS}


@pytest.mark.parametrize("hidden", calls.EVENTS)
def test_missing_event_calls_turn_events_off_once(use, hidden, caplog):
    sim = use(hide=(hidden,))
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    metrics = Metrics()
    inst = GPUInstrumentor()
    off = "GPU events are not available"
    with caplog.at_level(logging.INFO, logger="visiontel.gpu"):
        inst.instrument(meter_provider=metrics.provider, logger_provider=provider, interval=60.0)
        try:
            sim.write(script(**{"event.0": f"1,{EVENT_XID},79"}))
            if hidden == calls.EVENT_SET_FREE:  # only the clean-up lacks: events flow
                eventually(exporter.get_finished_logs, "the XID log record")
            else:
                eventually(lambda: off in caplog.text, "events to be turned off")
            assert inst.refresh(timeout=GUARD_S)
            p = metrics.collect()
        finally:
            inst.uninstrument()
            metrics.provider.shutdown()
            provider.shutdown()
    assert caplog.text.count(off) == (0 if hidden == calls.EVENT_SET_FREE else 1)
    if hidden != calls.EVENT_SET_FREE:
        assert exporter.get_finished_logs() == ()
    assert point(p, "hw.gpu.memory.usage", **{"hw.id": GPU0}) == 10 * GiB
    assert errors(p) == {}  # events are not metrics: nothing counted


@pytest.fixture
def public_api() -> Iterator[None]:
    _nvml_private._use_public_api(True)
    yield
    _nvml_private._use_public_api(False)


def test_with_the_gate_shut_the_public_calls_give_the_same_series(use, public_api):
    # One process per GPU: nvidia-ml-py 12.535.77's public _v3 wrapper reads a 32-byte
    # entry where the driver writes 24 (our own requests use the right layout).
    one = {k: v for k, v in script().items() if k != "gpu.0.process.1"}
    use().write(one)
    _nvml_private._use_public_api(False)
    private = collect()
    _nvml_private._use_public_api(True)
    public = collect()
    assert {k: sorted(map(repr, v)) for k, v in public.items()} == {
        k: sorted(map(repr, v)) for k, v in private.items()
    }
    assert point(public, PROCESS_MEMORY, **{"process.pid": 4242}) == 3 * GiB
    # Without the batch the public path falls back as well; v1 has no public wrapper. (The
    # gate decides which library nvidia-ml-py holds: open it to switch, shut it to read.)
    use(hide=(calls.FIELD_VALUES, *calls.PROCESSES[:2])).write(one)
    _nvml_private._use_public_api(False)
    collect()
    _nvml_private._use_public_api(True)
    p = collect()
    assert point(p, "hw.power", **{"hw.id": GPU0}) == pytest.approx(312.5)
    assert p.get(PROCESS_MEMORY, []) == []
    assert errors(p) == {("function_not_found", g): 4 for g in GPUS}


def test_the_gate_shuts_itself_when_a_private_name_is_gone(monkeypatch, caplog):
    import pynvml

    assert _nvml_private.private_api(pynvml)
    monkeypatch.setattr(_nvml_private, "_warned", False)
    monkeypatch.delattr(pynvml, "_nvmlGetFunctionPointer_cache")  # a future nvidia-ml-py
    with caplog.at_level(logging.INFO, logger="visiontel.gpu"):
        assert not _nvml_private.private_api(pynvml)
        assert not _nvml_private.private_api(pynvml)
    assert caplog.text.count("_nvmlGetFunctionPointer_cache") == 1  # said once
