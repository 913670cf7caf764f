"""The upstream certificate a connector's handshakes saw (Loop.route_certs): its pin,
notAfter, issuer and subject, as openssl reads the same file; a server whose key is
rotated is a key change, with the key before it kept; routes without a TLS handshake
have none."""

from __future__ import annotations

import base64
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from support.clients import connect, ping
from support.relay import SERVER_NAME, LoopThread, TLSFiles
from support.servers import EchoServer, tls_server_context
from support.tlsconn import note_sni

from relaycore._core import TLSClientContext
from relaycore.lab.pki import Issued

pytestmark = pytest.mark.timeout(60)


def pin_of(issued: Issued) -> bytes:
    return base64.b64decode(issued.spki_pin().removeprefix("sha256/"))


def not_after(issued: Issued) -> int:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(issued.cert), "-noout", "-enddate", "-dateopt", "iso_8601"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    when = out.strip().removeprefix("notAfter=")
    return int(datetime.strptime(when, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def context(issued: Issued) -> Any:
    ctx = tls_server_context(issued.chain, issued.key)
    ctx.sni_callback = note_sni
    return ctx


def relay_once(relay: LoopThread) -> None:
    with connect(relay.port) as sock:
        ping(sock, b"hello")
    relay.wait_idle()


def certs(relay: LoopThread) -> list[dict[str, Any] | None]:
    return relay.call(lambda loop: loop.route_certs())


def test_the_route_keeps_the_servers_leaf_and_counts_a_new_key(make_relay, tls_files: TLSFiles):
    pki = tls_files.pki
    first = pki.issue("short-lived", dns=[SERVER_NAME], days=3)
    rotated = pki.issue("rotated", dns=[SERVER_NAME], days=30)
    with EchoServer(tls=context(first)) as up:
        tls = TLSClientContext(server_name=SERVER_NAME, ca=str(pki.ca_cert))
        relay: LoopThread = make_relay(up.port, splice="off", tls=tls)
        assert certs(relay) == [None]

        before = time.time()
        relay_once(relay)
        [cert] = certs(relay)
        assert cert is not None
        assert cert["pin"] == pin_of(first)
        assert cert["not_after"] == not_after(first)
        assert cert["issuer"] == "CN=Test CA"
        assert cert["subject"] == "CN=short-lived"
        assert (cert["key_changes"], cert["previous_pin"]) == (0, b"")
        assert before - 1 <= cert["seen"] <= time.time() + 1

        # The same server again (a resumed session presents the same certificate).
        relay_once(relay)
        [again] = certs(relay)
        assert again is not None
        assert (again["pin"], again["key_changes"]) == (cert["pin"], 0)

        # The server's key is rotated: new connections meet the new certificate (its new
        # context has its own ticket keys, so the relay's cached session cannot resume).
        up.tls = context(rotated)
        relay_once(relay)
        [cert] = certs(relay)
        assert cert is not None
        assert cert["pin"] == pin_of(rotated)
        assert cert["not_after"] == not_after(rotated)
        assert (cert["key_changes"], cert["previous_pin"]) == (1, pin_of(first))


def test_plain_routes_have_no_certificate(make_relay):
    with EchoServer() as up:
        relay: LoopThread = make_relay(up.port, splice="off")
        relay_once(relay)
        assert certs(relay) == [None]
