"""Obtain the binaries the collector recipes are tested with, and cache them.

    python collector-config/toolchain.py otelcol    # build otelcol-visiontel, print its path
    python collector-config/toolchain.py promtool   # Debian's promtool, print its path
    python collector-config/toolchain.py prometheus # Debian's Prometheus server, print its path
    python collector-config/toolchain.py jaeger     # Jaeger v2 built from Go modules
    python collector-config/toolchain.py victorialogs  # VictoriaLogs built from its Go module
    python collector-config/toolchain.py zipkin     # Zipkin's server (exec jar, Maven Central)
    python collector-config/toolchain.py chromium   # Debian's Chromium (apt-get install)

Everything lands under ~/.cache/visiontel/ (or $VISIONTEL_CACHE_DIR), keyed by what
determines it: the collector by a hash of builder/manifest.yaml and the builder version,
the Debian tools by package version, Jaeger by its pinned module version, Zipkin's jar by
its version (Chromium alone is installed system-wide, by apt-get). A second call
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
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
MANIFEST = HERE / "builder" / "manifest.yaml"
JAEGER_MODULE_DIR = HERE / "stack" / "jaeger"

# The builder's version must equal the core version the manifest pins.
BUILDER_VERSION = "v0.161.0"
# Debian bookworm's prometheus package: ships both prometheus and promtool.
PROMETHEUS_DEB = "prometheus"
# Its web UI (the classic one: Debian builds no React UI) links its scripts and styles out
# of Debian's JavaScript packages (usr/share/prometheus/web/static/jquery ->
# ../../../javascript/jquery, ...): without them the page loads and shows no query result.
# Unpacked into the same root, so those relative links resolve.
PROMETHEUS_WEB_DEBS = (
    "fonts-glyphicons-halflings",
    "libjs-bootstrap4",
    "libjs-d3",
    "libjs-eonasdan-bootstrap-datetimepicker",
    "libjs-jquery",
    "libjs-jquery-hotkeys",
    "libjs-moment",
    "libjs-moment-timezone",
    "libjs-mustache",
    "libjs-popper.js",
    "libjs-rickshaw",
)
# VictoriaLogs (Apache-2.0): the local stack's log store. v1.52.2 is the newest release the
# Go module proxy serves that builds with Go 1.26 (its go.mod asks for go 1.26.5).
VICTORIALOGS_VERSION = "v1.52.2"
VICTORIALOGS_PACKAGE = "github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs"
VICTORIAMETRICS_BUILDINFO = "github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo"
# Zipkin's server: the local stack's trace UI (Lens, at /zipkin/). The `exec` jar is a
# Spring Boot fat jar that runs on Java 17. Maven Central publishes a .sha1 but no .sha256
# for it: both are checked, the SHA-256 pinned here (measured on the downloaded jar).
ZIPKIN_VERSION = "3.5.1"
ZIPKIN_SHA256 = "7ac633a6832647e71e50012a5e3e91fbc7054414955261724526030faf271d8d"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"


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


def _debian_package(package: str, binary: str, extras: tuple[str, ...] = ()) -> pathlib.Path:
    """A binary from a Debian package, unpacked (not installed) into the cache, with the
    `extras` packages unpacked into the same root.

    `apt-get download` + `dpkg-deb -x` leaves the system untouched: no service is
    started, nothing to uninstall, and several versions could sit side by side.
    """
    key = _apt_candidate(package).replace(":", "_")
    root = cache_root() / "debian" / f"{package}-{key}"
    target = root / "usr" / "bin" / binary
    # One marker per set of extras: a root unpacked before extras were asked for is redone.
    marker = root / ".visiontel-extras" / hashlib.sha256(" ".join(extras).encode()).hexdigest()[:16]
    if target.exists() and marker.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="deb-", dir=cache_root()) as work:
        names = (package, *extras)
        _run(["apt-get", "download", *names], cwd=pathlib.Path(work))
        staging = pathlib.Path(work) / "root"
        for name in names:
            debs = glob.glob(os.path.join(work, f"{name}_*.deb"))
            if not debs:
                raise SystemExit(f"apt-get download {name} produced no .deb")
            _run(["dpkg-deb", "-x", debs[0], str(staging)])
        (staging / marker.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (staging / marker.relative_to(root)).write_text("\n".join(names) + "\n")
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
    return _debian_package(PROMETHEUS_DEB, "promtool", PROMETHEUS_WEB_DEBS)


def prometheus() -> pathlib.Path:
    """Debian's Prometheus with its web UI's assets: start it with `--web.local-assets`
    pointing at usr/share/prometheus/web/ beside the binary (stack.py does)."""
    return _debian_package(PROMETHEUS_DEB, "prometheus", PROMETHEUS_WEB_DEBS)


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


def _download(url: str, target: pathlib.Path) -> None:
    _say(f"GET {url}")
    with urllib.request.urlopen(url, timeout=120) as response, target.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _digest(path: pathlib.Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def zipkin() -> pathlib.Path:
    """Zipkin's server exec jar at ZIPKIN_VERSION from Maven Central (cached by version).

    Checked against the pinned SHA-256 and Maven Central's published .sha1 before it is
    installed (atomically: a half-downloaded jar never sits at the cached path).
    """
    name = f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"
    target = cache_root() / "zipkin" / ZIPKIN_VERSION / name
    if target.exists():
        return target
    url = f"{MAVEN_CENTRAL}/io/zipkin/zipkin-server/{ZIPKIN_VERSION}/{name}"
    with tempfile.TemporaryDirectory(prefix="zipkin-", dir=cache_root()) as work:
        jar = pathlib.Path(work) / name
        _download(url, jar)
        sha1_file = pathlib.Path(work) / (name + ".sha1")
        _download(url + ".sha1", sha1_file)
        published = sha1_file.read_text().split()[0].lower()
        sha1, sha256 = _digest(jar, "sha1"), _digest(jar, "sha256")
        if sha256 != ZIPKIN_SHA256 or sha1 != published:
            raise SystemExit(
                f"{url}: SHA-256 {sha256} (pinned {ZIPKIN_SHA256}), SHA-1 {sha1} "
                f"(published {published}): refusing to install it"
            )
        _install_atomically(jar, target)
    _say(f"fetched {target}")
    return target


def chromium() -> pathlib.Path:
    """Debian's Chromium, for the headless-browser test of Zipkin's UI: installed with
    apt-get when missing (a browser needs its shared libraries and fonts in place, which an
    unpacked .deb would not bring), so a CI machine sets itself up. Needs root."""
    target = pathlib.Path("/usr/bin/chromium")
    if target.exists():
        return target
    if os.geteuid() != 0:
        raise SystemExit("chromium is not installed: run `apt-get install -y chromium` as root")
    _apt_candidate("chromium")  # runs apt-get update first on a machine without package lists
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "install", "-y", "-q", "chromium"], env=env)
    if not target.exists():
        raise SystemExit("apt-get install chromium left no /usr/bin/chromium")
    return target


def victorialogs() -> pathlib.Path:
    """VictoriaLogs' single-node server at VICTORIALOGS_VERSION (cached by version).

    Its go.mod has no replace directives, so `go install <package>@<version>` builds the
    release as published (module checksums verified as for any download) and, unlike Jaeger,
    no pinning module is needed. CGO_ENABLED=0 (_go_env) selects VictoriaMetrics' pure-Go
    zstd, as upstream's `-pure` build does.
    """
    target = cache_root() / "victorialogs" / VICTORIALOGS_VERSION / "victoria-logs"
    if target.exists():
        return target
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="victorialogs-build-", dir=cache_root()) as work:
        env = _go_env()
        env["GOBIN"] = work
        # As upstream's Makefile does: the version shows in `-version` and on its / page.
        version = f"{VICTORIAMETRICS_BUILDINFO}.Version=victoria-logs-{VICTORIALOGS_VERSION}"
        package = f"{VICTORIALOGS_PACKAGE}@{VICTORIALOGS_VERSION}"
        _run(
            _nice(["go", "install", "-trimpath", f"-ldflags=-s -w -X {version}", package]),
            env=env,
        )
        _install_atomically(pathlib.Path(work) / "victoria-logs", target)
    _say(f"built {target} in {time.monotonic() - started:.0f} s")
    return target


TOOLS = {
    "otelcol": otelcol,
    "promtool": promtool,
    "prometheus": prometheus,
    "jaeger": jaeger,
    "victorialogs": victorialogs,
    "zipkin": zipkin,
    "chromium": chromium,
}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="toolchain.py",
        description="Build or fetch one binary the collector recipes are tested with, cache it "
        "under ~/.cache/visiontel/ (or $VISIONTEL_CACHE_DIR) and print its path on stdout "
        "(progress goes to stderr). A second call finds the cache and returns at once.",
    )
    parser.add_argument("tool", choices=list(TOOLS), help="what to obtain")
    args = parser.parse_args(argv)  # a bad or missing tool: usage and exit code 2
    print(TOOLS[args.tool]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
