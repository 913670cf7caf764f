"""Post-quantum key exchange: what a connector or exit offers, the group each handshake got
(counted per route as group_<name>), and `pq` (prefer, require, off).

The peers: Python's ssl module on the system's OpenSSL 3.0 (no ML-KEM: it must get X25519,
without a HelloRetryRequest), and tlspeer, a server on the same OpenSSL 3.5 as the relay
(support/tlspeer.c: it gets X25519MLKEM768). Relay to relay, the tunnel's two nodes.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exit_nodes import Identities
from support.clients import connect, connect_until_closed, is_reset, ping
from support.relay import SERVER_NAME, LoopThread, TLSFiles, one_route_counters
from support.servers import EchoServer, tls_server_context
from support.tlspeer import TLSPeer

from relaycore import _core
from relaycore._core import TLSClientContext

pytestmark = pytest.mark.timeout(60)

HYBRID = "X25519MLKEM768"
SERVER_HELLO = ssl._TLSMessageType.SERVER_HELLO  # type: ignore[attr-defined]
CLIENT_HELLO = ssl._TLSMessageType.CLIENT_HELLO  # type: ignore[attr-defined]
KEY_SHARE, SUPPORTED_GROUPS = 51, 10  # extension types
MLKEM_SHARE, X25519_SHARE = 0x11EC, 0x001D  # X25519MLKEM768, x25519 codepoints
TIMEOUT = 10.0


@pytest.fixture
def tls_relay(make_relay: Any, tls_files: TLSFiles) -> Any:
    """make(upstream_port, **TLSClientContext kwargs): a relay verifying SERVER_NAME."""

    def make(upstream_port: int, **ctx: Any) -> LoopThread:
        ctx.setdefault("server_name", SERVER_NAME)
        ctx.setdefault("ca", str(tls_files.pki.ca_cert))
        relay: LoopThread = make_relay(upstream_port, splice="off", tls=TLSClientContext(**ctx))
        return relay

    return make


def groups(counters: dict[str, int]) -> dict[str, int]:
    """The non-zero group_* counters, by group."""
    return {k.removeprefix("group_"): n for k, n in counters.items() if k[:6] == "group_" and n}


class Hellos:
    """What a Python ssl server sees of its handshakes (msg_callback): the ServerHello
    messages it sends (a HelloRetryRequest is a second one), and each ClientHello's key
    share groups and supported groups, by codepoint."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sent = 0
        self.key_shares: list[list[int]] = []
        self.supported: list[list[int]] = []
        ctx._msg_callback = self._seen  # type: ignore[attr-defined]

    def _seen(
        self, conn: Any, direction: str, version: Any, ctype: Any, mtype: Any, d: Any
    ) -> None:
        if direction == "write" and mtype == SERVER_HELLO:
            self.sent += 1
        elif direction == "read" and mtype == CLIENT_HELLO:
            ext = client_hello_extensions(bytes(d))
            self.key_shares.append(entries(ext[KEY_SHARE][2:], with_data=True))
            self.supported.append(entries(ext[SUPPORTED_GROUPS][2:], with_data=False))


def client_hello_extensions(msg: bytes) -> dict[int, bytes]:
    """A ClientHello handshake message's extensions, by type (RFC 8446 4.1.2)."""
    at = 4 + 2 + 32  # message header, legacy_version, random
    at += 1 + msg[at]  # legacy_session_id
    at += 2 + int.from_bytes(msg[at : at + 2], "big")  # cipher_suites
    at += 1 + msg[at]  # legacy_compression_methods
    end = at + 2 + int.from_bytes(msg[at : at + 2], "big")
    at += 2
    out = {}
    while at < end:
        kind, size = (
            int.from_bytes(msg[at : at + 2], "big"),
            int.from_bytes(msg[at + 2 : at + 4], "big"),
        )
        out[kind] = msg[at + 4 : at + 4 + size]
        at += 4 + size
    return out


def entries(body: bytes, *, with_data: bool) -> list[int]:
    """The group codepoints of a key_share (with_data) or supported_groups list."""
    groups, at = [], 0
    while at < len(body):
        groups.append(int.from_bytes(body[at : at + 2], "big"))
        at += 4 + int.from_bytes(body[at + 2 : at + 4], "big") if with_data else 2
    return groups


@pytest.fixture
def hybrid_server(tls_files: TLSFiles) -> Iterator[Any]:
    """start(every=0) -> a tlspeer echo server (OpenSSL 3.5) with the test certificate."""
    peers: list[TLSPeer] = []

    def start(every: int = 0) -> TLSPeer:
        peer = TLSPeer.server(tls_files.server.chain, tls_files.server.key, every)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()


