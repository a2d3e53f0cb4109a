"""Obtain the binaries the collector recipes are tested with, and cache them.

    python collector-config/toolchain.py otelcol    # build otelcol-visiontel, print its path
    python collector-config/toolchain.py promtool   # Debian's promtool, print its path
    python collector-config/toolchain.py prometheus # Debian's Prometheus server, print its path
    python collector-config/toolchain.py jaeger     # Jaeger v2 built from Go modules

Everything lands under ~/.cache/visiontel/ (or $VISIONTEL_CACHE_DIR), keyed by what
determines it: the collector by a hash of builder/manifest.yaml and the builder version,
the Debian tools by package version, Jaeger by its pinned module version. A second call
finds the cache and returns at once. Progress goes to stderr; stdout is only the path,
so the nox sessions can capture it.

Builds run under `nice` with one package compiled at a time (GOFLAGS=-p=1): the
machines this project runs on have two cores shared with other work.

Standard library only: nox runs this before any virtualenv has our dependencies.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
MANIFEST = HERE / "builder" / "manifest.yaml"
JAEGER_MODULE_DIR = HERE / "stack" / "jaeger"

# The builder's version must equal the core version the manifest pins.
BUILDER_VERSION = "v0.161.0"
# Debian bookworm's prometheus package: ships both prometheus and promtool.
PROMETHEUS_DEB = "prometheus"


def cache_root() -> pathlib.Path:
    root = os.environ.get("VISIONTEL_CACHE_DIR") or os.path.expanduser("~/.cache/visiontel")
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _say(message: str) -> None:
    print(f"[toolchain] {message}", file=sys.stderr, flush=True)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # One package at a time, two threads: leaves room for everyone else on the box.
    env.setdefault("GOFLAGS", "-p=1")
    env.setdefault("GOMAXPROCS", "2")
    env["CGO_ENABLED"] = "0"
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: install Go >= 1.25 (the collector v0.161 needs it)")
    return env


def _nice(cmd: list[str]) -> list[str]:
    return ["nice", "-n", "10", *cmd] if shutil.which("nice") else cmd


def _run(
    cmd: list[str], *, cwd: pathlib.Path | None = None, env: dict[str, str] | None = None
) -> None:
    _say("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=sys.stderr)


def _install_atomically(built: pathlib.Path, target: pathlib.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.copy2(built, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, target)


def manifest_key() -> str:
    digest = hashlib.sha256()
    digest.update(BUILDER_VERSION.encode())
    digest.update(MANIFEST.read_bytes())
    return digest.hexdigest()[:16]


def builder() -> pathlib.Path:
    """The OpenTelemetry Collector Builder at BUILDER_VERSION, installed with go install."""
    gobin = cache_root() / "builder" / BUILDER_VERSION
    binary = gobin / "builder"
    if binary.exists():
        return binary
    env = _go_env()
    env["GOBIN"] = str(gobin)
    _run(
        _nice(["go", "install", f"go.opentelemetry.io/collector/cmd/builder@{BUILDER_VERSION}"]),
        env=env,
    )
    return binary


def otelcol() -> pathlib.Path:
    """otelcol-visiontel built from builder/manifest.yaml (cached by manifest hash)."""
    target = cache_root() / "otelcol-visiontel" / manifest_key() / "otelcol-visiontel"
    if target.exists():
        _say(f"cached: {target}")
        return target
    ocb = builder()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="otelcol-build-", dir=cache_root()) as work:
        # output_path in the manifest is relative: the build happens in `work`.
        _run(_nice([str(ocb), "--config", str(MANIFEST)]), cwd=pathlib.Path(work), env=_go_env())
        _install_atomically(pathlib.Path(work) / "_build" / "otelcol-visiontel", target)
    _say(f"built {target} in {time.monotonic() - started:.0f} s")
    return target


def _debian_package(package: str, binary: str) -> pathlib.Path:
    """A binary from a Debian package, unpacked (not installed) into the cache.

    `apt-get download` + `dpkg-deb -x` leaves the system untouched: no service is
    started, nothing to uninstall, and several versions could sit side by side.
    """
    key = _apt_candidate(package).replace(":", "_")
    root = cache_root() / "debian" / f"{package}-{key}"
    target = root / "usr" / "bin" / binary
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="deb-", dir=cache_root()) as work:
        _run(["apt-get", "download", package], cwd=pathlib.Path(work))
        debs = glob.glob(os.path.join(work, f"{package}_*.deb"))
        if not debs:
            raise SystemExit(f"apt-get download {package} produced no .deb")
        staging = pathlib.Path(work) / "root"
        _run(["dpkg-deb", "-x", debs[0], str(staging)])
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.move(str(staging), root)
    if not target.exists():
        raise SystemExit(f"{package} has no usr/bin/{binary}")
    return target


def _apt_candidate(package: str) -> str:
    def candidate() -> str:
        out = subprocess.run(
            ["apt-cache", "policy", package], check=False, capture_output=True, text=True
        )
        for line in out.stdout.splitlines():
            if line.strip().startswith("Candidate:"):
                value = line.split(":", 1)[1].strip()
                return "" if value == "(none)" else value
        return ""

    found = candidate()
    if not found:
        # A fresh machine has no package lists yet.
        _run(["apt-get", "update", "-qq"])
        found = candidate()
    if not found:
        raise SystemExit(f"Debian package {package!r} not found by apt (after apt-get update)")
    return found


def promtool() -> pathlib.Path:
    return _debian_package(PROMETHEUS_DEB, "promtool")


def prometheus() -> pathlib.Path:
    return _debian_package(PROMETHEUS_DEB, "prometheus")


def jaeger() -> pathlib.Path:
    """Jaeger v2 from the pinned module in stack/jaeger/go.mod (cached by its hash)."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((JAEGER_MODULE_DIR / name).read_bytes())
    target = cache_root() / "jaeger" / digest.hexdigest()[:16] / "jaeger"
    if target.exists():
        return target
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jaeger-build-", dir=cache_root()) as work:
        out = pathlib.Path(work) / "jaeger"
        _run(
            _nice(
                [
                    "go",
                    "build",
                    "-trimpath",
                    "-ldflags=-s -w",
                    "-o",
                    str(out),
                    "github.com/jaegertracing/jaeger/cmd/jaeger",
                ]
            ),
            cwd=JAEGER_MODULE_DIR,
            env=_go_env(),
        )
        _install_atomically(out, target)
    _say(f"built {target} in {time.monotonic() - started:.0f} s")
    return target


TOOLS = {
    "otelcol": otelcol,
    "promtool": promtool,
    "prometheus": prometheus,
    "jaeger": jaeger,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in TOOLS:
        print(f"usage: toolchain.py {{{','.join(TOOLS)}}}", file=sys.stderr)
        return 2
    print(TOOLS[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
