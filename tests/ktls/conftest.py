"""tests/ktls: the relay's kernel-TLS path end to end, over loopback.

The tests marked `ktls` need a kernel with the `tls` module. `make test-ktls` runs them in
a QEMU guest that has one (tests/ktls/guest.sh). Anywhere else they are skipped with
the reason `relaycore.capabilities.ktls_unavailable()` gives, unless
RELAYCORE_KTLS_REQUIRED=1 (make test-ktls sets it): then that skip is a failure, so a
guest without kTLS cannot pass by skipping everything.

The upstreams are Python's ssl module (SSL_OP_ENABLE_KTLS cleared on their side) and
`openssl s_server` (kTLS only with -ktls, which is never given): every kTLS socket the
kernel counts in /proc/net/tls_stat is the relay's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.data import RandomStream
from support.relay import SPLICE_UNAVAILABLE, LoopThread
from support.servers import HOST

from relaycore import _core
from relaycore.capabilities import ktls_unavailable
from relaycore.lab.pki import Issued, make_pki

# Why kTLS cannot run here (None: it can).
KTLS_UNAVAILABLE = ktls_unavailable()
REQUIRED_ENV = "RELAYCORE_KTLS_REQUIRED"

SSL_OP_ENABLE_KTLS = 1 << 3  # openssl/ssl.h SSL_OP_BIT(3); the ssl module does not name it
SERVER_NAME = "upstream.test"
IO_TIMEOUT = 120.0  # one socket operation of an upstream; the guest CPU is emulated
ACCEPT_TIMEOUT = 60.0
JOIN_TIMEOUT = 10.0
RECV_SIZE = 256 * 1024
MAX_WRITE = 64 * 1024


@pytest.fixture(autouse=True)
def _ktls_gate(request: pytest.FixtureRequest) -> None:
    if KTLS_UNAVAILABLE is None or request.node.get_closest_marker("ktls") is None:
        return
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"{REQUIRED_ENV}=1 but kernel TLS is unavailable: {KTLS_UNAVAILABLE}")
    pytest.skip(f"kernel TLS unavailable: {KTLS_UNAVAILABLE}")


@pytest.fixture(params=["off", "always"])
def splice(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    if mode != "off" and SPLICE_UNAVAILABLE:
        pytest.skip(SPLICE_UNAVAILABLE)
    return mode


# -- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    server: Issued


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA and an EC P-256 server certificate for SERVER_NAME (ECDHE-ECDSA suites)."""
    pki = make_pki(tmp_path_factory.mktemp("ktls-pki"))
    return Certs(ca=pki.ca_cert, server=pki.issue("upstream", dns=[SERVER_NAME]))


# -- /proc/net/tls_stat ----------------------------------------------------------------------


def read_tls_stat() -> dict[str, int]:
    """/proc/net/tls_stat as {name: value}; {} where the tls module is not loaded."""
    try:
        with open("/proc/net/tls_stat") as f:
            return {name: int(value) for name, value in (line.split() for line in f)}
    except FileNotFoundError:
        return {}


@pytest.fixture
def tls_stat() -> Callable[[], dict[str, int]]:
    return read_tls_stat


# -- the relay -------------------------------------------------------------------------------


class TLSRelay(LoopThread):
    """A LoopThread whose `.port` originates TLS to the upstream with `tls`.

    LoopThread makes a plain route 0 on its own listener; it stays unused. Route 1, on a
    second listener, is the TLS one, and `.port` is its port."""

    def __init__(self, upstream_port: int, tls: _core.TLSClientContext, **loop_kwargs: Any):
        super().__init__(upstream_port, **loop_kwargs)
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lsock.bind((HOST, 0))
            lsock.listen(16)
            port: int = lsock.getsockname()[1]
            self.loop.add_listener(lsock.detach(), self.loop.add_upstream(HOST, upstream_port, tls))
        except BaseException:
            lsock.close()
            self.loop.close()
            raise
        self.port = port


