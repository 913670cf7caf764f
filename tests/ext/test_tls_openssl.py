"""Two OpenSSLs in one process: relaycore._core runs its own (3.5, linked statically on
Debian 12, its symbols hidden), Python's ssl module the system's (3.0). A worker that
imports both must have each work with its own library: a TLS connector and a tunnel exit
of the loop, next to Python ssl servers and clients, in one fresh process.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from support.relay import TLSFiles

from relaycore import _core

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: `first` is imported before the other, so that neither
# library is loaded by the test process already.
CHILD = """
import importlib, json, sys
first = sys.argv[1]
importlib.import_module(first)
import ssl
from relaycore import _core
from support.clients import connect, ping
from support.relay import SERVER_NAME, LoopThread
from support.servers import EchoServer, tls_server_context

chain, key, ca, exit_cert, exit_key, entry_cert, entry_key, entry_pin = sys.argv[2:10]
out = {"python": ssl.OPENSSL_VERSION, "core": _core.OPENSSL_VERSION}

# The loop (3.5) as a client of a Python ssl server (3.0).
with EchoServer(tls=tls_server_context(chain, key)) as up:
    tls = _core.TLSClientContext(server_name=SERVER_NAME, ca=ca)
    relay = LoopThread(up.port, tls=tls, splice="off").start()
    try:
        with connect(relay.port) as sock:
            ping(sock, b"3.5 to 3.0")
        c = relay.wait_idle()
        out["connector"] = {k: c[k] for k in ("handshakes", "group_X25519")}
    finally:
        relay.stop()

# The loop (3.5) as a tunnel exit; Python ssl (3.0) as the entry node.
with EchoServer() as echo:
    pins = [bytes.fromhex(entry_pin)]
    ctx = _core.TLSServerContext(cert=exit_cert, key=exit_key, allow_pins=pins)
    def setup(loop, fd):
        loop.add_listener(fd, loop.add_exit(ctx, "fixed", "127.0.0.1", echo.port))
    relay = LoopThread(0, setup=setup).start()
    try:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        client.load_cert_chain(entry_cert, entry_key)
        with connect(relay.port) as raw, client.wrap_socket(raw) as t:
            t.sendall(b"3.0 to 3.5")
            out["exit_echo"] = t.recv(64).decode()
            out["exit_version"] = t.version()
        relay.wait_idle()
    finally:
        relay.stop()

# Python's ssl still finds the system trust store (its own OPENSSLDIR) after _core loaded.
out["python_ca_certs"] = ssl.create_default_context().cert_store_stats()["x509_ca"]
print(json.dumps(out))
"""


@pytest.mark.parametrize("first", ["ssl", "relaycore._core"])
def test_python_ssl_and_the_loop_in_one_process(first: str, tls_files: TLSFiles, tmp_path: Path):
    exit_cert, exit_key = tmp_path / "exit.crt", tmp_path / "exit.key"
    entry_cert, entry_key = tmp_path / "entry.crt", tmp_path / "entry.key"
    _core.make_identity(str(exit_key), str(exit_cert), "exit")
    entry_pin = _core.make_identity(str(entry_key), str(entry_cert), "entry")
    args = [
        first,
        str(tls_files.server.chain),
        str(tls_files.server.key),
        str(tls_files.pki.ca_cert),
        str(exit_cert),
        str(exit_key),
        str(entry_cert),
        str(entry_key),
        entry_pin.hex(),
    ]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, timeout=50
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["python"] == ssl.OPENSSL_VERSION
    assert out["core"] == _core.OPENSSL_VERSION
    assert out["connector"] == {"handshakes": 1, "group_X25519": 1}, out
    assert (out["exit_echo"], out["exit_version"]) == ("3.0 to 3.5", "TLSv1.3"), out
    assert out["python_ca_certs"] > 0, "Python's ssl lost the system trust store"


def module_path() -> str:
    path = _core.__file__
    assert path is not None
    return path


@pytest.mark.skipif(
    not _core.OPENSSL_ORIGIN.startswith("static"), reason="linked with the system's OpenSSL"
)
def test_static_openssl_is_hidden_and_needs_only_libc():
    # Only the module's init function is exported: no OpenSSL, zlib or zstd symbol that
    # could take the place of the system libssl's for Python's ssl module (or the reverse).
    nm = subprocess.run(
        ["nm", "-D", "--defined-only", module_path()], capture_output=True, text=True, check=True
    )
    exported = [line.split()[-1] for line in nm.stdout.splitlines()]
    assert "PyInit__core" in exported
    leaked = [
        name
        for name in exported
        if name.startswith(("SSL_", "EVP_", "OPENSSL_", "ERR_", "X509_", "ZSTD_", "deflate"))
    ]
    assert leaked == []
    # The wheel of issue 15 ships it: glibc is all it may ask of the machine.
    ldd = subprocess.run(["ldd", module_path()], capture_output=True, text=True, check=True)
    needed = sorted(line.split()[0] for line in ldd.stdout.splitlines() if "=>" in line)
    assert needed == ["libc.so.6"], ldd.stdout
