"""The TLS stream after the handshake: thousands of tiny records to a slow device (records
left inside OpenSSL must not wait for an epoll edge that never comes), and how the
server's end of the stream reaches the device: close_notify (clean, no event), close_notify
without a FIN yet, and a FIN without close_notify (truncation: forwarded, and reported)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from support.clients import Reader, connect, exchange
from support.data import KiB, MiB, RandomStream, stream_digest
from support.relay import DataPath, TLSFiles, tls_failures
from support.servers import SourceServer, tls_server_context

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tls_path(tls_files: TLSFiles) -> DataPath:
    return DataPath("tls", tls_files)


def test_tiny_records_to_a_slow_reader(make_relay, tls_path):
    """20,000 records of 7 bytes (TLS 1.3), sent in 16 KiB bursts of records. The device
    reads 1 KiB bursts with pauses, and both its socket and the relay's socket to it have
    4 KiB buffers, so the relay keeps finding the device full with records still queued
    behind it; the server is done long before the device, so the last records raise no
    epoll edge of their own. Every byte arrives, in time."""
    records, size = 20_000, 7
    total = records * size
    upstream = tls_path.upstream()
    with SourceServer(total, seed=71, write_size=size, coalesce=16 * KiB, **upstream) as up:
        relay = make_relay(up.port, device_bufsize=4 * KiB, **tls_path.relay())
        with connect(relay.port, bufsize=4 * KiB) as sock:
            reader = Reader(sock)
            pause = threading.Event()
            deadline = time.monotonic() + 20
            while not reader.eof:
                left = deadline - time.monotonic()
                assert left > 0, f"device got {reader.received} of {total} bytes in 20 s"
                reader.read(KiB, timeout=left)
                # The device is slow on purpose (not a synchronisation).
                pause.wait(0.005)
            sock.shutdown(socket.SHUT_WR)
            [rec] = up.wait_connections(1)
            rec.wait(10)
        counters = relay.wait_idle()
    assert reader.received == total, reader.received
    assert reader.hexdigest() == rec.sent_digest(), "records reassembled out of order"
    assert rec.sent == total
    assert rec.error is None, rec
    assert rec.close_notify, rec
    assert counters["bytes_out"] == total, counters
    assert tls_failures(counters) == 0, counters


@pytest.mark.parametrize("size", [0, 1, MiB + 5])
def test_close_notify_is_a_clean_end(make_relay, tls_path, size):
    """The server sends, then close_notify and FIN: the device reads everything then EOF,
    and no error event is recorded."""
    with SourceServer(size, seed=81, **tls_path.upstream()) as up:
        relay = make_relay(up.port, **tls_path.relay())
        with connect(relay.port) as sock:
            result = exchange(sock, None, timeout=20)
            sock.shutdown(socket.SHUT_WR)
            [rec] = up.wait_connections(1)
            rec.wait(10)
        counters = relay.wait_idle()
    assert result.error is None, result
    assert result.eof, result
    assert result.received == size
    assert result.digest == stream_digest(size, 81)
    assert rec.error is None, rec
    assert rec.close_notify, "the device's FIN reached the server without close_notify"
    assert relay.pop_errors() == [], "a clean close_notify was reported as an error"
    assert tls_failures(counters) == 0, counters
    assert counters["resets"] == 0, counters


def test_close_notify_alone_ends_the_device_stream(make_relay, tls_files: TLSFiles):
    """The server sends 64 KiB then close_notify, keeping TCP open: the device gets EOF
    from the close_notify alone, and what it sends afterwards still reaches the server."""
    ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
    path = DataPath("tls", tls_files)
    with SourceServer(64 * KiB, seed=91, tls=ctx, fin_after_close_notify=False) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            first = exchange(sock, None, timeout=10)
            second = exchange(sock, RandomStream(MiB, seed=92), read=False, timeout=10)
            [rec] = up.wait_connections(1)
            rec.wait(10)
        counters = relay.wait_idle()
    assert first.eof, f"close_notify without a FIN did not reach the device: {first}"
    assert first.received == 64 * KiB
    assert first.digest == stream_digest(64 * KiB, 91)
    assert second.error is None, second
    assert rec.received == MiB, rec
    assert rec.received_digest() == second.sent_digest
    assert rec.close_notify, rec
    assert relay.pop_errors() == []
    assert counters["errors_tls_truncated"] == 0, counters


@pytest.mark.parametrize("size", [0, 1, MiB + 5])
def test_truncation_is_forwarded_and_reported(make_relay, tls_path, size):
    """The server sends, then a TCP FIN without close_notify: the device still reads every
    byte then EOF (not a reset: the device decides), and a tls_truncated event says the
    response may be cut short."""
    upstream = tls_path.upstream()
    with SourceServer(size, seed=101, close_notify=False, **upstream) as up:
        relay = make_relay(up.port, **tls_path.relay())
        with connect(relay.port) as sock:
            result = exchange(sock, None, timeout=20)
            event = relay.wait_error("tls_truncated")
            sock.shutdown(socket.SHUT_WR)
            [rec] = up.wait_connections(1)
            rec.wait(10)
        counters = relay.wait_idle()
    assert result.error is None, f"truncation reached the device as {result.error}"
    assert result.eof, result
    assert result.received == size
    assert result.digest == stream_digest(size, 101)
    assert event.route == 0, event
    assert "close_notify" in event.reason, event
    assert str(up.port) in event.upstream, event
    assert len(relay.errors) == 1, relay.errors
    assert counters["errors_tls_truncated"] == 1, counters
    assert counters["handshakes"] == 1, counters
