"""A simulated libnvidia-ml.so.1 for testing NVML consumers on machines without a GPU.

    sim = NvmlSimulator.build(tmp_path)          # compiles nvml_sim.c with the C compiler
    sim.write({"device_count": 2, **sim.gpu(0), **sim.gpu(1), "gpu.1.error.all": 15})
    os.environ.update(sim.env())                 # NVML_SIM_SCRIPT + VISIONTEL_GPU_NVML_LIBRARY

The real nvidia-ml-py bindings then load it like the driver's library. Script keys (one
`key=value` per line; an unset value answers NVML_ERROR_NOT_SUPPORTED):

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

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
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

    @classmethod
    def build(cls, directory: str | os.PathLike[str], compiler: str | None = None) -> NvmlSimulator:
        """Compile the simulator into `directory` (once) and return a handle on it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        library = directory / LIBRARY_NAME
        if not library.exists() or library.stat().st_mtime < SOURCE.stat().st_mtime:
            cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if cc is None:
                raise RuntimeError("no C compiler found (install gcc or set CC)")
            out = directory / f".{LIBRARY_NAME}.tmp"
            subprocess.run(
                [cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SOURCE), "-lpthread"],
                check=True,
            )
            out.replace(library)
        sim = cls(library, directory / "nvml_sim_script.txt")
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


def main(argv: list[str] | None = None) -> int:
    """python -m visiontel.gpu.testing DIR: build the simulator, print its path."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m visiontel.gpu.testing OUTPUT_DIR", file=sys.stderr)
        return 2
    print(NvmlSimulator.build(args[0]).library)
    return 0
