"""Per-process series and their Kubernetes/container attribution from fabricated /proc trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpu_test_helpers import point, two_gpus

from visiontel.gpu._cgroup import parse_cgroup, process_attributes

UID = "0f6a1c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
CID = "4c1f7e0b9a8d6c5b4a3928171615141312111009080706050403020100aabbcc"[:64]

CGROUPS = {
    "v1 cgroupfs (containerd, docker shim)": (
        f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n",
        {"k8s.pod.uid": UID, "container.id": CID},
    ),
    "v2 systemd containerd": (
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n",
        {"k8s.pod.uid": UID, "container.id": CID},
    ),
    "v1 systemd cri-o": (
        "5:memory:/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n",
        {"k8s.pod.uid": UID, "container.id": CID},
    ),
    "v2 guaranteed pod, docker": (
        f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/docker-{CID}.scope\n",
        {"k8s.pod.uid": UID, "container.id": CID},
    ),
    "plain docker, no kubernetes": (
        f"0::/system.slice/docker-{CID}.scope\n",
        {"container.id": CID},
    ),
    "cgroup v1 docker cgroupfs": (f"4:devices:/docker/{CID}\n", {"container.id": CID}),
    "host process": ("0::/user.slice/user-1000.slice/session-3.scope\n", {}),
    "empty": ("", {}),
}


@pytest.mark.parametrize("text, expected", CGROUPS.values(), ids=CGROUPS.keys())
def test_parse_cgroup_layouts(text, expected):
    assert parse_cgroup(text) == expected


def fake_process(root: Path, pid: int, cgroup: str, namespace: str | None, hostname: str | None):
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    if namespace is not None:
        sa = d / "root/var/run/secrets/kubernetes.io/serviceaccount"
        sa.mkdir(parents=True)
        (sa / "namespace").write_text(namespace + "\n")
    env = [b"PATH=/usr/bin"] + ([f"HOSTNAME={hostname}".encode()] if hostname else [])
    (d / "environ").write_bytes(b"\0".join(env) + b"\0")


def test_process_attributes_read_namespace_and_pod_name(tmp_path):
    fake_process(tmp_path, 42, CGROUPS["v2 systemd containerd"][0], "vision", "detector-7d9f-abc")
    assert process_attributes(str(tmp_path), 42) == {
        "k8s.pod.uid": UID,
        "container.id": CID,
        "k8s.namespace.name": "vision",
        "k8s.pod.name": "detector-7d9f-abc",
    }
    assert process_attributes(str(tmp_path), 43) == {}  # exited, or no permission


def test_process_series_carry_pid_and_pod(sim, metrics, instrumentor, tmp_path):
    fake_process(tmp_path, 4242, CGROUPS["v2 systemd containerd"][0], "vision", "detector-0")
    fake_process(tmp_path, 777, CGROUPS["host process"][0], None, None)
    sim.write(
        two_gpus(
            **{
                "gpu.0.process.0": f"4242,{3 * 1024**3},0,0",
                "gpu.0.process.1": "777,1048576,0,0",
                "gpu.0.process_utilization.0": "4242,60,20,0,5",
                "gpu.1.process_utilization.0": "777,10,0,0,0",
            }
        )
    )
    instrumentor.instrument(
        meter_provider=metrics.provider, proc_root=str(tmp_path), events=False, interval=60.0
    )
    p = metrics.collect()
    gpu0 = "GPU-00000000-1111-2222-3333-444455556666"
    gpu1 = "GPU-00000001-1111-2222-3333-444455556666"
    mem = "nvidia.gpu.process.memory.usage"
    assert point(p, mem, **{"process.pid": 4242, "hw.id": gpu0}) == 3 * 1024**3
    attrs = next(a for a, _ in p[mem] if a["process.pid"] == 4242)
    assert attrs["k8s.pod.uid"] == UID
    assert attrs["k8s.namespace.name"] == "vision"
    assert attrs["k8s.pod.name"] == "detector-0"
    assert attrs["container.id"] == CID
    assert "nvidia.gpu.mig.gpu_instance_id" not in attrs  # GPU 0 is not in MIG mode
    host = next(a for a, _ in p[mem] if a["process.pid"] == 777)
    assert not any(k.startswith(("k8s.", "container.")) for k in host)
    util = "nvidia.gpu.process.utilization"
    assert point(p, util, **{"process.pid": 4242, "hw.gpu.task": "general"}) == 0.6
    assert point(p, util, **{"process.pid": 4242, "hw.gpu.task": "decoder"}) == 0.05
    assert point(p, util, **{"process.pid": 777, "hw.id": gpu1, "hw.gpu.task": "general"}) == 0.1


def test_processes_can_be_turned_off(sim, metrics, instrumentor):
    sim.write(two_gpus(**{"gpu.0.process.0": "4242,1000,0,0"}))
    calls = sim.call_count()
    instrumentor.instrument(
        meter_provider=metrics.provider, processes=False, events=False, interval=60.0
    )
    p = metrics.collect()
    assert "nvidia.gpu.process.memory.usage" not in p or p["nvidia.gpu.process.memory.usage"] == []
    assert sim.call_count() > calls


def test_processes_on_a_mig_gpu_carry_their_gpu_instance(sim, metrics, instrumentor):
    sim.write(two_gpus(**{"gpu.1.mig.count": 1, "gpu.1.process.0": "5150,4096,3,0"}))
    instrumentor.instrument(meter_provider=metrics.provider, events=False, interval=60.0)
    p = metrics.collect()
    (attrs,) = [a for a, _ in p["nvidia.gpu.process.memory.usage"] if a["process.pid"] == 5150]
    assert attrs["nvidia.gpu.mig.gpu_instance_id"] == 3


def test_many_processes_and_unavailable_memory(sim, metrics, instrumentor):
    # More processes than the first buffer holds (NVML answers INSUFFICIENT_SIZE, we grow),
    # and one whose memory NVML cannot tell (NVML_VALUE_NOT_AVAILABLE): no series for it.
    procs = {f"gpu.0.process.{n}": f"{3000 + n},{(n + 1) * 1024},0,0" for n in range(20)}
    procs["gpu.0.process.20"] = "3999,18446744073709551615,0,0"
    procs.update({f"gpu.0.process_utilization.{n}": f"{3000 + n},{n},0,0,0" for n in range(20)})
    sim.write(two_gpus(**procs))
    instrumentor.instrument(meter_provider=metrics.provider, events=False, interval=60.0)
    p = metrics.collect()
    memory = {a["process.pid"]: v for a, v in p["nvidia.gpu.process.memory.usage"]}
    assert memory == {3000 + n: (n + 1) * 1024 for n in range(20)}
    general = {
        a["process.pid"]: v
        for a, v in p["nvidia.gpu.process.utilization"]
        if a["hw.gpu.task"] == "general"
    }
    assert general == {3000 + n: n / 100 for n in range(20)}
