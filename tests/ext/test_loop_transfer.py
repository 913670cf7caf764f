"""Byte-exact relaying, per data path: sizes around page, buffer and TLS record (16 KiB)
boundaries, both directions, full duplex, many connections at once, and tiny socket
buffers that force partial sends, partial splices and partial SSL_writes (WANT_WRITE)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from support.clients import Result, connect, exchange
from support.data import KiB, MiB, RandomStream
from support.relay import DataPath, assert_data_path
from support.servers import ConnRecord, SinkServer, SourceServer

pytestmark = pytest.mark.timeout(60)

SIZES = [
    0,
    1,
    4095,
    4096,
    4097,
    16383,
    16384,
    16385,
    65535,
    65536,
    65537,
    MiB,
    pytest.param(64 * MiB, marks=[pytest.mark.slow, pytest.mark.timeout(240)]),
]


def assert_clean_end(rec: ConnRecord, path: DataPath) -> None:
    """The upstream saw the client's end of stream: a FIN, or close_notify then a FIN."""
    assert rec.error is None, f"upstream saw {rec.error}"
    assert rec.eof, "upstream never got EOF"
    if path.tls:
        assert rec.tls_version == "TLSv1.3", rec
        assert rec.close_notify, rec
        assert rec.tcp_eof, rec


def assert_exact(result: Result, rec: ConnRecord, path: DataPath, *, up: int, down: int) -> None:
    """Client and upstream agree on every byte in both directions, and both ends ended
    cleanly."""
    assert result.error is None, f"client saw {result.error}"
    assert result.eof, "client never got EOF"
    assert rec.send_error is None, f"upstream send failed with {rec.send_error}"
    assert_clean_end(rec, path)
    assert (result.sent, rec.received) == (up, up)
    assert rec.received_digest() == result.sent_digest, "client -> upstream bytes differ"
    assert (rec.sent, result.received) == (down, down)
    assert result.digest == rec.sent_digest(), "upstream -> client bytes differ"


@pytest.mark.parametrize("size", SIZES)
def test_upload_byte_exact(make_relay, path, size):
    with SinkServer(**path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            result = exchange(
                sock, RandomStream(size, seed=size), chunk_seed=size + 1, head_len=32, timeout=180
            )
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert result.error is None, f"client saw {result.error}"
    assert result.eof, "client never got EOF"
    assert_clean_end(rec, path)
    assert rec.received == size
    assert rec.received_digest() == result.sent_digest, "client -> upstream bytes differ"
    assert result.head == bytes.fromhex(result.sent_digest), "digest reply corrupted"
    assert result.received == 32
    assert counters["accepted"] == counters["closed"] == 1, counters
    assert_data_path(counters, path.name, bytes_in=size, bytes_out=32, conns=1)


@pytest.mark.parametrize("size", SIZES)
def test_download_byte_exact(make_relay, path, size):
    with SourceServer(size, seed=size, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            result = exchange(sock, RandomStream(0, seed=0), timeout=180)
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert_exact(result, rec, path, up=0, down=size)
    assert counters["accepted"] == counters["closed"] == 1, counters
    assert_data_path(counters, path.name, bytes_in=0, bytes_out=size, conns=1)


def test_full_duplex(make_relay, path):
    size = 32 * MiB
    with SourceServer(size, seed=101, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port) as sock:
            result = exchange(sock, RandomStream(size, seed=102), chunk_seed=103, timeout=50)
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert_exact(result, rec, path, up=size, down=size)
    assert_data_path(counters, path.name, bytes_in=size, bytes_out=size, conns=1)


def test_many_connections_at_once(make_relay, path):
    conns, size = 8, 2 * MiB
    with SourceServer(size, seed=201, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())

        def one(i: int) -> Result:
            with connect(relay.port) as sock:
                return exchange(sock, RandomStream(size, seed=300 + i), chunk_seed=i, timeout=50)

        with ThreadPoolExecutor(conns) as pool:
            results = list(pool.map(one, range(conns)))
        records = up.wait_connections(conns)
        for rec in records:
            rec.wait(10)
        counters = relay.wait_idle()
    # Every connection downloads the same stream; match uploads by digest.
    assert {r.sent_digest for r in results} == {rec.received_digest() for rec in records}
    for result in results:
        assert result.error is None, result
        assert result.eof, result
        assert (result.sent, result.received) == (size, size)
        assert result.digest == records[0].sent_digest()
    for rec in records:
        assert_clean_end(rec, path)
        assert rec.received == size, rec
    assert counters["accepted"] == counters["closed"] == conns, counters
    assert_data_path(
        counters, path.name, bytes_in=conns * size, bytes_out=conns * size, conns=conns
    )


@pytest.mark.timeout(120)
def test_tiny_socket_buffers(make_relay, path):
    """SO_SNDBUF/SO_RCVBUF of 4 KiB on both peers: the relay's sends and splices to them
    are short all the time."""
    size = 8 * MiB
    with SourceServer(size, seed=401, bufsize=4 * KiB, **path.upstream()) as up:
        relay = make_relay(up.port, **path.relay())
        with connect(relay.port, bufsize=4 * KiB) as sock:
            result = exchange(sock, RandomStream(size, seed=402), chunk_seed=403, timeout=100)
        [rec] = up.wait_connections(1)
        rec.wait(10)
        counters = relay.wait_idle()
    assert_exact(result, rec, path, up=size, down=size)
    assert_data_path(counters, path.name, bytes_in=size, bytes_out=size, conns=1)
