"""TLS 1.3 KeyUpdates from the server in user-space TLS (the path every kernel without
kTLS, or without TLS 1.3 rekey, takes; tests/ktls/test_ktls13.py runs the same over kTLS):
with and without update_requested, bytes flowing both ways, byte-exact. The server is
tlspeer (support/tlspeer.c, OpenSSL 3.5), which sends one after every EVERY bytes it
echoes, alternately plain and update_requested.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import pytest
from support.clients import connect, exchange
from support.data import KiB, MiB, RandomStream, stream_digest
from support.relay import SERVER_NAME, LoopThread, TLSFiles
from support.tlspeer import TLSPeer

from relaycore._core import TLSClientContext

pytestmark = pytest.mark.timeout(60)

EVERY = 64 * KiB
TIMEOUT = 30.0


@pytest.fixture
def keyupdating_server(tls_files: TLSFiles) -> Any:
    peer = TLSPeer.server(tls_files.server.chain, tls_files.server.key, EVERY)
    yield peer
    peer.stop()


def relay_to(make_relay: Any, tls_files: TLSFiles, port: int, **kwargs: Any) -> LoopThread:
    ctx = TLSClientContext(server_name=SERVER_NAME, ca=str(tls_files.pki.ca_cert))
    relay: LoopThread = make_relay(port, splice="off", tls=ctx, **kwargs)
    return relay


def send_then_read(port: int, data: bytes) -> bytes:
    """A device that sends everything and half-closes before it reads the answer."""
    with connect(port, timeout=TIMEOUT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := sock.recv(1 << 16):
            got += chunk
    return bytes(got)


def test_keyupdates_while_both_directions_stream(make_relay, tls_files, keyupdating_server):
    size, seed = 2 * MiB, 1401
    relay = relay_to(make_relay, tls_files, keyupdating_server.port)
    with connect(relay.port) as sock:
        res = exchange(sock, RandomStream(size, seed), chunk_seed=14, timeout=TIMEOUT)
    counters = relay.wait_idle()
    assert (res.error, res.eof, relay.pop_errors()) == (None, True, []), (res, counters)
    done = keyupdating_server.wait_done(TIMEOUT)
    expected = stream_digest(size, seed)
    assert (done["in"], done["in_sha256"]) == (size, expected), "device -> server differs"
    assert (res.received, res.digest) == (size, expected), "server -> device differs"
    assert done["keyupdates"] == size // EVERY, done
    assert counters["resets"] == 0, counters


def test_update_requested_after_our_close_notify_loses_nothing(
    make_relay, tls_files, keyupdating_server
):
    # The device sends everything and half-closes before it reads: the relay sends
    # close_notify and a FIN while the server still echoes, and keeps asking for our
    # KeyUpdate. We can no longer send one; the rest of the server's stream must still
    # arrive in full (OpenSSL 3.5 would try, and fail on the FIN with EPIPE).
    size = MiB
    data = RandomStream(size, 1402).peek(size)
    relay = relay_to(make_relay, tls_files, keyupdating_server.port)
    got = send_then_read(relay.port, data)
    done = keyupdating_server.wait_done(TIMEOUT)
    counters = relay.wait_idle()
    assert len(got) == size
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert done["in"] == done["out"] == size, done
    assert done["keyupdates"] == size // EVERY, done
    assert relay.pop_errors() == []
    assert counters["resets"] == 0, counters


def test_update_requested_before_our_close_notify_is_answered_before_it(make_relay, tls_files):
    # The device reads nothing until it has sent everything and half-closed, through a
    # small buffer: the relay's reads from the server stop at a full device while
    # KeyUpdates asking for ours are among them. Our answers must go out before our
    # close_notify (after it, with the FIN behind it, they could not), and the server's
    # stream must still arrive in full.
    size, every = 256 * KiB, 16 * KiB
    data = RandomStream(size, 1403).peek(size)
    peer = TLSPeer.server(tls_files.server.chain, tls_files.server.key, every)
    try:
        relay = relay_to(make_relay, tls_files, peer.port, device_bufsize=16 * KiB)
        got = send_then_read(relay.port, data)
        counters = relay.wait_idle()
        assert relay.pop_errors() == [], counters
        done = peer.wait_done(TIMEOUT)
    finally:
        peer.stop()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), len(got)
    assert done["in"] == done["out"] == size, done
    assert counters["resets"] == 0, counters
