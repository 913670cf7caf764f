"""Which OpenSSL relaycore._core links, and how: for setup.py, and for the tests that build
a peer against the same library.

The extension needs OpenSSL >= 3.5 (ML-KEM hybrid groups, kTLS receive for TLS 1.3;
docs/HOTPATH.md §7). In order:
  1. RELAYCORE_OPENSSL_PREFIX: a directory with include/openssl/ and lib/lib{ssl,crypto}.a,
     linked statically.
  2. The system's OpenSSL when `pkg-config --atleast-version=3.5 openssl` says so (Debian
     13 and later), linked as the system links it.
  3. Otherwise Debian 13's static libraries, fetched once by ext/openssl/fetch.sh.
A static OpenSSL is linked with its symbols hidden (-Wl,--exclude-libs,ALL), so that
Python's own ssl module (the system's libssl.so.3) keeps its own in the same process, and
with zlib and zstd static too (libcrypto.a refers to both): the module then needs nothing
but glibc. Run as a script, prints what it found.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIN_VERSION = "3.5"
PREFIX_ENV = "RELAYCORE_OPENSSL_PREFIX"


@dataclass(frozen=True)
class OpenSSLBuild:
    """How to compile and link against one OpenSSL."""

    origin: str  # "static <where from>" or "system <version>", for humans
    include_dirs: list[str]
    extra_objects: list[str] = field(default_factory=list)  # static archives, in link order
    libraries: list[str] = field(default_factory=list)
    library_dirs: list[str] = field(default_factory=list)
    extra_link_args: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # extra C files to compile in

    def gcc_args(self) -> list[str]:
        """The same, as gcc arguments after the caller's sources (a test peer)."""
        return (
            [f"-I{d}" for d in self.include_dirs]
            + self.sources
            + self.extra_objects
            + [f"-L{d}" for d in self.library_dirs]
            + [f"-l{lib}" for lib in self.libraries]
            + self.extra_link_args
        )


class OpenSSLNotFound(RuntimeError):
    pass


def locate() -> OpenSSLBuild:
    prefix = os.environ.get(PREFIX_ENV)
    if prefix:
        return static(Path(prefix), f"static {prefix}")
    if system_is_new_enough():
        return system()
    fetched = subprocess.run(
        ["bash", str(HERE / "fetch.sh")], stdout=subprocess.PIPE, text=True, check=False
    )
    if fetched.returncode != 0 or not fetched.stdout.strip():
        raise OpenSSLNotFound(
            f"relaycore needs OpenSSL >= {MIN_VERSION}: the system has an older one and"
            f" ext/openssl/fetch.sh could not fetch Debian 13's (see above); or set {PREFIX_ENV}"
        )
    where = Path(fetched.stdout.strip())
    label = (where / "VERSION").read_text().split()
    return static(where, f"static, Debian 13 {' '.join(label[:2])}")


def system_is_new_enough() -> bool:
    try:
        return (
            subprocess.run(
                ["pkg-config", f"--atleast-version={MIN_VERSION}", "openssl"], check=False
            ).returncode
            == 0
        )
    except FileNotFoundError:
        return False


def system() -> OpenSSLBuild:
    def pkg(*args: str) -> list[str]:
        out = subprocess.run(
            ["pkg-config", *args, "openssl"], stdout=subprocess.PIPE, text=True, check=True
        )
        return out.stdout.split()

    version = " ".join(pkg("--modversion"))
    return OpenSSLBuild(
        origin=f"system {version}",
        include_dirs=[a[2:] for a in pkg("--cflags-only-I")],
        libraries=[a[2:] for a in pkg("--libs-only-l")],
        library_dirs=[a[2:] for a in pkg("--libs-only-L")],
    )


def static(prefix: Path, origin: str) -> OpenSSLBuild:
    archives = [prefix / "lib" / "libssl.a", prefix / "lib" / "libcrypto.a"]
    missing = [str(a) for a in archives if not a.is_file()]
    if missing or not (prefix / "include" / "openssl" / "ssl.h").is_file():
        raise OpenSSLNotFound(f"{prefix}: expected include/openssl/ssl.h and {missing}")
    return OpenSSLBuild(
        origin=origin,
        include_dirs=[str(prefix / "include")],
        extra_objects=[*map(str, archives), static_archive("libz.a"), static_archive("libzstd.a")],
        libraries=["pthread", "dl"],
        extra_link_args=["-Wl,--exclude-libs,ALL"],
        sources=[str(HERE / "glibc-compat.c")],
    )


def static_archive(name: str) -> str:
    """The compiler's path of a static library, e.g. libz.a (zlib1g-dev, libzstd-dev)."""
    found = subprocess.run(
        ["gcc", "-print-file-name=" + name], stdout=subprocess.PIPE, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(found):
        raise OpenSSLNotFound(
            f"{name} not found: install zlib1g-dev and libzstd-dev (libcrypto.a needs them)"
        )
    return found


if __name__ == "__main__":
    try:
        print(locate())
    except OpenSSLNotFound as e:
        sys.exit(f"locate.py: {e}")
