"""Every use of an nvidia-ml-py internal in visiontel-gpu, behind one gate.

Two things need what nvidia-ml-py keeps private:

* loading NVML from a configured path: nvidia-ml-py only ever loads "libnvidia-ml.so.1" by
  name, into its module-level ``nvmlLib`` under ``libLoadLock``, and caches the entry points
  it looked up in ``_nvmlGetFunctionPointer_cache``; ``_nvmlLib_refcount`` says whether an
  nvmlInit is outstanding (then the loaded library is in use and must stay);
* the sweep's per-device requests (_nvml_requests.py), which call NVML entry points through
  ``_nvmlGetFunctionPointer`` with buffers they keep and layouts of their own, because the
  public wrappers allocate and convert on every call.

``private_api(nvml)`` is the one gate: open when every one of those names is there and no
test forced it shut. When a name is missing (a future nvidia-ml-py), it says so once in the
log and stays shut: the library given by path is then preloaded, so that nvidia-ml-py's own
``dlopen("libnvidia-ml.so.1")`` finds it by its soname, and the requests use nvidia-ml-py's
public wrappers (slower; no unsuffixed v1 process list, which nvidia-ml-py does not wrap).
Nothing else in the package touches an nvidia-ml-py internal.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

_log = logging.getLogger("visiontel.gpu")

PRIVATE_NAMES = (
    "nvmlLib",
    "libLoadLock",
    "_nvmlGetFunctionPointer",
    "_nvmlGetFunctionPointer_cache",
    "_nvmlLib_refcount",
)

_lock = threading.Lock()
_forced_public = False  # tests: the gate shut, public wrappers everywhere
_warned = False
_loaded_from: str | None = None  # the path this module last made nvidia-ml-py's library
# Libraries preloaded while the gate is shut: kept referenced so they stay loaded.
_preloaded: dict[str, ctypes.CDLL] = {}


def _use_public_api(force: bool) -> None:
    """Tests only: shut (or reopen) the gate."""
    global _forced_public
    _forced_public = force


def private_api(nvml: Any) -> bool:
    """Whether nvidia-ml-py's internals may be used (logged once when they are missing)."""
    global _warned
    if _forced_public:
        return False
    missing = [name for name in PRIVATE_NAMES if not hasattr(nvml, name)]
    if not missing:
        return True
    with _lock:
        if not _warned:
            _warned = True
            _log.info(
                "visiontel-gpu: this nvidia-ml-py lacks %s; using its public calls "
                "(slower sweeps, NVML loaded by its soname)",
                ", ".join(missing),
            )
    return False


def load_library(nvml: Any, library: str) -> None:
    """Make `library` (a path or a name) the NVML that nvidia-ml-py calls; OSError if it
    cannot be loaded. A library another nvmlInit still uses is left in place."""
    global _loaded_from
    if not private_api(nvml):
        with _lock:
            if library not in _preloaded:
                _preloaded[library] = ctypes.CDLL(library)
        return
    with nvml.libLoadLock:
        if nvml.nvmlLib is not None and (_loaded_from == library or nvml._nvmlLib_refcount > 0):
            return
        nvml.nvmlLib = ctypes.CDLL(library)
        # Entry points looked up in a library loaded before belong to that library.
        nvml._nvmlGetFunctionPointer_cache.clear()
        _loaded_from = library


def entry_point(nvml: Any, name: str) -> Any | None:
    """The C function `name` of the loaded NVML, or None when the gate is shut (use the
    public wrapper). Raises NVMLError(FUNCTION_NOT_FOUND) when the library lacks it."""
    if not private_api(nvml):
        return None
    return nvml._nvmlGetFunctionPointer(name)
