"""New connections/s: each connection is connect, one 64-byte echo, close.

A round is CONNECTIONS such connections, one after the other, from one Python client:
connect to the relay (or the peer, on `direct`), send 64 bytes, read the 64 back, close.
On the tls path every connection makes the relay open a TCP connection to the TLS echo
peer and do a TLS handshake before the bytes can go through. The relay's worker keeps the
peer's session tickets (TLS 1.3: single use, two per handshake), so after the first
connection every handshake should be a resumed one: the peer counts its handshakes and
the resumed ones (SSL_session_reused), and the benchmark checks that every connection
reached the peer and reports the resumed share.

`test_new_connections_direct_tls` is the TLS reference: the same connect/echo/close,
but the client speaks TLS to the TLS echo peer itself (Python's ssl, offering the last
session each time). It measures what a device that does TLS itself costs, on this
machine, not a ceiling of the relay: the handshake runs in a Python process here and in
the relay's C loop there.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
from benchlib import TIMEVAL, TLS_NOTES, TLS_SERVER_NAME, Endpoints, Peer, PeerStats

from relaycore.lab.pki import ServerPki

CONNECTIONS = 2_000
ROUNDS = 5
WARMUP_ROUNDS = 1
DIRECT_TLS_CONNECTIONS = 1_000
FULL_CONNECTIONS = 1_000
SIZE = 64
MESSAGE = bytes(range(SIZE))


def open_echo_close(address: tuple[str, int], count: int) -> None:
    buf = bytearray(SIZE)
    view = memoryview(buf)
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect(address)
            sock.sendall(MESSAGE)
            got = 0
            while got < SIZE:
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise ConnectionError(f"closed after {got} of {SIZE} echo bytes")
                got += n
        finally:
            sock.close()
        if buf != MESSAGE:
            raise AssertionError("the echo came back different")


@pytest.mark.benchmark(group="new connections, 64 B echo each")
def test_new_connections(
    benchmark: Any, endpoints: Endpoints, record_rate: Callable[..., None]
) -> None:
    """Connections/s, each: connect, 64-byte echo, close; one at a time."""
    peer = endpoints.echo_peer
    before = peer.stats()
    benchmark.pedantic(
        open_echo_close,
        args=(endpoints.echo, CONNECTIONS),
        rounds=ROUNDS,
        warmup_rounds=WARMUP_ROUNDS,
    )
    record_rate(benchmark, "new connections, 64 B echo each", "connections/s", CONNECTIONS, peer)
    if not peer.tls:
        return
    # Every connection reached the peer (the last close may still be on its way there).
    made = CONNECTIONS * (ROUNDS + WARMUP_ROUNDS) if benchmark.stats is not None else CONNECTIONS
    after = _stats_when(peer, before.handshakes + made)
    handshakes = after.handshakes - before.handshakes
    resumed = after.resumed - before.resumed
    assert handshakes == made, f"the TLS peer saw {handshakes} handshakes for {made} connections"
    share = resumed / handshakes
    benchmark.extra_info["tls_handshakes"] = handshakes
    benchmark.extra_info["tls_resumed"] = resumed
    benchmark.extra_info["tls_resumed_share"] = round(share, 4)
    TLS_NOTES["resumed"] = (
        f"relay TLS, new connections: the peer counted {resumed:,} resumed handshakes"
        f" of {handshakes:,} ({share:.2%})"
    )


def _stats_when(peer: Peer, handshakes: int, timeout: float = 5.0) -> PeerStats:
    deadline = time.monotonic() + timeout
    stats = peer.stats()
    while stats.handshakes < handshakes and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = peer.stats()
    return stats


def open_tls_echo_close(
    context: ssl.SSLContext, address: tuple[str, int], count: int, last: list[ssl.SSLSession]
) -> None:
    buf = bytearray(SIZE)
    view = memoryview(buf)
    for _ in range(count):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            raw.connect(address)
            with context.wrap_socket(
                raw, server_hostname=TLS_SERVER_NAME, session=last[0] if last else None
            ) as sock:
                sock.sendall(MESSAGE)
                got = 0
                while got < SIZE:
                    n = sock.recv_into(view[got:])
                    if n == 0:
                        raise ConnectionError(f"closed after {got} of {SIZE} echo bytes")
                    got += n
                # The tickets came with the echo: keep the newest for the next connection.
                session = sock.session
                if session is not None:
                    last[:] = [session]
        finally:
            raw.close()


@pytest.mark.benchmark(group="new connections, 64 B echo each")
def test_new_connections_direct_tls(
    benchmark: Any, peers: dict[str, Peer], bench_pki: ServerPki
) -> None:
    """The TLS reference: the client itself speaks TLS to the TLS echo peer."""
    peer = peers["tls-echo"]
    context = ssl.create_default_context(cafile=str(bench_pki.ca))
    last: list[ssl.SSLSession] = []
    before = peer.stats()
    benchmark.pedantic(
        open_tls_echo_close,
        args=(context, peer.address, DIRECT_TLS_CONNECTIONS, last),
        rounds=3,
        warmup_rounds=1,
    )
    after = _stats_when(peer, before.handshakes + 1)
    handshakes = after.handshakes - before.handshakes
    resumed = after.resumed - before.resumed
    benchmark.extra_info["path"] = "direct TLS (Python ssl client)"
    benchmark.extra_info["tls_protocol"] = after.protocol
    benchmark.extra_info["tls_cipher"] = after.cipher
    benchmark.extra_info["tls_handshakes"] = handshakes
    benchmark.extra_info["tls_resumed"] = resumed
    if benchmark.stats is None:
        return
    rate = DIRECT_TLS_CONNECTIONS / benchmark.stats.stats.median
    benchmark.extra_info["connections/s"] = round(rate, 1)
    TLS_NOTES["direct"] = (
        f"direct TLS reference (not a relay path): a Python ssl client straight to the TLS"
        f" echo peer, same connect/echo/close: {rate:,.0f} connections/s,"
        f" {resumed:,} of {handshakes:,} handshakes resumed"
    )


@pytest.mark.parametrize("endpoints", ["tls"], indirect=True)
@pytest.mark.benchmark(group="new connections, 64 B echo each")
def test_new_connections_full_handshake(
    benchmark: Any, endpoints: Endpoints, record_rate: Callable[..., None]
) -> None:
    """The same through the TLS connector to a peer that issues no session tickets: every
    upstream handshake is a full one (certificate chain, signature, hostname check)."""
    assert endpoints.echo_full is not None
    assert endpoints.echo_full_peer is not None
    peer = endpoints.echo_full_peer
    before = peer.stats()
    benchmark.pedantic(
        open_echo_close,
        args=(endpoints.echo_full, FULL_CONNECTIONS),
        rounds=3,
        warmup_rounds=1,
    )
    record_rate(
        benchmark, "new connections, full TLS handshakes", "connections/s", FULL_CONNECTIONS, peer
    )
    made = FULL_CONNECTIONS * 4 if benchmark.stats is not None else FULL_CONNECTIONS
    after = _stats_when(peer, before.handshakes + made)
    assert after.handshakes - before.handshakes == made
    assert after.resumed == before.resumed, "a peer without tickets resumed a session"
