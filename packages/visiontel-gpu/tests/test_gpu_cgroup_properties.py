"""Property tests: the cgroup parser recovers ids from any runtime layout, never raises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from visiontel.gpu._cgroup import parse_cgroup

uids = st.uuids().map(str)
cids = st.binary(min_size=32, max_size=32).map(bytes.hex)
qos = st.sampled_from(["", "burstable", "besteffort"])
layouts = st.sampled_from(["cgroupfs", "systemd-containerd", "systemd-crio", "systemd-docker"])


def render(layout: str, qos_class: str, uid: str, cid: str, hierarchy: int) -> str:
    if layout == "cgroupfs":
        middle = f"/{qos_class}" if qos_class else ""
        return f"{hierarchy}:memory:/kubepods{middle}/pod{uid}/{cid}"
    prefix = {"systemd-containerd": "cri-containerd", "systemd-crio": "crio"}.get(layout, "docker")
    slice_ = f"kubepods-{qos_class}" if qos_class else "kubepods"
    outer = f"/kubepods-{qos_class}.slice" if qos_class else ""
    pod = f"{slice_}-pod{uid.replace('-', '_')}.slice"
    return f"{hierarchy}::/kubepods.slice{outer}/{pod}/{prefix}-{cid}.scope"


@given(layouts, qos, uids, cids, st.integers(0, 13))
def test_pod_and_container_are_recovered(layout, qos_class, uid, cid, hierarchy):
    text = render(layout, qos_class, uid, cid, hierarchy) + "\n"
    assert parse_cgroup(text) == {"k8s.pod.uid": uid, "container.id": cid}


@given(st.text())
def test_arbitrary_text_never_raises(text):
    result = parse_cgroup(text)
    assert set(result) <= {"k8s.pod.uid", "container.id"}
