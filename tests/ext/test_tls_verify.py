"""How the relay checks the upstream's certificate: the SNI it sends, the trust anchors it
loads (CA file, hashed CA directory, system store), the name or IP it verifies, and the
SPKI pins. Every refusal is checked against a real server presenting the offending
certificate: the error event names the cause and OpenSSL's reason, the device is reset at
once, and the server saw the relay's alert."""

from __future__ import annotations

import base64
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from support.clients import connect, connect_until_closed, exchange, is_reset, ping
from support.data import RandomStream
from support.relay import SERVER_NAME, LoopThread, TLSFiles, tls_failures
from support.servers import EchoServer, tls_server_context

from relaycore._core import ErrorEvent, TLSClientContext
from relaycore.lab.pki import Issued, self_signed

pytestmark = pytest.mark.timeout(60)

RESET_WITHIN = 1.0  # seconds from connect to the device's RST, when the server answers at once


def pin_of(issued: Issued) -> bytes:
    """The raw 32-byte digest of a `sha256/<base64>` pin."""
    return base64.b64decode(issued.spki_pin().removeprefix("sha256/"))


@pytest.fixture(scope="module")
def certs(tls_files: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    """The offending certificates, and a second valid one."""
    pki = tls_files.pki
    loose = tmp_path_factory.mktemp("self-signed")
    return {
        "self_signed": self_signed(loose, "rogue", dns=[SERVER_NAME], ips=["127.0.0.1"]),
        "wrong_name": pki.issue("wrong-name", dns=["other.test"], ips=["127.0.0.2"]),
        "expired": pki.issue(
            "expired", dns=[SERVER_NAME], ips=["127.0.0.1"], not_before_days=-10, days=-5
        ),
        "dns_only": pki.issue("dns-only", dns=[SERVER_NAME]),
        "other_key": pki.issue("other-key", dns=[SERVER_NAME], ips=["127.0.0.1"]),
    }


@pytest.fixture
def tls_relay(make_relay: Any, tls_files: TLSFiles) -> Any:
    """make(upstream_port, **TLSClientContext kwargs) -> a started relay whose route
    originates TLS; server_name defaults to SERVER_NAME and ca to the test CA (ca=None:
    pass ca="system" for the system store)."""

    def make(upstream_port: int, **ctx_kwargs: Any) -> LoopThread:
        ctx_kwargs.setdefault("server_name", SERVER_NAME)
        ca = ctx_kwargs.setdefault("ca", str(tls_files.pki.ca_cert))
        if ca == "system":
            ctx_kwargs["ca"] = None
        relay: LoopThread = make_relay(
            upstream_port, splice="off", tls=TLSClientContext(**ctx_kwargs)
        )
        return relay

    return make


def serve(issued: Issued) -> EchoServer:
    return EchoServer(tls=tls_server_context(issued.chain, issued.key))


def assert_relays(relay: LoopThread, up: EchoServer) -> dict[str, int]:
    """One echo round trip through the relay, then a clean close; the counters after."""
    with connect(relay.port) as sock:
        ping(sock, b"hello over tls")
        result = exchange(sock, RandomStream(0, seed=0), timeout=10)
    [rec] = up.wait_connections(1)
    rec.wait(10)
    counters = relay.wait_idle()
    assert result.eof, result
    assert rec.error is None, rec
    assert rec.close_notify, rec
    assert relay.pop_errors() == []
    assert counters["handshakes"] == 1, counters
    assert tls_failures(counters) == 0, counters
    return counters


def assert_refused(
    relay: LoopThread, up: EchoServer, cause: str, reason: str
) -> tuple[ErrorEvent, Any]:
    """A device connecting through the relay is reset promptly; one error event with this
    cause, its reason containing `reason`; the server's record."""
    outcome, elapsed = connect_until_closed(relay.port)
    event = relay.wait_error(cause)
    [rec] = up.wait_connections(1)
    rec.wait(10)
    counters = relay.wait_idle()
    assert is_reset(outcome), f"device saw {outcome!r} after a failed handshake, not a RST"
    assert elapsed < RESET_WITHIN, f"device reset {elapsed:.2f}s after connecting"
    assert len(relay.errors) == 1, relay.errors
    assert (event.route, event.cause) == (0, cause), event
    assert reason in event.reason, f"reason {event.reason!r} lacks {reason!r}"
    assert str(up.port) in event.upstream, event
    assert event.client != "?", event
    assert counters[f"errors_{cause}"] == tls_failures(counters) == 1, counters
    assert counters["handshakes"] == 0, counters
    assert rec.received == 0, "the relay sent application data over a refused session"
    return event, rec


# -- SNI and what is verified --------------------------------------------------------------


def test_sni_is_the_server_name(tls_relay, tls_files):
    with serve(tls_files.server) as up:
        relay = tls_relay(up.port)
        assert_relays(relay, up)
    [rec] = up.connections
    assert rec.sni_checked, rec
    assert rec.sni == SERVER_NAME, rec
    assert rec.tls_version == "TLSv1.3", rec


def test_ip_literal_sends_no_sni_and_verifies_the_ip_san(tls_relay, tls_files):
    with serve(tls_files.server) as up:
        relay = tls_relay(up.port, server_name="127.0.0.1")
        assert_relays(relay, up)
    [rec] = up.connections
    assert rec.sni_checked, "the server's SNI callback never ran"
    assert rec.sni is None, f"an IP-literal server_name was sent as SNI {rec.sni!r}"


def test_ip_literal_rejects_a_certificate_without_that_ip(tls_relay, certs):
    """The same chain, valid for SERVER_NAME only: checked against the IP, it fails (so
    the IP is what was verified, not the DNS name)."""
    with serve(certs["dns_only"]) as up:
        relay = tls_relay(up.port, server_name="127.0.0.1")
        assert_refused(relay, up, "tls_hostname_mismatch", "IP address mismatch")


# -- trust anchors -------------------------------------------------------------------------


def test_ca_file(tls_relay, tls_files):
    with serve(tls_files.server) as up:
        relay = tls_relay(up.port, ca=str(tls_files.pki.ca_cert))
        assert_relays(relay, up)


def test_ca_directory(tls_relay, tls_files):
    hashed = tls_files.pki.hashed_dir()
    assert Path(hashed).is_dir()
    with serve(tls_files.server) as up:
        relay = tls_relay(up.port, ca=str(hashed))
        assert_relays(relay, up)


def test_system_store_rejects_the_test_ca(tls_relay, tls_files):
    """Without `ca`, the system's trust store: the server's chain ends in the test CA,
    which it does not hold."""
    with serve(tls_files.server) as up:
        relay = tls_relay(up.port, ca="system")
        _, rec = assert_refused(
            relay, up, "tls_unknown_ca", "self-signed certificate in certificate chain"
        )
    assert rec.error == "TLSV1_ALERT_UNKNOWN_CA", rec


# -- refused certificates ------------------------------------------------------------------


def test_self_signed_is_unknown_ca(tls_relay, certs):
    with serve(certs["self_signed"]) as up:
        relay = tls_relay(up.port)
        _, rec = assert_refused(relay, up, "tls_unknown_ca", "self-signed certificate")
    assert rec.error == "TLSV1_ALERT_UNKNOWN_CA", rec


def test_hostname_mismatch(tls_relay, certs):
    with serve(certs["wrong_name"]) as up:
        relay = tls_relay(up.port)
        _, rec = assert_refused(relay, up, "tls_hostname_mismatch", "hostname mismatch")
    assert rec.tls_error is not None, "the server saw no alert"


def test_expired_certificate(tls_relay, certs):
    with serve(certs["expired"]) as up:
        relay = tls_relay(up.port)
        _, rec = assert_refused(relay, up, "tls_cert_expired", "certificate has expired")
    assert rec.error == "SSLV3_ALERT_CERTIFICATE_EXPIRED", rec


# -- pins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_pin_match(tls_relay, tls_files, certs, verify):
    """verify on: the CA-issued certificate, pinned. verify off: a self-signed one, which
    only its pin vouches for. A backup pin listed first does not get in the way."""
    issued = tls_files.server if verify else certs["self_signed"]
    with serve(issued) as up:
        relay = tls_relay(up.port, verify=verify, pins=[pin_of(certs["other_key"]), pin_of(issued)])
        assert_relays(relay, up)


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_pin_mismatch(tls_relay, tls_files, certs, verify):
    """A chain that verifies (or is not verified) but whose key is not pinned: refused,
    and the reason names the key the server has, ready to be pinned."""
    issued = tls_files.server if verify else certs["self_signed"]
    with serve(issued) as up:
        relay = tls_relay(up.port, verify=verify, pins=[pin_of(certs["other_key"])])
        assert_refused(relay, up, "tls_pin_mismatch", issued.spki_pin())


def test_a_failure_after_the_pin_admitted_the_server_is_named_for_what_it_is(
    tls_relay, tls_files, certs
):
    """verify off: the pin admits a self-signed server, overruling OpenSSL's "self-signed"
    complaint. The server then refuses us in the handshake (TLS 1.2, it wants a client
    certificate): the event is the server's alert, not the complaint the pin overruled."""
    issued = certs["self_signed"]
    ctx = tls_server_context(
        issued.chain,
        issued.key,
        client_ca=tls_files.pki.ca_cert,
        maximum_version=ssl.TLSVersion.TLSv1_2,
    )
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port, verify=False, pins=[pin_of(issued)])
        assert_refused(relay, up, "tls_alert", "handshake failure")


def test_verify_off_accepts_a_self_signed_certificate(tls_relay, certs):
    with serve(certs["self_signed"]) as up:
        relay = tls_relay(up.port, verify=False)
        assert_relays(relay, up)


def test_refusals_do_not_slow_the_next_device(tls_relay, certs):
    """Three refused devices in a row, each reset promptly: a failed handshake leaves
    nothing behind that delays the next."""
    with serve(certs["expired"]) as up:
        relay = tls_relay(up.port)
        start = time.monotonic()
        outcomes = [connect_until_closed(relay.port) for _ in range(3)]
        up.wait_connections(3)
        counters = relay.wait_idle()
    assert all(is_reset(o) for o, _ in outcomes), outcomes
    assert time.monotonic() - start < 3 * RESET_WITHIN, outcomes
    assert tls_failures(counters) == 3, counters
