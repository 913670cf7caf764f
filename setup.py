"""Build script: one extension module, relaycore._core, from ext/_core.pyx.

RELAYCORE_DEBUG=1 builds with -O0 -g and Cython line tracing off but asserts on.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("RELAYCORE_DEBUG") == "1"
extra_compile_args = ["-O0", "-g"] if debug else ["-O2"]
extra_compile_args += ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]

extension = Extension(
    "relaycore._core",
    ["ext/_core.pyx"],
    include_dirs=["ext/includes"],
    extra_compile_args=extra_compile_args,
    libraries=["ssl", "crypto"],
)

setup(
    ext_modules=cythonize(
        [extension],
        # ext/: the parts _core.pyx includes, and ext/relaycore/_core.pxd, where Cython
        # looks for the interface of relaycore._core (it includes ext/_core.pxd).
        include_path=["ext"],
        language_level=3,
        compiler_directives={
            "embedsignature": True,
            "warn.unused": True,
            "warn.maybe_uninitialized": True,
        },
    ),
)
