"""Build script: one extension module, relaycore._core, from ext/_core.pyx.

It links OpenSSL >= 3.5: the system's when it is new enough, else Debian 13's static
libraries, fetched once (ext/openssl/locate.py says which and how). `make build`, `pip
wheel` and `python -m build` all come through here, so each finds or fetches it itself.

RELAYCORE_DEBUG=1 builds with -O0 -g and Cython line tracing off but asserts on.
"""

import os
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext", "openssl"))
from locate import OpenSSLNotFound, locate  # ext/openssl is not a package: on sys.path

debug = os.environ.get("RELAYCORE_DEBUG") == "1"
extra_compile_args = ["-O0", "-g"] if debug else ["-O2"]
extra_compile_args += ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]

try:
    openssl = locate()
except OpenSSLNotFound as e:
    sys.exit(f"setup.py: {e}")
print(f"setup.py: OpenSSL: {openssl.origin}", file=sys.stderr)


def liburing_archive() -> str:
    """liburing.a (Debian's liburing-dev), linked in like OpenSSL: the wheel needs nothing."""
    try:
        libdir = subprocess.run(
            ["pkg-config", "--variable=libdir", "liburing"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sys.exit("setup.py: liburing not found (apt-get install liburing-dev; `make` does)")
    return os.path.join(libdir, "liburing.a")


extension = Extension(
    "relaycore._core",
    ["ext/_core.pyx", *(os.path.relpath(s) for s in openssl.sources)],
    include_dirs=["ext/includes", *openssl.include_dirs],
    extra_compile_args=extra_compile_args,
    define_macros=[("RELAYCORE_OPENSSL_ORIGIN", '"' + openssl.origin + '"')],
    extra_objects=[*openssl.extra_objects, liburing_archive()],
    libraries=openssl.libraries,
    library_dirs=openssl.library_dirs,
    extra_link_args=openssl.extra_link_args,
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
