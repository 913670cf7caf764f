"""Kernel TLS on a tunnel exit, where the TLS side is the client's (the entry node's): a
TLS 1.2 AES-GCM connection is offloaded both ways, the plain pumps (copy or splice) move
its bytes, and the entry's close_notify arrives on the kTLS receive socket as a control
record. The client is Python's ssl (its own kTLS off), so every kTLS socket the kernel
counts is the exit's.
"""

from __future__ import annotations

import hashlib
import random
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.clients import connect
from support.relay import LoopThread
from support.servers import EchoServer
from test_ktls import (
    AES128_GCM,
    REKEY,
    SETTLE_TIMEOUT,
    show,
    software_ktls_sockets,
    stat_delta,
)

from relaycore import _core

SSL_OP_ENABLE_KTLS = 1 << 3  # openssl/ssl.h SSL_OP_BIT(3); the ssl module does not name it

pytestmark = [pytest.mark.timeout(300), pytest.mark.ktls]

CHUNK = 64 * 1024
CHUNKS = 64  # 4 MiB each way, in lock-step: the guest's CPU is emulated


def make_exit(
    tmp: Path, echo_port: int, splice: str, *, ktls: str = "auto", tls13: bool = False
) -> tuple[LoopThread, ssl.SSLContext]:
    """An exit to the echo server, and a Python ssl client context for its entry (TLS 1.2
    AES-GCM, or TLS 1.3 with `tls13`)."""
    _core.make_identity(str(tmp / "exit.key"), str(tmp / "exit.crt"), "exit")
    entry_pin = _core.make_identity(str(tmp / "entry.key"), str(tmp / "entry.crt"), "entry")
    ctx = _core.TLSServerContext(
        cert=str(tmp / "exit.crt"), key=str(tmp / "exit.key"), allow_pins=[entry_pin], ktls=ktls
    )

    def setup(loop: Any, fd: int) -> None:
        loop.add_listener(fd, loop.add_exit(ctx, "fixed", "127.0.0.1", echo_port))

    relay = LoopThread(0, setup=setup, splice=splice).start()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if not tls13:
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        client.set_ciphers(AES128_GCM)
    client.options &= ~SSL_OP_ENABLE_KTLS
    client.load_cert_chain(str(tmp / "entry.crt"), str(tmp / "entry.key"))
    return relay, client


def test_exit_offloads_tls12_from_the_entry_both_ways(
    splice: str, tmp_path: Path, tls_stat: Callable[[], dict[str, int]]
) -> None:
    rng = random.Random(1701)
    sent, received = hashlib.sha256(), hashlib.sha256()
    with EchoServer() as echo:
        relay, client = make_exit(tmp_path, echo.port, splice)
        try:
            before = tls_stat()
            with connect(relay.port, timeout=60) as raw, client.wrap_socket(raw) as tls:
                assert tls.version() == "TLSv1.2"
                for _ in range(CHUNKS):
                    chunk = rng.randbytes(CHUNK)
                    sent.update(chunk)
                    tls.sendall(chunk)
                    got = 0
                    while got < CHUNK:
                        data = tls.recv(CHUNK - got)
                        assert data, "the exit closed early"
                        received.update(data)
                        got += len(data)
                # close_notify both ways: ours reaches the exit's kTLS receive socket.
                tls.unwrap()
            counters = relay.wait_idle(SETTLE_TIMEOUT)
            delta = stat_delta(before, tls_stat())
        finally:
            relay.stop()
    assert received.hexdigest() == sent.hexdigest()
    assert counters["ktls_conns"] == 1, show(counters, delta)
    assert counters["ktls_control_records"] >= 1, show(counters, delta)
    assert software_ktls_sockets(delta) == (1, 1), show(counters, delta)
    assert counters["bytes_in"] == counters["bytes_out"] == CHUNK * CHUNKS
    if splice == "always":
        assert counters["bytes_spliced"] > 0, show(counters, delta)


def test_exit_requiring_ktls_refuses_tls13_the_kernel_cannot_rekey(
    tmp_path: Path, tls_stat: Callable[[], dict[str, int]]
) -> None:
    """ktls = "require" on an exit holds per connection: a TLS 1.3 entry is offloaded
    where the kernel rekeys, and refused (ktls_required, no byte relayed) where it cannot."""
    with EchoServer() as echo:
        relay, client = make_exit(tmp_path, echo.port, "off", ktls="require", tls13=True)
        try:
            with connect(relay.port, timeout=60) as raw, client.wrap_socket(raw) as tls:
                tls.sendall(b"through the kernel only")
                try:
                    got = tls.recv(64)
                except OSError:
                    got = b""
            counters = relay.wait_idle(SETTLE_TIMEOUT)
            errors = relay.pop_errors()
        finally:
            relay.stop()
    if REKEY:
        assert got == b"through the kernel only"
        assert (counters["ktls_conns"], errors) == (1, []), show(counters)
    else:
        assert got == b"", got
        assert [e.cause for e in errors] == ["ktls_required"], errors
        assert "cannot rekey" in errors[0].reason, errors
        assert echo.connections == [], "a connection it refused reached the target"