def one_echo(relay: LoopThread, msg: bytes = b"over a key exchange") -> dict[str, int]:
    """One round trip through the relay; its counters once idle (its events popped)."""
    with connect(relay.port) as sock:
        ping(sock, msg)
    counters = relay.wait_idle()
    relay.pop_errors()
    return counters


# -- what a connector offers ---------------------------------------------------------------


def test_openssl_30_server_gets_x25519_without_a_retry(tls_relay, tls_files):
    # The default offer carries a key share for X25519 next to the hybrid one: a server
    # that has no ML-KEM picks X25519 at once (one ServerHello: no HelloRetryRequest).
    ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
    hellos = Hellos(ctx)
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port)
        counters = one_echo(relay)
        [rec] = up.wait_connections(1)
        rec.wait(TIMEOUT)
    assert rec.tls_version == "TLSv1.3", rec
    assert hellos.sent == 1, "a HelloRetryRequest was needed"
    assert groups(counters) == {"X25519": 1}, counters
    assert relay.pop_errors() == []
    [notice] = relay.notices
    assert notice.cause == "pq_classical", notice
    assert notice.reason.startswith("the server chose x25519 (TLSv1.3), not a post-quantum"), notice


def test_openssl_35_server_gets_the_hybrid_group(tls_relay, hybrid_server):
    peer = hybrid_server()
    relay = tls_relay(peer.port)
    counters = one_echo(relay)
    done = peer.wait_done(TIMEOUT)
    assert (peer.group, peer.version) == (HYBRID, "TLSv1.3")
    assert done["in"] == done["out"] == len(b"over a key exchange"), done
    assert groups(counters) == {HYBRID: 1}, counters
    assert relay.pop_errors() == []
    assert relay.notices == []


def test_pq_off_offers_classical_groups_only(tls_relay, hybrid_server):
    peer = hybrid_server()
    relay = tls_relay(peer.port, pq="off")
    counters = one_echo(relay)
    peer.wait_done(TIMEOUT)
    assert peer.group == "x25519", peer.group
    assert groups(counters) == {"X25519": 1}, counters
    assert relay.notices == [], "nothing post-quantum was offered: no notice"


def test_groups_set_is_the_offer(tls_relay, hybrid_server):
    peer = hybrid_server()
    relay = tls_relay(peer.port, groups="secp384r1")
    counters = one_echo(relay)
    peer.wait_done(TIMEOUT)
    assert groups(counters) == {"secp384r1": 1}, counters
    assert relay.notices == []


# -- one key share, once the server is known ----------------------------------------------


def echo_to_a_new_peer(relay: LoopThread, start: Any) -> tuple[TLSPeer, dict[str, int]]:
    """A new tlspeer (hybrid_server's start) becomes the relay's upstream (route 0), as
    when its name moves; one echo through it. The peer, once done, and the counters."""
    peer = start()
    relay.call(lambda loop: loop.set_upstream_addresses(0, [("127.0.0.1", peer.port)]))
    counters = one_echo(relay)
    peer.wait_done(TIMEOUT)
    return peer, counters


def test_a_classical_server_gets_one_x25519_share_after_the_first_handshake(tls_relay, tls_files):
    # The first ClientHello carries both shares; the server chose X25519, so the next ones
    # carry its share alone (no ML-KEM key made), the hybrid still first in the groups.
    ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
    hellos = Hellos(ctx)
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port)
        for _ in range(3):
            counters = one_echo(relay)
    assert hellos.key_shares == [
        [MLKEM_SHARE, X25519_SHARE],
        [X25519_SHARE],
        [X25519_SHARE],
    ], hellos.key_shares
    assert all(g[:2] == [MLKEM_SHARE, X25519_SHARE] for g in hellos.supported), hellos.supported
    assert hellos.sent == 3, "a HelloRetryRequest was needed"
    assert groups(counters) == {"X25519": 3}, counters


def test_a_hybrid_server_gets_one_hybrid_share_after_the_first_handshake(tls_relay, hybrid_server):
    first = hybrid_server()
    relay = tls_relay(first.port)
    one_echo(relay)
    first.wait_done(TIMEOUT)
    second, counters = echo_to_a_new_peer(relay, hybrid_server)
    assert first.keyshares == [[MLKEM_SHARE, X25519_SHARE]], first.keyshares
    assert second.keyshares == [[MLKEM_SHARE]], "no X25519 key made for a hybrid server"
    assert (first.group, second.group) == (HYBRID, HYBRID)
    assert groups(counters) == {HYBRID: 2}, counters


