"""Handshakes that the server decides: client certificates (mTLS), alerts the server sends
(protocol version, no shared cipher, certificate required), a server that never answers
(handshake timeout), and a device that gives up while the handshake is in progress."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest
from support.clients import (
    connect,
    connect_until_closed,
    exchange,
    is_reset,
    ping,
    wait_closed,
)
from support.data import RandomStream
from support.relay import SERVER_NAME, LoopThread, TLSFiles, tls_failures
from support.servers import EchoServer, SinkServer, set_linger0, tls_server_context

from relaycore._core import ErrorEvent, TLSClientContext

pytestmark = pytest.mark.timeout(60)

RESET_WITHIN = 1.0
TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


@pytest.fixture
def tls_relay(make_relay: Any, tls_files: TLSFiles) -> Any:
    """make(upstream_port, loop_kwargs={}, **TLSClientContext kwargs) -> a started relay
    that verifies SERVER_NAME against the test CA."""

    def make(upstream_port: int, loop_kwargs: dict[str, Any] | None = None, **ctx: Any):
        ctx.setdefault("server_name", SERVER_NAME)
        ctx.setdefault("ca", str(tls_files.pki.ca_cert))
        relay: LoopThread = make_relay(
            upstream_port, splice="off", tls=TLSClientContext(**ctx), **(loop_kwargs or {})
        )
        return relay

    return make


def server_ctx(tls_files: TLSFiles, **kwargs: Any) -> ssl.SSLContext:
    return tls_server_context(tls_files.server.chain, tls_files.server.key, **kwargs)


def assert_device_reset(relay: LoopThread, cause: str) -> ErrorEvent:
    """A device connecting is reset promptly, with one `cause` event; the event."""
    outcome, elapsed = connect_until_closed(relay.port)
    event = relay.wait_error(cause)
    assert is_reset(outcome), f"device saw {outcome!r}, not a RST"
    assert elapsed < RESET_WITHIN, f"device reset {elapsed:.2f}s after connecting"
    assert event.route == 0, event
    return event


# -- mTLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_client_certificate_is_presented(tls_relay, tls_files, version):
    ctx = server_ctx(tls_files, client_ca=tls_files.pki.ca_cert, maximum_version=version)
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port, cert=str(tls_files.client.chain), key=str(tls_files.client.key))
        with connect(relay.port) as sock:
            ping(sock, b"who am i")
            result = exchange(sock, RandomStream(0, seed=0), timeout=10)
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert result.eof, result
    assert rec.error is None, rec
    assert rec.peer_cert is not None, "the server got no client certificate"
    assert ((("commonName", "device-7"),)) in rec.peer_cert["subject"], rec.peer_cert
    assert counters["handshakes"] == 1, counters
    assert relay.pop_errors() == []


def test_missing_client_certificate_tls13(tls_relay, tls_files):
    """TLS 1.3: the client's handshake is over before the server has checked its (empty)
    Certificate, so the server's certificate_required alert (116) arrives at the relay's
    first read of the session: a handshake counted as done, then a tls_alert event naming
    the alert, and the device reset."""
    ctx = server_ctx(tls_files, client_ca=tls_files.pki.ca_cert, maximum_version=TLS13)
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port)
        event = assert_device_reset(relay, "tls_alert")
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert "alert 116: tlsv13 alert certificate required" in event.reason, event
    assert rec.error == "PEER_DID_NOT_RETURN_A_CERTIFICATE", rec
    assert counters["handshakes"] == 1, counters
    assert counters["errors_tls_alert"] == 1, counters
    assert len(relay.errors) == 1, relay.errors


def test_missing_client_certificate_tls13_device_speaks_first(tls_relay, tls_files):
    """As above, but each device sends its request at once: the relay's SSL_write may then
    meet the server's RST before any read has seen the alert. Every refusal is still
    reported, with the alert, and every device reset."""
    ctx = server_ctx(tls_files, client_ca=tls_files.pki.ca_cert, maximum_version=TLS13)
    devices = 8
    outcomes = []
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port)
        for _ in range(devices):
            with connect(relay.port) as sock:
                try:
                    sock.sendall(b"CONNECT device-7\r\n")
                    outcomes.append(wait_closed(sock, 5))
                except ConnectionResetError:
                    outcomes.append("ECONNRESET")
        for rec in up.wait_connections(devices):
            rec.wait(10)
        counters = relay.wait_idle()
        relay.pop_errors()
    assert all(is_reset(o) for o in outcomes), outcomes
    assert [e.cause for e in relay.errors] == ["tls_alert"] * devices, relay.errors
    assert all("certificate required" in e.reason for e in relay.errors), relay.errors
    assert counters["errors_tls_alert"] == devices, counters


def test_missing_client_certificate_tls12(tls_relay, tls_files):
    """TLS 1.2: the server refuses inside the handshake, with a handshake_failure alert."""
    ctx = server_ctx(tls_files, client_ca=tls_files.pki.ca_cert, maximum_version=TLS12)
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port)
        event = assert_device_reset(relay, "tls_alert")
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert "alert 40: handshake failure" in event.reason, event
    assert rec.error == "PEER_DID_NOT_RETURN_A_CERTIFICATE", rec
    assert counters["errors_tls_alert"] == tls_failures(counters) == 1, counters
    assert counters["handshakes"] == 0, counters


# -- alerts the server sends ---------------------------------------------------------------


def test_protocol_version_alert(tls_relay, tls_files):
    """min_tls 1.3 against a server that stops at 1.2."""
    with EchoServer(tls=server_ctx(tls_files, maximum_version=TLS12)) as up:
        relay = tls_relay(up.port, min_tls="1.3")
        event = assert_device_reset(relay, "tls_alert")
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert "alert 70: protocol version" in event.reason, event
    assert rec.error == "UNSUPPORTED_PROTOCOL", rec
    assert counters["errors_tls_alert"] == tls_failures(counters) == 1, counters


def test_no_shared_cipher_alert(tls_relay, tls_files):
    """TLS 1.2 with one AES-256 suite on the server, one AES-128 suite on the relay."""
    ctx = server_ctx(tls_files, maximum_version=TLS12, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        event = assert_device_reset(relay, "tls_alert")
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert "alert 40: handshake failure" in event.reason, event
    assert rec.error == "NO_SHARED_CIPHER", rec
    assert counters["errors_tls_alert"] == tls_failures(counters) == 1, counters


def test_server_closes_during_handshake(tls_relay):
    """A plain TCP server that reads the ClientHello and closes: the handshake fails
    (tls_handshake_failed), not a verify or alert cause, and the device is reset."""
    with EchoServer() as up:
        relay = tls_relay(up.port)
        # The echo server sends the ClientHello back: garbage to a TLS client.
        event = assert_device_reset(relay, "tls_handshake_failed")
        relay.wait_idle()
    assert event.reason, event


# -- a server that never answers -----------------------------------------------------------


def test_handshake_timeout(tls_relay):
    """The server accepts TCP and reads the ClientHello, then says nothing: after
    handshake_timeout_ms the device is reset and the upstream too."""
    with SinkServer() as up:
        relay = tls_relay(up.port, loop_kwargs={"handshake_timeout_ms": 300})
        outcome, elapsed = connect_until_closed(relay.port, timeout=10)
        event = relay.wait_error("handshake_timeout")
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert is_reset(outcome), outcome
    assert 0.25 <= elapsed < 2.0, f"device reset {elapsed:.2f}s after connect, timeout 0.3s"
    assert counters["errors_handshake_timeout"] == 1, counters
    assert tls_failures(counters) == counters["handshakes"] == 0, counters
    assert event.cause == "handshake_timeout", event
    assert "handshake" in event.reason, event
    assert str(up.port) in event.upstream, event
    assert rec.received > 0, "the relay sent no ClientHello"
    assert rec.error == "ECONNRESET", rec


def test_device_reset_during_handshake_frees_the_slot(tls_relay):
    """The device resets while the server sits on the ClientHello: the slot is freed at
    once, the upstream reset, and nothing is blamed on the server."""
    with SinkServer() as up:
        relay = tls_relay(up.port, loop_kwargs={"handshake_timeout_ms": 10_000})
        device = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        try:
            [rec] = up.wait_connections(1)
            relay.wait_counters(lambda c: c["active"] == 1, 5, "the relay to accept")
            set_linger0(device)
        finally:
            device.close()
        started = time.monotonic()
        counters = relay.wait_counters(lambda c: c["active"] == 0, 5, "the slot to free")
        elapsed = time.monotonic() - started
        rec.wait(5)
    assert elapsed < 2.0, f"slot held {elapsed:.1f}s after the device reset"
    errors = {name: n for name, n in counters.items() if name.startswith("errors_") and n}
    assert errors == {}, counters
    assert counters["resets"] == 1, counters
    assert rec.error == "ECONNRESET", rec
    assert relay.pop_errors() == []
