"""Helpers of the tunnel-exit tests (test_exit*.py): node identities, the SOCKS5 and
HTTP CONNECT client sides, and a raw TLS client that sees how the exit ends a stream. The
fixtures that start entry and exit nodes (ids, start_exit, start_entry) are in conftest.py.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from support.clients import connect, recv_exact, wait_closed
from support.relay import LoopThread
from support.servers import errno_name

from relaycore import _core
from relaycore._core import ErrorEvent
from relaycore.lab.pki import Pki, make_pki

TIMEOUT = 10.0
# A name getaddrinfo refuses without asking any DNS server (a label over 63 bytes): the
# resolver's failure path, with no packet leaving the machine.
UNRESOLVABLE = "a" * 64 + ".example"

ExitSetup = Callable[..., LoopThread]


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path
    pin: bytes

    @property
    def pin_text(self) -> str:
        return "sha256/" + base64.b64encode(self.pin).decode()


@dataclass(frozen=True)
class Identities:
    exit: Identity
    entry: Identity
    stranger: Identity
    pki: Pki
    exit_ed25519: Identity
    entry_ed25519: Identity


def make_identities(d: Path) -> Identities:
    def make(name: str, key_type: str = "p256") -> Identity:
        key, crt = d / f"{name}.key", d / f"{name}.crt"
        pin = _core.make_identity(str(key), str(crt), name, 3650, key_type)
        return Identity(crt, key, pin)

    return Identities(
        make("exit"),
        make("entry"),
        make("stranger"),
        make_pki(d / "pki"),
        make("exit-ed25519", "ed25519"),
        make("entry-ed25519", "ed25519"),
    )


def socks5_connect(sock: socket.socket, host: str, port: int) -> bytes:
    """Greeting and CONNECT; returns the 10- or 22-byte reply (or what came before EOF)."""
    sock.sendall(b"\x05\x01\x00")
    assert recv_exact(sock, 2) == b"\x05\x00"
    try:
        ip = ipaddress.ip_address(host)
        addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    except ValueError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05\x01\x00" + addr + struct.pack(">H", port))
    head = recv_exact(sock, 4)
    rest = {1: 6, 4: 18}.get(head[3], 0) if head[1] == 0 else 6
    return head + recv_exact(sock, rest)


def http_connect(sock: socket.socket, authority: str, extra: bytes = b"") -> bytes:
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + extra)
    return http_connect_reply(sock)


def errors_of(relay: LoopThread, cause: str) -> list[ErrorEvent]:
    """Every event with this cause the relay recorded so far."""
    relay.pop_errors()
    return [e for e in relay.errors if e.cause == cause]


def assert_pin_refused(entry: LoopThread, judge: LoopThread, refused: Identity) -> None:
    """A device's connection through `entry` dies at the handshake, and `judge` (the node
    that refused) logs tls_pin_mismatch naming the key it was shown."""
    with connect(entry.port) as dev:
        dev.sendall(b"hello")
        assert wait_closed(dev, TIMEOUT) != "data"
    event = judge.wait_error("tls_pin_mismatch", TIMEOUT)
    assert refused.pin_text in event.reason, event


def first_read(tls: ssl.SSLSocket) -> bytes:
    """What the exit sends a client it refused: nothing, whichever way it says so."""
    try:
        tls.sendall(b"\x05\x01\x00")
        return tls.recv(2)
    except (ssl.SSLError, OSError):
        return b""


def http_connect_reply(sock: socket.socket) -> bytes:
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def entry_context(identity: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx


class RawTLS:
    """A TLS client on memory BIOs over a plain socket: the test sees the raw stream, so
    it can tell how the exit ended it (FIN or RST) after the TLS layer has spoken."""

    def __init__(self, port: int, identity: Identity) -> None:
        self.raw = connect(port)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = entry_context(identity).wrap_bio(self.incoming, self.outgoing)

    def flush(self) -> None:
        self.raw.sendall(self.outgoing.read())

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.flush()
                chunk = self.raw.recv(65536)
                assert chunk, "the exit closed during the handshake"
                self.incoming.write(chunk)
            else:
                self.flush()
                return

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.flush()

    def read_to_close(self) -> tuple[bytes, str]:
        """The raw bytes until the exit closes, and how it closed ("eof" or an errno)."""
        got = b""
        self.raw.settimeout(TIMEOUT)
        while True:
            try:
                chunk = self.raw.recv(65536)
            except OSError as exc:
                return got, errno_name(exc)
            if not chunk:
                return got, "eof"
            got += chunk

    def plaintext(self, data: bytes) -> tuple[bytes, str]:
        """What TLS makes of data: the plaintext, and the alert or close that ended it."""
        self.incoming.write(data)
        out = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return out, "no end"
            except ssl.SSLError as exc:
                return out, exc.reason or str(exc)
            if not chunk:
                return out, "close_notify"
            out += chunk

    def close(self) -> None:
        self.raw.close()
