"""A simulated libnvidia-ml.so.1 for testing NVML consumers on machines without a GPU.

    sim = NvmlSimulator.build(tmp_path)          # compiles nvml_sim.c with the C compiler
    sim.write({"device_count": 2, **sim.gpu(0), **sim.gpu(1), "gpu.1.error.all": 15})
    os.environ.update(sim.env())                 # NVML_SIM_SCRIPT + VISIONTEL_GPU_NVML_LIBRARY

The real nvidia-ml-py bindings then load it like the driver's library.

`NvmlSimulator.build(tmp_path, hide=["nvmlDeviceGetProcessUtilization", ...])` builds a
library (once per set of names, in a subdirectory of its own, with its own script file) in
which those entry points are not exported at all: a linker version script makes them local.
nvidia-ml-py's lookup of a hidden name then fails with NVML_ERROR_FUNCTION_NOT_FOUND, exactly
as on a driver branch that predates the call (R470 has no
nvmlDeviceGetComputeRunningProcesses_v3, for instance). The three process-list generations
are exported with their own layouts: `_v3` and `_v2` fill nvmlProcessInfo_t (pid, used
bytes, GPU and compute instance), the unsuffixed v1 call the short nvmlProcessInfo_v1_t
(pid, used bytes). `visiontel.gpu.testing.degrade` says what each optional entry point feeds.

Script keys (one `key=value` per line; an unset value answers NVML_ERROR_NOT_SUPPORTED):

    device_count, init_error (an NVML return code for nvmlInit), driver_version,
    cuda_version (e.g. 12040; `!` for not supported), event.<n>=<gpu>,<event type>,<data>
    gpu.<i>.uuid / name / memory.total / memory.used / utilization.gpu / utilization.memory /
      encoder / decoder / temperature / power_mw / energy_mj / clock.sm / clock.mem /
      clocks_event_reasons / ecc.corrected / ecc.uncorrected / pcie.tx_kbps / pcie.rx_kbps /
      pcie.replay
    gpu.<i>.field.<nvml field id>=<value>  (or =!<code> for a per-field error; d:<x>, i:<x>,
      u:<x> answer as double, signed 64-bit or unsigned 32-bit instead of unsigned 64-bit)
    gpu.<i>.error.<nvml function name>=<code>  (`all` for every call: 15 is GPU_IS_LOST)
    gpu.<i>.delay.<nvml function name>=<ms>  (the call hangs that long holding the library
      lock, like a stuck driver; `hang`: until release(), at most two minutes)
    delay.nvmlEventSetWait=<ms> or hang  (each event wait first hangs, holding no lock)
    gpu.<i>.process.<n>=<pid>,<used bytes>,<gpu instance>,<compute instance>
    gpu.<i>.process_utilization.<n>=<pid>,<sm %>,<mem %>,<enc %>,<dec %>
    gpu.<i>.mig.count=<n>, gpu.<i>.mig.<j>.<key>  (MIG instances, same keys)

Each event is delivered once, in order. The library rereads the script when it changes (at
most every 20 ms), or at once on reload(). hung_calls() says how many calls are inside an
injected delay right now (a test waits on it instead of sleeping); release() ends them all
and skips delays until the next script is loaded. A hung device call holds the library
lock, so release() before write() while one is in progress: reload() waits for that lock.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

SOURCE = Path(__file__).with_name("nvml_sim.c")
LIBRARY_NAME = "libnvidia-ml.so.1"

# NVML return codes a script may inject.
NOT_SUPPORTED = 3
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
GPU_IS_LOST = 15
# nvmlEventType bits
EVENT_XID = 0x8
EVENT_DOUBLE_BIT_ECC = 0x2


class NvmlSimulator:
    def __init__(self, library: Path, script: Path) -> None:
        self.library = library
        self.script = script
        self.hidden: tuple[str, ...] = ()  # entry points this build does not export

    @classmethod
    def build(
        cls,
        directory: str | os.PathLike[str],
        compiler: str | None = None,
        *,
        hide: Iterable[str] = (),
    ) -> NvmlSimulator:
        """Compile the simulator into `directory` (once) and return a handle on it.

        `hide`: NVML entry points the library must not export (a subdirectory per set).
        """
        directory = Path(directory)
        hidden = sorted(set(hide))
        unknown = [name for name in hidden if name not in exported_functions()]
        if unknown:
            raise ValueError(f"the simulator does not implement {', '.join(unknown)}")
        if hidden:
            digest = hashlib.sha256("\n".join(hidden).encode()).hexdigest()[:12]
            directory = directory / f"hide-{digest}"
        directory.mkdir(parents=True, exist_ok=True)
        library = directory / LIBRARY_NAME
        if not library.exists() or library.stat().st_mtime < SOURCE.stat().st_mtime:
            _compile(directory, library, hidden, compiler)
        sim = cls(library, directory / "nvml_sim_script.txt")
        sim.hidden = tuple(hidden)
        if not sim.script.exists():
            sim.write({"device_count": 0})
        return sim

    def env(self) -> dict[str, str]:
        return {
            "NVML_SIM_SCRIPT": str(self.script),
            "VISIONTEL_GPU_NVML_LIBRARY": str(self.library),
        }

    def write(self, script: Mapping[str, object] | str) -> None:
        """Replace the script atomically, then make an in-process simulator reread it."""
        text = (
            script if isinstance(script, str) else "".join(f"{k}={v}\n" for k, v in script.items())
        )
        fd, tmp = tempfile.mkstemp(dir=self.script.parent, prefix=".script")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.script)
        self.reload()

    def reload(self) -> None:
        if os.environ.get("NVML_SIM_SCRIPT") == str(self.script):
            ctypes.CDLL(str(self.library)).nvmlSimReload()

    def call_count(self) -> int:
        """NVML calls made in this process so far (for benchmarks)."""
        fn = ctypes.CDLL(str(self.library)).nvmlSimCallCount
        fn.restype = ctypes.c_ulonglong
        return int(fn())

    def hung_calls(self) -> int:
        """Calls of this process inside an injected delay right now."""
        return int(ctypes.CDLL(str(self.library)).nvmlSimHungCount())

    def release(self) -> None:
        """End every injected delay in progress; none applies again until the next load."""
        ctypes.CDLL(str(self.library)).nvmlSimRelease()

    @staticmethod
    def gpu(
        index: int, *, model: str = "NVIDIA H100 80GB HBM3", full: bool = True
    ) -> dict[str, object]:
        """Script keys of a healthy GPU with every reading the producer uses."""
        g = f"gpu.{index}."
        keys: dict[str, object] = {
            g + "uuid": f"GPU-{index:08d}-1111-2222-3333-444455556666",
            g + "name": model,
            g + "memory.total": 80 * 1024**3,
            g + "memory.used": (10 + index) * 1024**3,
            g + "utilization.gpu": 75,
            g + "utilization.memory": 30,
        }
        if full:
            keys.update({
                g + "encoder": 10, g + "decoder": 20, g + "temperature": 61,
                g + "clock.sm": 1980, g + "clock.mem": 2619, g + "clocks_event_reasons": 0x4,
                g + "power_mw": 312_500, g + "energy_mj": 1_234_567_000,
                g + "ecc.corrected": 3, g + "ecc.uncorrected": 0, g + "pcie.replay": 7,
                g + "pcie.tx_kbps": 4_883, g + "pcie.rx_kbps": 8_789,
                g + "field.83": 1_234_567_000,  # energy, mJ
                g + "field.186": 312_500,  # instant power, mW
                g + "field.82": 55,  # memory temperature
                g + "field.5": 3, g + "field.6": 0,  # ECC corrected / uncorrected
                g + "field.94": 7,  # PCIe replays
                g + "field.142": 1, g + "field.143": 0, g + "field.144": 0, g + "field.145": 0,
                g + "field.197": 5_000_000, g + "field.198": 9_000_000,  # PCIe bytes
            })  # fmt: skip
        return keys


def exported_functions() -> frozenset[str]:
    """Every NVML entry point the simulator defines (what `hide` may name)."""
    text = SOURCE.read_text()
    return frozenset(re.findall(r"^(?:nvmlReturn_t|const char \*)\s*(nvml\w+)\(", text, re.M))


def _compile(directory: Path, library: Path, hidden: list[str], compiler: str | None) -> None:
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc or set CC)")
    out = directory / f".{LIBRARY_NAME}.tmp"
    # The soname lets a copy preloaded by path answer a later dlopen("libnvidia-ml.so.1").
    command = [cc, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{LIBRARY_NAME}", "-o", str(out)]
    if hidden:
        # A name listed as local wins over the `global: *` pattern: the rest stays exported.
        script = directory / "hide.map"
        script.write_text(
            "{\n  global: *;\n  local:\n" + "".join(f"    {n};\n" for n in hidden) + "};\n"
        )
        command.append(f"-Wl,--version-script={script}")
    subprocess.run([*command, str(SOURCE), "-lpthread"], check=True)
    out.replace(library)


def _hidden_names(value: str) -> list[str]:
    """``--hide`` NAME[,NAME...]: entry points the simulator implements, else a clear error."""
    import difflib

    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one or more NVML entry point names, e.g. "
                                         "--hide nvmlDeviceGetProcessUtilization")  # fmt: skip
    known = exported_functions()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise argparse.ArgumentTypeError(
                f"the simulator does not implement {name}{hint}; it implements: "
                + ", ".join(sorted(known))
            )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m visiontel.gpu.testing",
        description="Build the NVML simulator (a stand-in libnvidia-ml.so.1) into OUTPUT_DIR "
        "and print the library's path. Point VISIONTEL_GPU_NVML_LIBRARY at it, and "
        "NVML_SIM_SCRIPT at the script file next to it (nvml_sim_script.txt).",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder to build into")
    parser.add_argument(
        "--hide",
        metavar="NAME[,NAME...]",
        type=_hidden_names,
        action="extend",
        default=[],
        help="NVML entry points the library must not export, as on an older driver "
        "(repeatable; the library goes into a subfolder of its own per set of names)",
    )
    parser.add_argument(
        "--compiler",
        metavar="CC",
        default=None,
        help="the C compiler to build with (default: $CC, else cc or gcc on PATH)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m visiontel.gpu.testing OUTPUT_DIR [--hide NAME,...]``: build, print the path.

    Returns the exit code (2 for bad arguments, after argparse's message on stderr).
    """
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        sim = NvmlSimulator.build(args.output_dir, args.compiler, hide=args.hide)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"{parser.prog}: cannot build the simulator in {args.output_dir} ({exc}): "
              "install gcc or pass --compiler, and check that OUTPUT_DIR is writable",
              file=sys.stderr)  # fmt: skip
        return 1
    print(sim.library.resolve())
    return 0
