"""DCGM backend mapping. No DCGM here: only the three DCGM binding modules are stand-ins
(injected into sys.modules), built from DCGM's documented Python API; NVML underneath is the
simulator through the real nvidia-ml-py. This checks our mapping, not DCGM itself."""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass

import pytest
from gpu_test_helpers import point

GPU0 = "GPU-00000000-1111-2222-3333-444455556666"
GPU1 = "GPU-00000001-1111-2222-3333-444455556666"
FIELDS = {
    "DCGM_FI_PROF_SM_ACTIVE": 1002,
    "DCGM_FI_PROF_SM_OCCUPANCY": 1003,
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 1004,
    "DCGM_FI_PROF_DRAM_ACTIVE": 1005,
    "DCGM_FI_PROF_PCIE_TX_BYTES": 1009,
    "DCGM_FI_PROF_PCIE_RX_BYTES": 1010,
    "DCGM_FI_PROF_NVLINK_TX_BYTES": 1011,
    "DCGM_FI_PROF_NVLINK_RX_BYTES": 1012,
}


@dataclass
class Value:
    value: float
    isBlank: bool = False


class FakeDcgm:
    """State behind the stand-in modules: what the host engine would answer."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[int, list[Value]]] = {}
        self.watched: list[tuple[list[int], int]] = []
        self.deleted = False
        self.fail_connect = False

    def modules(self) -> dict[str, types.ModuleType]:
        fake = self
        structs = types.ModuleType("dcgm_structs")

        class DCGMError(Exception):
            value = -7

        structs.DCGMError = DCGMError
        structs.DCGM_OPERATION_MODE_AUTO = 1
        structs._dcgmInit = lambda libDcgmPath=None: None
        fields = types.ModuleType("dcgm_fields")
        for name, number in FIELDS.items():
            setattr(fields, name, number)
        pydcgm = types.ModuleType("pydcgm")

        class FieldGroup:
            def __init__(self, handle, name, field_ids):
                self.field_ids = field_ids

            def Delete(self):
                fake.deleted = True

        class Samples:
            def WatchFields(self, field_group, update_us, max_age, max_samples):
                fake.watched.append((field_group.field_ids, update_us))

            def GetLatest(self, field_group):
                return types.SimpleNamespace(values=fake.latest)

        class Group:
            samples = Samples()

            def GetGpuIds(self):
                return [0, 1]

        class Discovery:
            def GetGpuAttributes(self, gpu_id):
                uuid = (GPU0, GPU1)[gpu_id]
                return types.SimpleNamespace(identifiers=types.SimpleNamespace(uuid=uuid))

        class System:
            discovery = Discovery()

            def GetDefaultGroup(self):
                return Group()

        class Handle:
            def __init__(self, handle=None, ipAddress=None, opMode=None):
                if fake.fail_connect:
                    raise DCGMError("connection not valid")
                self.address = ipAddress

            def GetSystem(self):
                return System()

        pydcgm.DcgmHandle = Handle
        pydcgm.DcgmFieldGroup = FieldGroup
        return {"dcgm_structs": structs, "dcgm_fields": fields, "pydcgm": pydcgm}


@pytest.fixture
def dcgm(monkeypatch):
    fake = FakeDcgm()
    for name, module in fake.modules().items():
        monkeypatch.setitem(__import__("sys").modules, name, module)
    return fake


def test_profiling_fields_map_onto_instruments(sim, dcgm, metrics, instrumentor):
    dcgm.latest = {
        0: {
            1002: [Value(0.1), Value(0.82)],  # the latest sample counts
            1003: [Value(0.4)],
            1004: [Value(0.55)],
            1005: [Value(0.61)],
            1009: [Value(1.5e9)],
            1010: [Value(2.5e9)],
            1011: [Value(0, isBlank=True)],  # no NVLink on this board: no series
        },
        1: {1002: [Value(0.05)]},
    }
    instrumentor.instrument(meter_provider=metrics.provider, backend="dcgm", events=False)
    p = metrics.collect()
    assert dcgm.watched and sorted(dcgm.watched[0][0]) == sorted(FIELDS.values())
    assert point(p, "nvidia.gpu.sm.activity", **{"hw.id": GPU0}) == 0.82
    assert point(p, "nvidia.gpu.sm.activity", **{"hw.id": GPU1}) == 0.05
    assert point(p, "nvidia.gpu.sm.occupancy", **{"hw.id": GPU0}) == 0.4
    assert point(p, "nvidia.gpu.tensor.activity", **{"hw.id": GPU0}) == 0.55
    # DRAM active is the same quantity as NVML's memory-controller utilisation: same name.
    assert point(p, "nvidia.gpu.memory_controller.utilization", **{"hw.id": GPU0}) == 0.61
    assert point(p, "nvidia.gpu.memory_controller.utilization", **{"hw.id": GPU1}) == 0.3
    tx = {"hw.id": GPU0, "network.io.direction": "transmit"}
    assert point(p, "nvidia.gpu.pcie.throughput", **tx) == 1.5e9
    assert p.get("nvidia.gpu.nvlink.throughput", []) == []
    # NVML readings still flow under the conventions' names.
    assert point(p, "hw.gpu.utilization", **{"hw.id": GPU0, "hw.gpu.task": "general"}) == 0.75
    instrumentor.uninstrument()
    assert dcgm.deleted


def test_auto_falls_back_to_nvml_when_hostengine_is_down(sim, dcgm, metrics, instrumentor):
    dcgm.fail_connect = True
    instrumentor.instrument(meter_provider=metrics.provider, events=False)
    p = metrics.collect()
    assert point(p, "hw.gpu.utilization", **{"hw.id": GPU0, "hw.gpu.task": "general"}) == 0.75
    assert "nvidia.gpu.sm.activity" not in p or p["nvidia.gpu.sm.activity"] == []


def test_dcgm_requested_without_bindings_says_what_is_missing(
    sim, metrics, instrumentor, caplog, monkeypatch
):
    monkeypatch.setitem(__import__("sys").modules, "pydcgm", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="visiontel.gpu"):
        instrumentor.instrument(meter_provider=metrics.provider, backend="dcgm", events=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "visiontel.gpu"]
    assert len(messages) == 1 and "pydcgm" in messages[0]
    assert metrics.collect() == {}
