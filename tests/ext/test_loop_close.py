"""Half-close and abortive close, per data path: EOF is forwarded only after every byte
before it, the other direction keeps flowing, and a reset arrives as a reset.

Over TLS (1.3, where a half-close is well defined) the device's FIN reaches the upstream
as close_notify then FIN, and the upstream's close_notify reaches the device as a FIN."""

from __future__ import annotations

import threading

import pytest
from support.clients import connect, exchange, is_reset, ping, wait_closed
from support.data import KiB, MiB, RandomStream, stream_digest
from support.relay import assert_data_path
from support.servers import EchoServer, ResetServer, SinkServer, SourceServer, set_linger0

pytestmark = pytest.mark.timeout(60)

HALF_CLOSE_SIZES = [0, 1, 65537, 4 * MiB]
REPLY = MiB


@pytest.mark.parametrize("size", HALF_CLOSE_SIZES)
def test_client_half_close(make_relay, path, size):
    """Client sends then SHUT_WR: the upstream sees EOF only after all bytes (its digest is
    of all of them), its reply written after that EOF arrives whole, then the client's EOF."""
    with SinkServer(extra_reply=REPLY, reply_seed=7, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            result = exchange(sock, RandomStream(size, seed=size + 3), head_len=32, timeout=50)
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert result.error is None, f"client saw {result.error}"
    assert rec.eof, f"upstream saw {rec.error}"
    assert rec.error is None, f"upstream saw {rec.error}"
    assert rec.received == size, "upstream saw EOF before all bytes"
    assert rec.received_digest() == result.sent_digest
    if path.tls:
        assert rec.close_notify, "the device's FIN reached the upstream without close_notify"
        assert rec.tcp_eof, rec
    assert result.head == bytes.fromhex(result.sent_digest)
    assert result.received == 32 + REPLY, "reply sent after the half-close was cut"
    assert result.digest == stream_digest(REPLY, 7)
    assert result.eof
    assert_data_path(counters, path.name, bytes_in=size, bytes_out=32 + REPLY, conns=1)


@pytest.mark.parametrize("size", HALF_CLOSE_SIZES)
def test_upstream_half_close(make_relay, path, size):
    """The upstream sends then SHUT_WR: the client reads everything then EOF, and what the
    client sends afterwards still reaches the upstream."""
    down = MiB
    with SourceServer(down, seed=11, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            first = exchange(sock, None, timeout=20)
            assert first.error is None, first
            assert first.eof, first
            second = exchange(
                sock, RandomStream(size, seed=size + 5), read=False, chunk_seed=9, timeout=20
            )
            [rec] = up.wait_connections(1)
            rec.wait(10)
            outcome = wait_closed(sock, 10)
        counters = relay.wait_idle()
    assert first.received == down
    assert first.digest == rec.sent_digest()
    assert second.error is None, f"sending after the upstream's FIN failed: {second.error}"
    assert rec.error is None, f"upstream saw {rec.error}"
    assert rec.eof, f"upstream saw {rec.error}"
    assert rec.received == size, "client bytes after the upstream's FIN were lost"
    assert rec.received_digest() == second.sent_digest
    if path.tls:
        assert rec.close_notify, "the device's FIN reached the upstream without close_notify"
        assert rec.tcp_eof, rec
    assert outcome == "eof", f"client connection ended with {outcome}"
    assert_data_path(counters, path.name, bytes_in=size, bytes_out=down, conns=1)


def test_half_close_with_bytes_in_flight(make_relay, path):
    """The client's FIN reaches the relay while the relay still holds bytes the upstream is
    not reading (buffer or pipe full): the FIN must wait for them, nothing is truncated."""
    size = 128 * KiB + 1
    gate = threading.Event()
    with SinkServer(gate=gate, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            try:
                sent = exchange(sock, RandomStream(size, seed=21), read=False, timeout=10)
                up.wait_connections(1)
            finally:
                gate.set()
            reply = exchange(sock, None, head_len=32, timeout=20)
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert sent.error is None, (sent.error, reply.error)
    assert reply.error is None, (sent.error, reply.error)
    assert rec.received == size, "EOF overtook bytes still in the relay"
    assert reply.head == bytes.fromhex(sent.sent_digest)
    assert reply.eof
    assert rec.close_notify == path.tls, rec
    assert_data_path(counters, path.name, bytes_in=size, bytes_out=32, conns=1)


def test_upstream_reset_reaches_client_as_reset(make_relay, path):
    with ResetServer(after_bytes=4, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            sock.sendall(b"ping")
            outcome = wait_closed(sock, 5)
        [rec] = up.wait_connections(1)
        rec.wait(5)
        counters = relay.wait_idle()
    assert rec.reset_sent
    assert is_reset(outcome), f"upstream RST reached the client as {outcome!r}"
    assert counters["resets"] >= 1, counters


def test_upstream_reset_mid_stream(make_relay, path):
    """The upstream sends 1 MiB then RSTs: the client gets a byte-exact prefix of the stream
    and then ECONNRESET, never a clean EOF."""
    size = MiB
    with ResetServer(after_bytes=4, send_bytes=size, seed=31, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            sock.sendall(b"ping")
            result = exchange(sock, None, timeout=20)
        [rec] = up.wait_connections(1)
        rec.wait(5)
        counters = relay.wait_idle()
    assert rec.reset_sent
    assert not result.eof, "upstream RST reached the client as a clean EOF"
    assert result.error == "ECONNRESET", result
    assert result.received <= size
    prefix = stream_digest(size, 31, prefix=result.received)
    assert result.digest == prefix, "bytes before the RST differ"
    assert counters["resets"] >= 1, counters


def test_client_reset_reaches_upstream_as_reset(make_relay, path):
    with EchoServer(**path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        sock = connect(relay.port)
        try:
            ping(sock)
            set_linger0(sock)
        finally:
            sock.close()
        [rec] = up.wait_connections(1)
        rec.wait(5)
        counters = relay.wait_idle()
    assert rec.error == "ECONNRESET", f"client RST reached the upstream as eof={rec.eof}"
    assert counters["resets"] >= 1, counters


def test_device_reset_while_its_bytes_wait_is_seen_at_once(make_relay, path):
    """Devices reset while the bytes they sent wait for a server that does not read: the
    relay does not read a stalled source, but its reset is still seen at once (the
    connections close as resets), not at the idle timeout."""
    gate = threading.Event()
    with SinkServer(gate=gate, bufsize=16 * KiB, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay(idle_timeout_ms=60_000))
        socks = [connect(relay.port) for _ in range(4)]
        try:
            blob = bytes(256 * KiB)
            for sock in socks:
                sock.setblocking(False)
            # Until every device's socket is full: the relay's side is stalled behind it.
            for _ in range(256):
                stalled = 0
                for sock in socks:
                    try:
                        sock.send(blob)
                    except BlockingIOError:
                        stalled += 1
                if stalled == len(socks):
                    break
            for sock in socks:
                set_linger0(sock)
        finally:
            for sock in socks:
                sock.close()
        counters = relay.wait_idle(timeout=5)
        gate.set()
    assert counters["resets"] == 4, counters
    assert counters["idle_timeout"] == 0, counters