def test_an_upgraded_server_asks_for_the_hybrid_share_once(tls_relay, tls_files, hybrid_server):
    # Learnt: X25519 (an OpenSSL 3.0 server). The server behind the name now runs 3.5: it
    # asks for the hybrid share with a HelloRetryRequest, and the connector learns again.
    ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port)
        one_echo(relay)
    upgraded, _ = echo_to_a_new_peer(relay, hybrid_server)
    again, counters = echo_to_a_new_peer(relay, hybrid_server)
    assert upgraded.keyshares == [[X25519_SHARE], [MLKEM_SHARE]], upgraded.keyshares
    assert (upgraded.group, again.group) == (HYBRID, HYBRID)
    assert again.keyshares == [[MLKEM_SHARE]], again.keyshares
    assert groups(counters) == {"X25519": 1, HYBRID: 2}, counters


def test_groups_set_by_hand_are_offered_as_given_every_time(tls_relay, tls_files):
    ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
    hellos = Hellos(ctx)
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port, groups="*X25519MLKEM768:*X25519")
        one_echo(relay)
        one_echo(relay)
    assert hellos.key_shares == [[MLKEM_SHARE, X25519_SHARE]] * 2, hellos.key_shares


def test_require_keeps_both_shares_for_a_classical_server(tls_relay, tls_files):
    # So that each refusal can name the group the server chose.
    ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
    hellos = Hellos(ctx)
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(up.port, pq="require")
        for _ in range(2):
            connect_until_closed(relay.port)
            relay.wait_error("tls_pq_required")
    assert hellos.key_shares == [[MLKEM_SHARE, X25519_SHARE]] * 2, hellos.key_shares


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pq": "maybe"}, "pq: expected 'prefer', 'require' or 'off', got 'maybe'"),
        ({"pq": "require", "groups": "X25519"}, "pq: \"require\", but groups = 'X25519' offers"),
        ({"pq": "off", "groups": "X25519MLKEM768:X25519"}, 'pq: "off", but groups ='),
        ({"groups": "X25519:nonsense"}, "groups: "),
    ],
)
def test_pq_and_groups_that_disagree_are_refused(kwargs, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        TLSClientContext(**kwargs)


# -- pq = "require" on a connector ---------------------------------------------------------


def test_require_refuses_a_classical_server_naming_its_group(tls_relay, tls_files):
    with EchoServer(tls=tls_server_context(tls_files.server.chain, tls_files.server.key)) as up:
        relay = tls_relay(up.port, pq="require")
        outcome, _ = connect_until_closed(relay.port)
        event = relay.wait_error("tls_pq_required")
        counters = relay.wait_idle()
    assert is_reset(outcome), outcome
    assert event.reason == (
        'pq = "require": the server chose x25519 (TLSv1.3), not a post-quantum hybrid group'
    ), event
    assert counters["errors_tls_pq_required"] == 1, counters
    assert groups(counters) == {"X25519": 1}, counters


def test_require_sends_no_client_certificate_under_a_classical_group(tls_relay, tls_files):
    # The server asks for a certificate: the relay refuses before it sends one.
    ctx = tls_server_context(
        tls_files.server.chain, tls_files.server.key, client_ca=tls_files.pki.ca_cert
    )
    with EchoServer(tls=ctx) as up:
        relay = tls_relay(
            up.port, pq="require", cert=str(tls_files.client.chain), key=str(tls_files.client.key)
        )
        outcome, _ = connect_until_closed(relay.port)
        event = relay.wait_error("tls_pq_required")
        [rec] = up.wait_connections(1)
        rec.wait(TIMEOUT)
        counters = relay.wait_idle()
    assert is_reset(outcome), outcome
    assert rec.peer_cert is None, "the certificate went out under X25519"
    assert "the server chose x25519" in event.reason, event
    assert counters["handshakes"] == 0, "refused inside the handshake"


def test_require_accepts_a_hybrid_server(tls_relay, hybrid_server):
    peer = hybrid_server()
    relay = tls_relay(peer.port, pq="require")
    counters = one_echo(relay)
    peer.wait_done(TIMEOUT)
    assert groups(counters) == {HYBRID: 1}, counters
    assert counters["errors_tls_pq_required"] == 0, counters


# -- the pq_classical notice: once per change, not per connection -------------------------


class Switch:
    """A TCP forwarder on a fixed port to a backend that can change: one upstream address
    whose server changes, as behind a load balancer."""

    def __init__(self) -> None:
        self.backend = 0
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._lsock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self._lsock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.backend))
            self._socks += [a, b]
            for src, dst in ((a, b), (b, a)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._lsock.shutdown(socket.SHUT_RDWR)
        self._lsock.close()
        self._thread.join(TIMEOUT)
        for s in self._socks:
            s.close()
        for t in self._threads:
            t.join(TIMEOUT)


def test_classical_notice_is_once_per_change_at_most_once_a_minute(
    tls_relay, tls_files, hybrid_server
):
    switch = Switch()
    try:
        relay = tls_relay(switch.port)
        ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
        with EchoServer(tls=ctx) as classical:
            switch.backend = classical.port
            for _ in range(3):
                one_echo(relay)
            assert [e.cause for e in relay.notices] == ["pq_classical"]
            switch.backend = hybrid_server().port
            one_echo(relay)  # the server became post-quantum: a change back is news again
            switch.backend = classical.port
            counters = one_echo(relay)
    finally:
        switch.close()
    assert groups(counters) == {"X25519": 4, HYBRID: 1}, counters
    # ... but not within a minute of the last notice: a balancer mixing the two must not
    # make one per connection.
    assert len(relay.notices) == 1, relay.notices
    assert counters["errors_pq_classical"] == 1, counters


# -- the tunnel: relay to relay ------------------------------------------------------------


def test_tunnel_nodes_use_the_hybrid_group_out_of_the_box(start_exit, start_entry):
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port)
        entry = start_entry(exit_node.port)
        one_echo(entry, b"through the tunnel")
        assert groups(exit_node.wait_idle()) == {HYBRID: 1}
        assert groups(entry.wait_idle()) == {HYBRID: 1}
    assert entry.notices == exit_node.notices == []