@pytest.fixture
def tls_relay(certs: Certs) -> Iterator[Callable[..., TLSRelay]]:
    """make(upstream_port, splice=..., ciphers=None, ciphersuites=None, ktls="auto") -> a
    started TLSRelay verifying the upstream against the test CA as SERVER_NAME. At the end
    of the test: no connection left open, accepted == closed, then the loop is stopped."""
    relays: list[TLSRelay] = []

    def make(
        upstream_port: int,
        *,
        splice: str,
        ciphers: str | None = None,
        ciphersuites: str | None = None,
        ktls: str = "auto",
    ) -> TLSRelay:
        ctx = _core.TLSClientContext(
            server_name=SERVER_NAME,
            ca=str(certs.ca),
            ciphers=ciphers,
            ciphersuites=ciphersuites,
            ktls=ktls,
        )
        relay = TLSRelay(
            upstream_port,
            ctx,
            splice=splice,
            connect_timeout_ms=30_000,
            handshake_timeout_ms=60_000,
            idle_timeout_ms=300_000,
        )
        relays.append(relay)
        return relay.start()

    yield make
    problems = []
    for relay in relays:
        try:
            counters = relay.wait_idle(timeout=30.0)
            if counters["accepted"] != counters["closed"]:
                problems.append(f"accepted != closed: {counters}")
        except AssertionError as exc:
            problems.append(str(exc))
        finally:
            relay.stop()
    if problems:
        pytest.fail("relay not quiescent after the test:\n" + "\n".join(problems))


# -- upstream: Python's ssl ------------------------------------------------------------------


