"""`make dist` builds a wheel that holds the compiled extension; installed into a fresh
virtualenv (no access to this checkout), it runs a relay: started from another directory,
it imports relaycore and its extension from the virtualenv, relays a TLS connection, and
stops with exit 0 on SIGTERM.

The extension carries its OpenSSL (3.5, linked statically with hidden symbols): ldd must
show no shared libssl or libcrypto, so the wheel runs on a machine without libssl-dev, and
the installed relay names OpenSSL 3.5 in `relaycore --version`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from control import round_trip
from support.servers import EchoServer, tls_server_context

from relaycore.lab.base import HOST, free_port
from relaycore.lab.pki import make_server_pki
from relaycore.lab.relay import RelayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 600.0
INSTALL_TIMEOUT = 300.0
TIMEOUT = 20.0


def run(argv: list[str], *, cwd: Path, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def linked_libraries(path: Path) -> dict[str, str]:
    """ldd's view of a shared object: soname -> where it resolves ("not found" if not)."""
    libs = {}
    for line in run(["ldd", str(path)], cwd=path.parent, timeout=60).splitlines():
        name, arrow, where = line.strip().partition(" => ")
        if arrow:
            libs[name] = where.split(" (")[0]
    return libs


def test_the_wheel_installs_into_a_fresh_venv_and_relays(tmp_path):
    dist = tmp_path / "dist"
    run(["make", "-s", "dist", f"DIST_DIR={dist}"], cwd=ROOT, timeout=BUILD_TIMEOUT)
    [wheel] = dist.glob("relaycore-*.whl")

    venv = tmp_path / "venv"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([sys.executable, "-m", "venv", str(venv)], cwd=elsewhere, timeout=INSTALL_TIMEOUT)
    python = venv / "bin" / "python"
    run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        cwd=elsewhere,
        timeout=INSTALL_TIMEOUT,
    )

    # Imported from the venv, not from this checkout (run from another directory, with no
    # PYTHONPATH): the package and the compiled extension both.
    where = run(
        [
            str(python),
            "-c",
            "import relaycore, relaycore._core as c; print(relaycore.__file__); print(c.__file__)",
        ],
        cwd=elsewhere,
        timeout=60,
    ).split()
    site = venv / "lib"
    assert all(Path(p).is_relative_to(site) for p in where), where
    assert not any(Path(p).is_relative_to(ROOT) for p in where), where
    extension = Path(where[1])
    libraries = linked_libraries(extension)
    assert "not found" not in libraries.values(), libraries
    assert not any(name.startswith(("libssl", "libcrypto")) for name in libraries), libraries
    version = run([str(venv / "bin" / "relaycore"), "--version"], cwd=elsewhere, timeout=60)
    assert " with OpenSSL 3.5." in version, version

    pki = make_server_pki(tmp_path / "pki", "localhost")
    port = free_port()
    with EchoServer(tls=tls_server_context(pki.cert, pki.key)) as upstream:
        config = tmp_path / "relay.toml"
        config.write_text(
            f'[relay]\nworkers = 1\nrun_dir = "{tmp_path / "run"}"\n'
            f'[[connector]]\nname = "api"\nlisten = "{HOST}:{port}"\n'
            f'upstream = "localhost:{upstream.port}"\nca = "{pki.ca}"\n'
        )
        # RelayProcess runs `python -m relaycore ...`; the wrapper execs the venv's console
        # script with the same arguments instead.
        script = venv / "bin" / "relaycore"
        wrapper = ["sh", "-c", 'shift 3; exec "$0" "$@"', str(script)]
        with RelayProcess(config, wrapper=wrapper, cwd=elsewhere) as relay:
            relay.wait_ready(TIMEOUT)
            maps = Path(f"/proc/{relay.pid}/maps").read_text()
            loaded = {line.split()[-1] for line in maps.splitlines() if "relaycore/_core" in line}
            assert loaded == {str(extension)}, loaded
            assert round_trip(port, b"through the wheel\n") == b"through the wheel\n"
            assert relay.stop() == 0, relay.output()
        [leg] = upstream.connections
        assert leg.error is None, leg
