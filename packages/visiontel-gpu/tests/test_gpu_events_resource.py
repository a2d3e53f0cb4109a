"""XID events as log records, and the resource detector, on the NVML simulator."""

from __future__ import annotations

from gpu_test_helpers import GUARD_S, eventually, point, two_gpus
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource, get_aggregated_resources

from visiontel.gpu.resource import GPUResourceDetector
from visiontel.gpu.testing import EVENT_DOUBLE_BIT_ECC, EVENT_XID, NvmlSimulator

GPU0 = "GPU-00000000-1111-2222-3333-444455556666"
GPU1 = "GPU-00000001-1111-2222-3333-444455556666"


def test_xid_events_become_log_records_with_the_gpu_identity(sim, metrics, instrumentor):
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    instrumentor.instrument(
        meter_provider=metrics.provider, logger_provider=provider, interval=60.0
    )
    sim.write(
        two_gpus(**{"event.0": f"1,{EVENT_XID},79", "event.1": f"0,{EVENT_DOUBLE_BIT_ECC},0"})
    )
    eventually(lambda: len(exporter.get_finished_logs()) >= 2, "two event log records")
    records = [r.log_record for r in exporter.get_finished_logs()]
    xid = next(r for r in records if r.attributes["nvidia.gpu.event.type"] == "xid")
    assert xid.attributes["nvidia.gpu.xid"] == 79
    assert xid.attributes["hw.id"] == GPU1
    assert xid.attributes["hw.model"] == "NVIDIA H100 80GB HBM3"
    assert xid.severity_number == SeverityNumber.ERROR
    assert "XID 79" in str(xid.body) and GPU1 in str(xid.body)
    ecc = next(r for r in records if r.attributes["nvidia.gpu.event.type"] == "double_bit_ecc")
    assert ecc.attributes["hw.name"] == "GPU 0"
    # Collection is not held up by the event thread waiting in NVML: with that wait stuck
    # until release(), a sweep still completes and its readings are exported.
    sim.write(two_gpus(**{"gpu.0.memory.used": 1234, "delay.nvmlEventSetWait": "hang"}))
    eventually(lambda: sim.hung_calls() == 1, "the event thread to wait inside NVML")
    assert instrumentor.refresh(timeout=GUARD_S)
    assert point(metrics.collect(), "hw.gpu.memory.usage", **{"hw.id": GPU0}) == 1234
    assert sim.hung_calls() == 1  # the event wait was stuck throughout
    sim.release()
    provider.shutdown()


def test_resource_detector_describes_the_gpus(sim):
    sim.write(
        {
            "device_count": 3,
            "cuda_version": 12040,
            **NvmlSimulator.gpu(0),
            **NvmlSimulator.gpu(1),
            **NvmlSimulator.gpu(2, model="NVIDIA L4"),
        }
    )
    resource = get_aggregated_resources([GPUResourceDetector()], Resource.get_empty())
    attrs = resource.attributes
    assert attrs["nvidia.gpu.count"] == 3
    assert tuple(attrs["nvidia.gpu.models"]) == ("NVIDIA H100 80GB HBM3", "NVIDIA L4")
    assert attrs["nvidia.gpu.driver_version"] == "550.54.15"
    assert attrs["nvidia.gpu.cuda_version"] == "12.4"


def test_resource_detector_without_gpu_is_empty(sim):
    sim.write({"device_count": 0})
    assert GPUResourceDetector().detect().attributes == {}


def test_detector_is_found_through_its_entry_point(sim, monkeypatch):
    monkeypatch.setenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "gpu")
    assert Resource.create().attributes["nvidia.gpu.count"] == 2


def test_simulator_builds_from_the_command_line(tmp_path, capsys):
    from visiontel.gpu.testing import main

    assert main([str(tmp_path / "sim")]) == 0
    library = capsys.readouterr().out.strip()
    assert library.endswith("libnvidia-ml.so.1") and (tmp_path / "sim").exists()
    assert main([]) == 2
