"""The Argo Rollouts and Flagger CRDs the canary manifests are checked against, cached.

    python collector-config/canary/crds.py     # fetch (once), print each cached CRD's path

Each CRD file comes from its project's Go module zip on the Go module proxy (a module zip
holds the whole repository), at a pinned version. The zip must have the pinned go.sum
checksum (`h1:`, the hash Go's checksum database publishes, computed here as Go's
dirhash.Hash1 does) and the extracted file the pinned SHA-256; a cached file is checked
against that SHA-256 on every use. Files land under ~/.cache/visiontel/crds/ (or
$VISIONTEL_CACHE_DIR/crds/).

Standard library only, like toolchain.py, whose cache root it shares.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import pathlib
import sys
import urllib.request
import zipfile
from typing import NamedTuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from toolchain import cache_root  # noqa: E402

PROXY = os.environ.get("VISIONTEL_GO_PROXY", "https://proxy.golang.org")


class Module(NamedTuple):
    path: str
    version: str
    h1: str  # go.sum checksum of the module zip


class CRD(NamedTuple):
    module: Module
    file: str  # path inside the repository
    sha256: str


# Newest releases the Go module proxy serves (checked 2026-12-04: `go list -m -versions`
# lists nothing newer than v1.36.1 for Flagger).
ARGO_ROLLOUTS = Module(
    "github.com/argoproj/argo-rollouts",
    "v1.10.2",
    "h1:sEPWsY+HUvnXj3Vh0ejb+GDTceQ/palqhFo2FVQJMk0=",
)
FLAGGER = Module(
    "github.com/fluxcd/flagger", "v1.36.1", "h1:X2PumtNwZz9YSGaOtZLFm2zAKLgHhFkbNv8beg7ifyc="
)
CRDS = {
    "analysis-template": CRD(
        ARGO_ROLLOUTS,
        "manifests/crds/analysis-template-crd.yaml",
        "bb41aa62329355c5ffb38031822b4515cc2f60c5a94fcae5df6099ddbf8c5a08",
    ),
    "rollout": CRD(
        ARGO_ROLLOUTS,
        "manifests/crds/rollout-crd.yaml",
        "1562decc7b3720c31cbe382eeb62b6fbfd236f8e81a1f98644a9774d1e7d7933",
    ),
    # Canary, MetricTemplate and AlertProvider in one file.
    "flagger": CRD(
        FLAGGER,
        "artifacts/flagger/crd.yaml",
        "64a2daef9dc9d248a98347f186c225e521a2dc1d63e83f8d5ff15be424a0e85f",
    ),
}


def _say(message: str) -> None:
    print(f"[crds] {message}", file=sys.stderr, flush=True)


def hash1(archive: zipfile.ZipFile) -> str:
    """Go's dirhash.Hash1 of a module zip: what go.sum and sum.golang.org hold."""
    lines = "".join(
        f"{hashlib.sha256(archive.read(name)).hexdigest()}  {name}\n"
        for name in sorted(archive.namelist())
        if not name.endswith("/")
    )
    return "h1:" + base64.b64encode(hashlib.sha256(lines.encode()).digest()).decode()


def _escaped(module_path: str) -> str:
    # The proxy protocol's case encoding: an upper-case letter becomes "!" + lower case.
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in module_path)


def _download(module: Module) -> zipfile.ZipFile:
    url = f"{PROXY}/{_escaped(module.path)}/@v/{module.version}.zip"
    _say(f"GET {url}")
    with urllib.request.urlopen(url, timeout=120) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    found = hash1(archive)
    if found != module.h1:
        raise SystemExit(f"{module.path}@{module.version}: checksum {found}, pinned {module.h1}")
    return archive


def _cached(crd: CRD) -> pathlib.Path:
    folder = cache_root() / "crds" / f"{crd.module.path.replace('/', '_')}@{crd.module.version}"
    return folder / crd.file


def path(name: str) -> pathlib.Path:
    """The cached CRD file `name` (a key of CRDS), fetched and checked on the first call."""
    crd = CRDS[name]
    target = _cached(crd)
    if target.exists():
        if hashlib.sha256(target.read_bytes()).hexdigest() == crd.sha256:
            return target
        _say(f"{target} does not match its pinned SHA-256: fetching it again")
    archive = _download(crd.module)
    # Every CRD of this module from the one download.
    for other in (c for c in CRDS.values() if c.module == crd.module):
        data = archive.read(f"{other.module.path}@{other.module.version}/{other.file}")
        if hashlib.sha256(data).hexdigest() != other.sha256:
            raise SystemExit(
                f"{other.file} of {other.module.path}@{other.module.version}: "
                "SHA-256 differs from the pin"
            )
        cached = _cached(other)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, cached)
    return target


def main() -> int:
    for name in CRDS:
        print(path(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
