"""The one thing pyproject.toml cannot say: the optional C extension (see _compiled.py).

``optional=True``: where it does not build (no compiler), the wheel is still made and the
pure-Python loops run.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "visiontel.torch._speedups",
            ["src/visiontel/torch/_speedups.c"],
            optional=True,
        )
    ]
)
