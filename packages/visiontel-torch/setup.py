"""The one thing pyproject.toml cannot say: the optional C extension (see _compiled.py).

``optional=True``: where it does not build (no compiler), the wheel is still made and the
pure-Python loops run.
"""

from setuptools import Extension, setup

_SOURCES = [
    "module.c",
    "thread_record.c",
    "record.c",
    "stamped.c",
    "swap.c",
    "spans.c",
    "dropped.c",
    "roots.c",
    "sampled.c",
    "stage.c",
]

setup(
    ext_modules=[
        Extension(
            "visiontel.torch._speedups",
            [f"csrc/{name}" for name in _SOURCES],
            depends=["csrc/speedups.h", "csrc/roots.h"],
            optional=True,
        )
    ]
)
