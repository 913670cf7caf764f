"""Session resumption: the relay caches sessions per TLSClientContext, so the second and
later sequential connections to the same upstream resume (a TLS 1.2 session is reused,
each TLS 1.3 ticket is used once, and every connection brings new ones)."""

from __future__ import annotations

import ssl

import pytest
from support.clients import connect, exchange, ping
from support.data import RandomStream
from support.relay import SERVER_NAME, TLSFiles
from support.servers import EchoServer, tls_server_context

from relaycore._core import TLSClientContext

pytestmark = pytest.mark.timeout(60)

CONNECTIONS = 4


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
    ids=["tls1.2", "tls1.3"],
)
def test_sequential_connections_resume(make_relay, tls_files: TLSFiles, version, name):
    server_ctx = tls_server_context(
        tls_files.server.chain, tls_files.server.key, maximum_version=version
    )
    ctx = TLSClientContext(server_name=SERVER_NAME, ca=str(tls_files.pki.ca_cert))
    cached = []
    with EchoServer(tls=server_ctx) as up:
        relay = make_relay(up.port, splice="off", tls=ctx)
        for i in range(CONNECTIONS):
            with connect(relay.port) as sock:
                ping(sock, b"round %d" % i)
                result = exchange(sock, RandomStream(0, seed=0), timeout=10)
            assert result.eof, result
            up.wait_connections(i + 1)[i].wait(10)
            relay.wait_idle()
            cached.append(relay.call(lambda _loop: ctx.cached_sessions))
        counters = relay.wait_idle()
    records = up.wait_connections(CONNECTIONS)
    assert [r.tls_version for r in records] == [name] * CONNECTIONS, records
    assert [r.error for r in records] == [None] * CONNECTIONS, records
    assert [r.session_reused for r in records] == [False] + [True] * (CONNECTIONS - 1), (
        f"server-side session_reused per connection: {[r.session_reused for r in records]}"
    )
    assert counters["handshakes"] == CONNECTIONS, counters
    assert counters["handshakes_resumed"] == CONNECTIONS - 1, counters
    assert all(n >= 1 for n in cached), f"sessions cached after each connection: {cached}"
    assert relay.pop_errors() == []


def test_contexts_do_not_share_sessions(make_relay, tls_files: TLSFiles):
    """Two relays (two contexts) to one server: the second relay's first connection is a
    full handshake, whatever the first relay cached."""
    server_ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
    with EchoServer(tls=server_ctx) as up:
        relays = [
            make_relay(
                up.port,
                splice="off",
                tls=TLSClientContext(server_name=SERVER_NAME, ca=str(tls_files.pki.ca_cert)),
            )
            for _ in range(2)
        ]
        for i, relay in enumerate(relays):
            with connect(relay.port) as sock:
                ping(sock)
                exchange(sock, RandomStream(0, seed=0), timeout=10)
            up.wait_connections(i + 1)[i].wait(10)
        counters = [relay.wait_idle() for relay in relays]
    assert [r.session_reused for r in up.connections] == [False, False]
    assert [c["handshakes_resumed"] for c in counters] == [0, 0], counters
