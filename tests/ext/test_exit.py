"""Tunnel exits in the compiled loop: an entry connector (a LoopThread relaying to the exit
over TLS with its node identity) and an exit (a LoopThread serving TLS to entry nodes,
then a fixed target, SOCKS5 or HTTP CONNECT). The device speaks plain TCP to the entry.

Both legs are the real thing: the entry verifies the exit by its pin, the exit admits the
entry by its pin, and the bytes go device -> entry -> TLS -> exit -> server and back.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.clients import Reader, connect, exchange, ping, recv_exact, wait_closed
from support.data import MiB, RandomStream, stream_digest
from support.relay import LoopThread
from support.servers import EchoServer, SinkServer, SourceServer, errno_name, set_linger0

from relaycore import _core
from relaycore.lab.pki import Pki, make_pki

TIMEOUT = 10.0
# A name getaddrinfo refuses without asking any DNS server (a label over 63 bytes): the
# resolver's failure path, with no packet leaving the machine.
UNRESOLVABLE = "a" * 64 + ".example"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path
    pin: bytes

    @property
    def pin_text(self) -> str:
        import base64

        return "sha256/" + base64.b64encode(self.pin).decode()


@dataclass(frozen=True)
class Identities:
    exit: Identity
    entry: Identity
    stranger: Identity
    pki: Pki
    exit_ed25519: Identity
    entry_ed25519: Identity


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    d = tmp_path_factory.mktemp("identities")

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


ExitSetup = Callable[..., LoopThread]


@pytest.fixture
def start_exit(make_relay: Callable[..., LoopThread], ids: Identities) -> ExitSetup:
    def start(
        target: str,
        *,
        host: str = "",
        port: int = 0,
        allow: Sequence[tuple[str, int]] | None = (("127.0.0.0/8", 0), ("::1", 0)),
        allow_pins: Sequence[bytes] | None = None,
        ca: str | None = None,
        identity: Identity | None = None,
        **loop_kwargs: Any,
    ) -> LoopThread:
        me = identity or ids.exit
        ctx = _core.TLSServerContext(
            cert=str(me.cert),
            key=str(me.key),
            allow_pins=[ids.entry.pin] if allow_pins is None else list(allow_pins),
            ca=ca,
        )

        def setup(loop: Any, fd: int) -> None:
            route = loop.add_exit(3, ctx, target, host, port)
            for network, p in allow or ():
                loop.allow_destination(route, network, p)
            loop.add_listener(fd, route)

        return make_relay(0, setup=setup, **loop_kwargs)

    return start


@pytest.fixture
def start_entry(make_relay: Callable[..., LoopThread], ids: Identities) -> ExitSetup:
    def start(
        exit_port: int, *, identity: Identity | None = None, pin: bytes | None = None
    ) -> LoopThread:
        me = identity or ids.entry
        tls = _core.TLSClientContext(
            cert=str(me.cert), key=str(me.key), verify=False, pins=[pin or ids.exit.pin]
        )
        return make_relay(exit_port, tls=tls)

    return start


def socks5_connect(sock: socket.socket, host: str, port: int) -> bytes:
    """Greeting and CONNECT; returns the 10- or 22-byte reply (or what came before EOF)."""
    sock.sendall(b"\x05\x01\x00")
    assert recv_exact(sock, 2) == b"\x05\x00"
    try:
        import ipaddress

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
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def errors_of(relay: LoopThread, cause: str) -> list[tuple[Any, ...]]:
    relay.pop_errors()
    return [e for e in relay.errors if e[1] == cause]


def wait_error(relay: LoopThread, cause: str) -> tuple[Any, ...]:
    import time

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = errors_of(relay, cause)
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no {cause} event; events: {relay.errors}")


def assert_pin_refused(entry: LoopThread, judge: LoopThread, refused: Identity) -> None:
    """A device's connection through `entry` dies at the handshake, and `judge` (the node
    that refused) logs tls_pin_mismatch naming the key it was shown."""
    with connect(entry.port) as dev:
        dev.sendall(b"hello")
        assert wait_closed(dev, TIMEOUT) != "data"
    event = wait_error(judge, "tls_pin_mismatch")
    assert refused.pin_text in event[5], event


# -- data path ---------------------------------------------------------------------------


def test_fixed_target_relays_both_ways_with_half_close(
    start_exit: ExitSetup, start_entry: ExitSetup
) -> None:
    # 4 MiB up, the sink's digest and 4 MiB back after the device's EOF: byte-exact on both
    # legs, and the EOF crosses the tunnel as close_notify + FIN and comes out as a FIN.
    with SinkServer(extra_reply=4 << 20, reply_seed=7) as sink:
        exit_node = start_exit("fixed", host="127.0.0.1", port=sink.port)
        entry = start_entry(exit_node.port)
        with connect(entry.port) as dev:
            send = RandomStream(4 << 20, seed=3)
            result = exchange(dev, send, head_len=32, timeout=60)
        assert result.error is None
        assert result.eof
        assert result.head.hex() == send.hexdigest()
        assert result.digest == stream_digest(4 << 20, 7)
        exit_counters = exit_node.wait_idle()
        assert exit_counters["handshakes"] == 1
        assert exit_counters["bytes_in"] == 4 << 20
        assert exit_counters["bytes_out"] == 32 + (4 << 20)


def test_ed25519_nodes_make_a_tunnel(
    start_exit: ExitSetup, start_entry: ExitSetup, ids: Identities
) -> None:
    # Both nodes made with --key-type ed25519: each admits the other by its Ed25519 pin,
    # and a P-256 node is still told apart by its pin.
    with EchoServer() as echo:
        exit_node = start_exit(
            "fixed",
            host="127.0.0.1",
            port=echo.port,
            identity=ids.exit_ed25519,
            allow_pins=[ids.entry_ed25519.pin],
        )
        entry = start_entry(exit_node.port, identity=ids.entry_ed25519, pin=ids.exit_ed25519.pin)
        with connect(entry.port) as dev:
            ping(dev, b"over ed25519")
        assert exit_node.wait_idle()["handshakes"] == 1
        p256_entry = start_entry(exit_node.port, pin=ids.exit_ed25519.pin)
        assert_pin_refused(p256_entry, exit_node, ids.entry)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_socks5_relays_to_the_named_destination(
    start_exit: ExitSetup, start_entry: ExitSetup, host: str
) -> None:
    # IPv4, IPv6 and a name resolved at the exit (ATYP 1, 4, 3).
    with EchoServer(host="::1" if host == "::1" else "127.0.0.1") as echo:
        exit_node = start_exit("socks5")
        entry = start_entry(exit_node.port)
        with connect(entry.port) as dev:
            reply = socks5_connect(dev, host, echo.port)
            assert reply[:3] == b"\x05\x00\x00", reply
            send = RandomStream(1 << 20, seed=5)
            result = exchange(dev, send, timeout=30)
        assert result.error is None
        assert result.eof
        assert result.digest == send.hexdigest()
        exit_node.wait_idle()
        assert errors_of(exit_node, "proxy_request") == []


def test_http_connect_relays_and_keeps_early_bytes(
    start_exit: ExitSetup, start_entry: ExitSetup
) -> None:
    # Bytes the client sends right behind its request reach the server first, in order.
    with EchoServer() as echo:
        exit_node = start_exit("http-connect")
        entry = start_entry(exit_node.port)
        with connect(entry.port) as dev:
            reply = http_connect(dev, f"localhost:{echo.port}", extra=b"early bytes ")
            assert reply.startswith(b"HTTP/1.1 200 "), reply
            tail = reply.split(b"\r\n\r\n", 1)[1]
            dev.sendall(b"and more")
            want = b"early bytes and more"
            got = tail + recv_exact(dev, len(want) - len(tail))
            assert got == want


# -- who may connect -------------------------------------------------------------------


def test_an_entry_whose_pin_is_not_allowed_is_refused_and_named(
    start_exit: ExitSetup, start_entry: ExitSetup, ids: Identities
) -> None:
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port)
        stranger = start_entry(exit_node.port, identity=ids.stranger)
        assert_pin_refused(stranger, exit_node, ids.stranger)
        assert echo.connections == []
        # The exit serves an allowed entry right after.
        entry = start_entry(exit_node.port)
        with connect(entry.port) as dev:
            dev.sendall(b"ping")
            assert recv_exact(dev, 4) == b"ping"


def test_an_exit_whose_pin_does_not_match_is_refused_by_the_entry(
    start_exit: ExitSetup, start_entry: ExitSetup, ids: Identities
) -> None:
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port)
        entry = start_entry(exit_node.port, pin=ids.stranger.pin)
        assert_pin_refused(entry, entry, ids.exit)
        # The entry refuses inside the handshake, before its Finished: the exit hears why
        # and never dials its target.
        alert = wait_error(exit_node, "tls_alert")
        assert "bad certificate" in alert[5], alert
        assert alert[3].startswith("127.0.0.1:"), alert
        assert echo.connections == []


def test_a_client_without_certificate_is_refused(start_exit: ExitSetup, ids: Identities) -> None:
    exit_node = start_exit("socks5")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with connect(exit_node.port) as raw, ctx.wrap_socket(raw) as tls:
        # TLS 1.3: the client's handshake ends before the exit judges it; the refusal
        # (an alert, then the close) comes on the first read.
        assert first_read(tls) == b""
    event = wait_error(exit_node, "tls_verify_failed")
    assert "no certificate" in event[5]


def test_a_ca_admits_the_entries_it_issued(
    start_exit: ExitSetup, ids: Identities, tmp_path: Path
) -> None:
    issued = ids.pki.issue("entry-ca", client=True)
    with EchoServer() as echo:
        exit_node = start_exit(
            "fixed", host="127.0.0.1", port=echo.port, allow_pins=[], ca=str(ids.pki.ca_cert)
        )
        for cert, key, admitted in (
            (issued.chain, issued.key, True),
            (ids.stranger.cert, ids.stranger.key, False),
        ):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(str(cert), str(key))
            with connect(exit_node.port) as raw, ctx.wrap_socket(raw) as tls:
                try:
                    tls.sendall(b"ping")
                    got = tls.recv(4)
                except (ssl.SSLError, OSError):
                    got = b""
            assert (got == b"ping") == admitted
        event = wait_error(exit_node, "tls_pin_mismatch")
        assert ids.stranger.pin_text in event[5]
        assert "ca" in event[5]


# -- destinations --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["socks5", "http-connect"])
def test_the_default_policy_keeps_the_exit_host_out(
    start_exit: ExitSetup, start_entry: ExitSetup, protocol: str
) -> None:
    # Without allow_destinations, loopback (here: the exit's own services) is refused,
    # including when spelled as an IPv4-mapped IPv6 address.
    with EchoServer() as echo:
        exit_node = start_exit(protocol, allow=None)
        entry = start_entry(exit_node.port)
        for host in ("127.0.0.1", "::ffff:127.0.0.1", "localhost"):
            with connect(entry.port) as dev:
                if protocol == "socks5":
                    assert socks5_connect(dev, host, echo.port)[1] == 2  # not allowed
                else:
                    authority = f"[{host}]" if ":" in host else host
                    reply = http_connect(dev, f"{authority}:{echo.port}")
                    assert reply.startswith(b"HTTP/1.1 403 "), reply
                assert wait_closed(dev, TIMEOUT) == "eof"
        event = wait_error(exit_node, "proxy_denied")
        assert "allow_destinations" in event[5]
        assert echo.connections == []


def test_allowed_destinations_can_name_ports(start_exit: ExitSetup, start_entry: ExitSetup) -> None:
    with EchoServer() as echo, EchoServer() as other:
        exit_node = start_exit("socks5", allow=[("127.0.0.1/32", echo.port)])
        entry = start_entry(exit_node.port)
        with connect(entry.port) as dev:
            assert socks5_connect(dev, "127.0.0.1", other.port)[1] == 2
        with connect(entry.port) as dev:
            assert socks5_connect(dev, "127.0.0.1", echo.port)[1] == 0
            dev.sendall(b"ping")
            assert recv_exact(dev, 4) == b"ping"
        assert other.connections == []


@pytest.mark.parametrize("protocol", ["socks5", "http-connect"])
def test_failures_are_answered_in_the_protocol(
    start_exit: ExitSetup, start_entry: ExitSetup, protocol: str
) -> None:
    # A name that does not resolve and a port nobody listens on.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    exit_node = start_exit(protocol)
    entry = start_entry(exit_node.port)
    for host, socks_code, http_status, cause in (
        (UNRESOLVABLE, 4, b"502", "resolve_failed"),
        ("127.0.0.1", 5, b"502", "connect_refused"),
    ):
        with connect(entry.port) as dev:
            if protocol == "socks5":
                assert socks5_connect(dev, host, port)[1] == socks_code
            else:
                reply = http_connect(dev, f"{host}:{port}")
                assert reply.startswith(b"HTTP/1.1 " + http_status), reply
            assert wait_closed(dev, TIMEOUT) == "eof"
        event = wait_error(exit_node, cause)
        assert (UNRESOLVABLE in event[5]) if cause == "resolve_failed" else True


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"\x05\xff"),  # SOCKS4
        (b"\x05\x01\x02", b"\x05\xff"),  # only user/password
        (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),  # BIND
        (b"\x05\x01\x00\x05\x01\x00\x09", b"\x05\x00\x05\x08"),  # address type 9
        (b"\x05\x01\x00\x05\x01\x00\x03\x03a b\x00\x50", b"\x05\x00\x05\x04"),  # bad name
    ],
)
def test_malformed_socks5_gets_its_reply_and_a_close(
    start_exit: ExitSetup, start_entry: ExitSetup, request_bytes: bytes, reply: bytes
) -> None:
    exit_node = start_exit("socks5")
    entry = start_entry(exit_node.port)
    with connect(entry.port) as dev:
        dev.sendall(request_bytes)
        assert recv_exact(dev, len(reply)) == reply
        assert wait_closed(dev, TIMEOUT) in ("eof", "data")
    wait_error(exit_node, "proxy_request")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"CONNECT localhost HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT localhost:99999 HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT ::1:80 HTTP/1.1\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", b"400"),
        (b"CONNECT localhost:80 HTTP/1.1\r\n" + b"X: " + b"y" * 5000, b"431"),
    ],
)
def test_malformed_connect_gets_its_status_and_a_close(
    start_exit: ExitSetup, start_entry: ExitSetup, request_bytes: bytes, status: bytes
) -> None:
    exit_node = start_exit("http-connect")
    entry = start_entry(exit_node.port)
    with connect(entry.port) as dev:
        dev.sendall(request_bytes)
        assert http_connect_reply(dev).startswith(b"HTTP/1.1 " + status)
    wait_error(exit_node, "proxy_request")


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


def test_a_request_that_never_ends_times_out(start_exit: ExitSetup, start_entry: ExitSetup) -> None:
    exit_node = start_exit("socks5", handshake_timeout_ms=300)
    entry = start_entry(exit_node.port)
    with connect(entry.port) as dev:
        dev.sendall(b"\x05\x01\x00\x05\x01")  # greeting, half a request
        assert recv_exact(dev, 2) == b"\x05\x00"
        assert recv_exact(dev, 2) == b"\x05\x01"  # general failure
        assert wait_closed(dev, TIMEOUT) in ("eof", "data")
    event = wait_error(exit_node, "proxy_request")
    assert "in time" in event[5]


def test_connections_waiting_for_the_resolver_close_cleanly(
    start_exit: ExitSetup, start_entry: ExitSetup
) -> None:
    # The device leaves while its name is being resolved, and the loop is closed with
    # lookups in flight: no fd, thread or memory is left behind (make_relay and the
    # session's leak check look).
    exit_node = start_exit("socks5")
    entry = start_entry(exit_node.port)
    for _ in range(20):
        with connect(entry.port) as dev:
            dev.sendall(b"\x05\x01\x00")
            recv_exact(dev, 2)
            name = b"localhost"
            dev.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x00\x50")
    exit_node.wait_idle()


def test_events_name_the_client_after_it_reset(start_exit: ExitSetup, ids: Identities) -> None:
    # The address comes from accept: getpeername has nothing to say once the peer is gone.
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port)
        raw = connect(exit_node.port)
        port = raw.getsockname()[1]
        with entry_context(ids.entry).wrap_socket(raw) as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
            set_linger0(tls)
        event = wait_error(exit_node, "tls_error")
        assert event[3] == f"127.0.0.1:{port}", event


def test_a_stalled_device_stalls_the_server_through_both_legs(
    start_exit: ExitSetup, start_entry: ExitSetup
) -> None:
    # Backpressure crosses the tunnel: while the device reads nothing, the exit stops
    # reading the server (it holds at most one buffer per direction), so the server
    # blocks once the socket buffers on the way are full; then every byte arrives intact.
    total = 256 * MiB
    with SourceServer(total, seed=77) as up:
        exit_node = start_exit("fixed", host="127.0.0.1", port=up.port)
        entry = start_entry(exit_node.port)
        with connect(entry.port) as dev:
            reader = Reader(dev)
            reader.read(MiB, timeout=20)
            [rec] = up.wait_connections(1)
            # The device deliberately reads nothing for a while (not a synchronisation).
            threading.Event().wait(2.0)
            sent_while_stalled = rec.sent
            reader.read_to_eof(timeout=120)
            dev.shutdown(socket.SHUT_WR)
            rec.wait(20)
    assert sent_while_stalled < total // 4, f"{sent_while_stalled / MiB:.0f} MiB: not blocked"
    assert reader.received == total
    assert reader.hexdigest() == rec.sent_digest()


def test_hundreds_of_proxied_connections_at_once(
    start_exit: ExitSetup, start_entry: ExitSetup
) -> None:
    # 300 devices ask at once (greeting and request pipelined), half by name: the
    # resolver threads and the loop share the work, and every device gets its own bytes.
    n = 300
    with EchoServer() as echo:
        exit_node = start_exit("socks5")
        entry = start_entry(exit_node.port)
        devices = []
        try:
            for k in range(n):
                dev = connect(entry.port)
                devices.append(dev)
                host = b"localhost" if k % 2 else b"127.0.0.1"
                addr = b"\x03" + bytes([len(host)]) + host if k % 2 else b"\x01\x7f\x00\x00\x01"
                dev.sendall(b"\x05\x01\x00\x05\x01\x00" + addr + struct.pack(">H", echo.port))
            for dev in devices:
                assert recv_exact(dev, 12)[:4] == b"\x05\x00\x05\x00"
            for k, dev in enumerate(devices):
                dev.sendall(struct.pack(">I", k) * 1024)
            for k, dev in enumerate(devices):
                assert recv_exact(dev, 4096) == struct.pack(">I", k) * 1024
        finally:
            for dev in devices:
                dev.close()
        counters = exit_node.wait_idle()
        entry.wait_idle()
    assert counters["accepted"] == counters["closed"] == n
    assert counters["handshakes"] == n
    # The exit's tickets work: later handshakes resume (the first ones had no ticket).
    assert counters["handshakes_resumed"] > 0
    assert exit_node.pop_errors() == []
    assert entry.pop_errors() == []


# -- how a refusal ends ------------------------------------------------------------------
# Closing a socket with unread input sends a RST instead of a FIN (RFC 1122 4.2.2.13),
# and a RST may make the peer's kernel drop what it has not read yet: the very alert or
# reply that says why. So the exit sends its refusal, then a FIN, and reads what the
# client still sends until the client closes too.


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


def test_a_refused_entry_hears_the_alert_and_a_fin(start_exit: ExitSetup, ids: Identities) -> None:
    # TLS 1.3: the entry's Certificate, CertificateVerify and Finished arrive in one flight
    # and the exit refuses at the first of them, with the rest unread.
    exit_node = start_exit("socks5")
    for _ in range(20):
        client = RawTLS(exit_node.port, ids.stranger)
        try:
            client.handshake()
            assert client.tls.version() == "TLSv1.3"
            data, end = client.read_to_close()
            assert end == "eof", f"the refusal ended in {end}"
            text, why = client.plaintext(data)
            assert (text, why) == (b"", "SSLV3_ALERT_BAD_CERTIFICATE"), (text, why)
        finally:
            client.close()
    wait_error(exit_node, "tls_pin_mismatch")


@pytest.mark.parametrize("protocol", ["socks5", "http-connect"])
def test_a_denied_request_is_answered_then_ends_in_a_fin(
    start_exit: ExitSetup, ids: Identities, protocol: str
) -> None:
    # The entry pipelines its first bytes after the request, as a device may: the exit
    # denies the destination with those bytes unread, answers, and still ends with a FIN.
    exit_node = start_exit(protocol)
    for _ in range(20):
        client = RawTLS(exit_node.port, ids.entry)
        try:
            client.handshake()
            if protocol == "socks5":
                client.send(b"\x05\x01\x00")
                client.send(b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50")  # 10.0.0.1:80
            else:
                client.send(b"CONNECT 10.0.0.1:80 HTTP/1.1\r\n\r\n")
            client.send(b"GET / HTTP/1.1\r\n" * 100)
            data, end = client.read_to_close()
            assert end == "eof", f"the refusal ended in {end}"
            text, why = client.plaintext(data)
            assert why == "close_notify", why
            if protocol == "socks5":
                assert text[:4] == b"\x05\x00\x05\x02", text
            else:
                assert text.startswith(b"HTTP/1.1 403"), text
        finally:
            client.close()
    wait_error(exit_node, "proxy_denied")


def test_refusals_linger_only_while_slots_are_free(start_exit: ExitSetup, ids: Identities) -> None:
    # A refused client that keeps its socket open holds its slot while the exit lingers,
    # unless that slot is the last one: then the exit closes at once, so that the next
    # device is not kept waiting by a stranger.
    roomy = start_exit("socks5")
    full = start_exit("socks5", max_connections=1)
    for relay, lingering in ((roomy, 1), (full, 0)):
        client = RawTLS(relay.port, ids.stranger)
        try:
            client.handshake()
            wait_error(relay, "tls_pin_mismatch")
            assert relay.active() == lingering
        finally:
            client.close()
        relay.wait_idle()