def server_context(certs: Certs, version: str, ciphers: str | None = None) -> ssl.SSLContext:
    """A server context capped at TLS `version` ("1.2" or "1.3"), kTLS off on its side."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server.chain, certs.server.key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    ctx.options &= ~SSL_OP_ENABLE_KTLS
    return ctx


class TLSUpstream:
    """One TLS connection on 127.0.0.1:<.port>, served by one thread.

    mode "echo": echo every byte until the peer's close_notify, then answer it with ours.
    mode "source": send RandomStream(nbytes, seed) in random 1 B .. 64 KiB writes, then
    close_notify, then wait for the peer's (the relay sends it when its device is done).

    After `done` is set: `version`, `cipher`, `received`, `digest` (SHA-256 of the bytes
    received), `sent`, `peer_close_notify` (the peer ended with close_notify), `error`.
    """

    def __init__(self, ctx: ssl.SSLContext, mode: str, nbytes: int = 0, seed: int = 0) -> None:
        self.ctx, self.mode, self.nbytes, self.seed = ctx, mode, nbytes, seed
        self.version: str | None = None
        self.cipher: str | None = None
        self.received = 0
        self.sent = 0
        self.peer_close_notify = False
        self.error: str | None = None
        self.done = threading.Event()
        self._sha = hashlib.sha256()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._lsock = socket.create_server((HOST, 0))
        self._lsock.settimeout(0.1)
        self.port: int = self._lsock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="tls-upstream", daemon=True)
        self._thread.start()

    def __enter__(self) -> TLSUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def digest(self) -> str:
        return str(self._sha.hexdigest())

    def wait(self, timeout: float) -> TLSUpstream:
        if not self.done.wait(timeout):
            raise TimeoutError(f"upstream still busy after {timeout}s: {self.summary()}")
        return self

    def summary(self) -> str:
        return (
            f"version={self.version} cipher={self.cipher} received={self.received}"
            f" sent={self.sent} peer_close_notify={self.peer_close_notify} error={self.error}"
        )

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._conn is not None and self._conn.fileno() != -1:
                # The base class's shutdown: SSLSocket.shutdown would drop the SSL object.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._conn, socket.SHUT_RDWR)
        self._thread.join(JOIN_TIMEOUT)
        self._lsock.close()
        if self._thread.is_alive():
            raise RuntimeError("TLS upstream thread did not stop")

    def _run(self) -> None:
        try:
            raw = self._accept()
            if raw is None:
                return
            raw.settimeout(IO_TIMEOUT)
            try:
                tls = self.ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
            except BaseException:
                raw.close()
                raise
            with self._lock:
                self._conn = tls
            try:
                self.version = tls.version()
                cipher = tls.cipher()
                self.cipher = cipher[0] if cipher else None
                if self.mode == "echo":
                    self._echo(tls)
                else:
                    self._source(tls)
            finally:
                with self._lock:
                    tls.close()
        except (OSError, ssl.SSLError) as exc:
            self.error = repr(exc)
        finally:
            self.done.set()

    def _accept(self) -> socket.socket | None:
        deadline = time.monotonic() + ACCEPT_TIMEOUT
        while not self._stop.is_set():
            try:
                conn, _ = self._lsock.accept()
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.error = "no connection to accept"
                    return None
                continue
            return conn
        return None

    def _echo(self, tls: ssl.SSLSocket) -> None:
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        while True:
            n = tls.recv_into(buf)
            if n == 0:  # close_notify (a bare FIN raises SSLEOFError)
                self.peer_close_notify = True
                break
            self._sha.update(view[:n])
            self.received += n
            tls.sendall(view[:n])
            self.sent += n
        tls.unwrap()

    def _source(self, tls: ssl.SSLSocket) -> None:
        stream = RandomStream(self.nbytes, self.seed)
        rng = random.Random(self.seed + 1)
        while not stream.done:
            chunk = stream.peek(rng.randint(1, MAX_WRITE))
            tls.sendall(chunk)
            stream.advance(len(chunk))
            self.sent += len(chunk)
        # SSL_shutdown twice: send close_notify, then wait for the peer's.
        tls.unwrap()
        self.peer_close_notify = True


@pytest.fixture
def tls_upstream(certs: Certs) -> Iterator[Callable[..., TLSUpstream]]:
    """start(mode, version="1.2", ciphers=None, nbytes=0, seed=0) -> a TLSUpstream,
    stopped when the test ends."""
    servers: list[TLSUpstream] = []

    def start(
        mode: str,
        *,
        version: str = "1.2",
        ciphers: str | None = None,
        nbytes: int = 0,
        seed: int = 0,
    ) -> TLSUpstream:
        server = TLSUpstream(server_context(certs, version, ciphers), mode, nbytes, seed)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# -- upstream: openssl s_server --------------------------------------------------------------


class SServer:
    """`openssl s_server` for one connection (-naccept 1) on 127.0.0.1, port chosen by the
    kernel. What `send` writes to its stdin goes to the client, and stdin lines such as
    "r" are s_server's commands (r: renegotiate, that is send a TLS 1.2 HelloRequest).
    stdout and stderr are collected in `output()`."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"{HOST}:0", "-naccept", "1", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._chunks: list[bytes] = []
        self._accepting = threading.Event()
        self._reader = threading.Thread(target=self._read, name="s_server-output", daemon=True)
        self._reader.start()
        self.port = 0
        try:
            if not self._accepting.wait(IO_TIMEOUT):
                raise RuntimeError(f"s_server did not start listening: {self.output()!r}")
            found = re.search(r"^ACCEPT \S+:(\d+)$", self.output(), re.M)
            if found is None:
                raise RuntimeError(f"s_server output has no ACCEPT line: {self.output()!r}")
            self.port = int(found[1])
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self._chunks.append(line)
            if line.startswith(b"ACCEPT"):
                self._accepting.set()
        self._accepting.set()

    def output(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(JOIN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(JOIN_TIMEOUT)
        self._reader.join(JOIN_TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def s_server(certs: Certs) -> Iterator[Callable[..., SServer]]:
    """start(*args) -> SServer with the test certificate and key plus `args`; stopped
    (terminated if still running) when the test ends."""
    servers: list[SServer] = []

    def start(*args: str) -> SServer:
        server = SServer(["-cert", str(certs.server.cert), "-key", str(certs.server.key), *args])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
