"""Build the one compiled extension, ``fastpause._core``, from its Cython sources.

The data plane lives in ``_core.pyx`` plus the ``.pxi`` pieces it ``include``s,
declared in ``_core.pxd``; everything else is pure Python (see pyproject.toml).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

annotate = os.environ.get("FASTPAUSE_ANNOTATE") == "1"

extensions = [
    Extension(
        "fastpause._core",
        ["src/fastpause/_core.pyx"],
        extra_compile_args=["-O2"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=annotate,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    )
)
