"""Tunnel exits in the compiled loop: an entry connector (a LoopThread relaying to the exit
over TLS with its node identity) and an exit (a LoopThread serving TLS to entry nodes,
then a fixed target, SOCKS5 or HTTP CONNECT). The device speaks plain TCP to the entry.

Both legs are the real thing: the entry verifies the exit by its pin, the exit admits the
entry by its pin, and the bytes go device -> entry -> TLS -> exit -> server and back.
This file: the data path and who may connect. test_exit_proxy.py: the proxy protocols
and destinations; test_exit_refusals.py: how a refusal ends.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from pathlib import Path

import pytest
from exit_nodes import (
    TIMEOUT,
    ExitSetup,
    Identities,
    assert_pin_refused,
    errors_of,
    first_read,
    http_connect,
    socks5_connect,
)
from support.clients import Reader, connect, exchange, ping, recv_exact
from support.data import MiB, RandomStream, stream_digest
from support.servers import EchoServer, SinkServer, SourceServer, set_linger0

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


def test_a_device_reset_crosses_the_tunnel_as_a_reset_not_an_error(
    start_exit: ExitSetup, start_entry: ExitSetup
) -> None:
    # The device resets; the entry resets its TLS leg to the exit, and the exit resets its
    # server. A reset is counted on both nodes; neither logs a failure (the exit's client
    # is the entry, not a server, and a device's reset is not an error on a connector).
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port)
        entry = start_entry(exit_node.port)
        with connect(entry.port) as dev:
            ping(dev, b"before the reset")
            set_linger0(dev)
        assert entry.wait_idle()["resets"] == 1
        assert exit_node.wait_idle()["resets"] == 1
        assert entry.pop_errors() == []
        assert exit_node.pop_errors() == []


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
        alert = exit_node.wait_error("tls_alert", TIMEOUT)
        assert "bad certificate" in alert.reason, alert
        assert alert.client.startswith("127.0.0.1:"), alert
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
    event = exit_node.wait_error("tls_verify_failed", TIMEOUT)
    assert "no certificate" in event.reason


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
        event = exit_node.wait_error("tls_pin_mismatch", TIMEOUT)
        assert ids.stranger.pin_text in event.reason
        assert "ca" in event.reason


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
