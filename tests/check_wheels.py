"""Run inside a fresh venv holding only the built wheels: import every visiontel
distribution and load each of its entry points. Exits non-zero on the first failure."""

from __future__ import annotations

import importlib.metadata as md
import pathlib
import sys


def main(wheels: list[str]) -> int:
    names = {pathlib.Path(w).name.split("-")[0].replace("_", "-") for w in wheels}
    loaded = 0
    for name in sorted(names):
        dist = md.distribution(name)
        for entry_point in dist.entry_points:
            obj = entry_point.load()
            print(f"{name}: {entry_point.group}:{entry_point.name} -> {obj!r}")
            loaded += 1
        top = [f for f in (dist.files or []) if f.name == "__init__.py" and "visiontel" in str(f)]
        for init in top:
            module = ".".join(init.parent.parts)
            __import__(module)
    if "visiontel-torch" in names:  # its wheel carries the compiled loops (csrc/)
        from visiontel.torch import _compiled

        files = [str(f) for f in md.distribution("visiontel-torch").files or []]
        if _compiled.speedups is None or any(f.endswith(".c") for f in files):
            print(f"visiontel-torch: compiled loops missing or C source shipped: {files}")
            return 1
        print(f"visiontel-torch: compiled loops from {_compiled.speedups.__file__}")
    print(f"{len(names)} distributions, {loaded} entry points loaded")
    return 0 if names else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
