"""Kubernetes and container identity of a process, from /proc alone (no kubelet, no API).

The pod UID and container id are in the process's cgroup path, in every layout the common
runtimes write:

    cgroup v1, cgroupfs driver:  11:memory:/kubepods/burstable/pod<uid>/<container id>
    systemd driver (v1 or v2):   0::/kubepods.slice/kubepods-besteffort.slice/
                                 kubepods-besteffort-pod<uid_with_underscores>.slice/
                                 cri-containerd-<id>.scope  (or crio-<id>, docker-<id>)
    plain Docker:                0::/system.slice/docker-<id>.scope, or 12:cpu:/docker/<id>

The namespace and pod name are not in the cgroup; they are read, when /proc lets us, from the
service-account mount every pod gets (…/serviceaccount/namespace, through /proc/<pid>/root)
and from the HOSTNAME the kubelet sets (/proc/<pid>/environ). Both need the permissions a
node agent usually has; without them those two attributes are simply absent.
"""

from __future__ import annotations

import os
import re

from opentelemetry.semconv._incubating.attributes.k8s_attributes import (
    K8S_NAMESPACE_NAME,
    K8S_POD_NAME,
    K8S_POD_UID,
)
from opentelemetry.semconv.attributes.container_attributes import CONTAINER_ID

_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_CONTAINER = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")
_SA_NAMESPACE = "root/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def parse_cgroup(text: str) -> dict[str, str]:
    """k8s.pod.uid and container.id found in the text of a /proc/<pid>/cgroup file."""
    attributes: dict[str, str] = {}
    for line in text.splitlines():
        path = line.split(":", 2)[-1].strip()
        if not path:
            continue
        pod = _POD.search(path)
        if pod and K8S_POD_UID not in attributes:
            attributes[K8S_POD_UID] = pod.group(1).replace("_", "-")
        last = path.rstrip("/").rsplit("/", 1)[-1]
        container = _CONTAINER.search(last)
        if container and CONTAINER_ID not in attributes:
            attributes[CONTAINER_ID] = container.group(1)
    return attributes


def _read(path: str, limit: int = 65536) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def process_attributes(proc_root: str, pid: int) -> dict[str, str]:
    """Everything /proc tells about a process's pod and container; {} when it tells nothing."""
    base = os.path.join(proc_root, str(pid))
    raw = _read(os.path.join(base, "cgroup"))
    if raw is None:
        return {}
    attributes = parse_cgroup(raw.decode("utf-8", "replace"))
    if K8S_POD_UID not in attributes:
        return attributes
    namespace = _read(os.path.join(base, _SA_NAMESPACE), 256)
    if namespace and namespace.strip():
        attributes[K8S_NAMESPACE_NAME] = namespace.decode("utf-8", "replace").strip()
    environ = _read(os.path.join(base, "environ"))
    if environ:
        for entry in environ.split(b"\0"):
            if entry.startswith(b"HOSTNAME="):
                attributes[K8S_POD_NAME] = entry[len(b"HOSTNAME=") :].decode("utf-8", "replace")
                break
    return attributes


class ProcessAttributes:
    """Caches attributes per pid; entries for pids no longer on a GPU are dropped each sweep."""

    def __init__(self, proc_root: str) -> None:
        self._proc_root = proc_root
        self._cache: dict[int, dict[str, str]] = {}

    def get(self, pid: int) -> dict[str, str]:
        found = self._cache.get(pid)
        if found is None:
            found = process_attributes(self._proc_root, pid)
            self._cache[pid] = found
        return found

    def retain(self, pids: set[int]) -> None:
        for pid in [p for p in self._cache if p not in pids]:
            del self._cache[pid]