def test_tunnel_nodes_with_pq_required_on_both(start_exit, start_entry):
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port, pq="require")
        entry = start_entry(exit_node.port, pq="require")
        one_echo(entry, b"quantum-safe")
        assert groups(exit_node.wait_idle()) == {HYBRID: 1}


def python_entry(ids: Identities) -> ssl.SSLContext:
    """An entry node on Python's ssl (OpenSSL 3.0): the exit's allowed identity, no ML-KEM."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(ids.entry.cert), str(ids.entry.key))
    return ctx


def test_exit_requiring_pq_refuses_a_classical_entry_with_an_alert(start_exit, ids):
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port, pq="require")
        with connect(exit_node.port) as raw, pytest.raises(ssl.SSLError) as refused:
            python_entry(ids).wrap_socket(raw)
        event = exit_node.wait_error("tls_pq_required")
        counters = exit_node.wait_idle()
    assert "HANDSHAKE_FAILURE" in str(refused.value), refused.value
    assert event.reason.startswith(
        'pq = "require": the client offered no post-quantum hybrid group ('
    ), event
    assert "x25519 first)" in event.reason, event
    assert counters["handshakes"] == 0, counters


def test_exit_notes_a_classical_entry_once(start_exit, ids):
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port)
        for _ in range(2):
            with connect(exit_node.port) as raw, python_entry(ids).wrap_socket(raw) as tls:
                tls.sendall(b"classical")
                assert tls.recv(64) == b"classical"
        counters = exit_node.wait_idle()
        exit_node.pop_errors()
    assert groups(counters) == {"X25519": 2}, counters
    [notice] = exit_node.notices
    assert notice.reason.startswith("the client offered no hybrid group: x25519 (TLSv1.3)"), notice


def test_module_names_the_openssl_it_runs():
    assert _core.OPENSSL_VERSION.startswith("OpenSSL 3."), _core.OPENSSL_VERSION
    major, minor = map(int, _core.OPENSSL_VERSION.split()[1].split(".")[:2])
    assert (major, minor) >= (3, 5), _core.OPENSSL_VERSION
    assert _core.OPENSSL_ORIGIN, "setup.py says where it came from"


def test_group_names_follow_the_enum():
    # base/causes.pxi checks the count at import; this checks the order, which the C
    # compiler cannot (GROUP_SECP256R1MLKEM768 is "SecP256r1MLKEM768", and so on).
    text = (Path(__file__).resolve().parents[2] / "ext" / "base" / "causes.pxd").read_text()
    names = re.findall(r"^\s+GROUP_(\w+)", text, re.M)
    assert names[-1] == "COUNT", names
    assert [g.upper() for g in _core.GROUPS] == names[:-1]
    route = one_route_counters()
    assert sorted(k for k in route if k.startswith("group_")) == sorted(
        f"group_{g}" for g in _core.GROUPS
    )
