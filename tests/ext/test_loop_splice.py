"""splice policy: "auto" promotes a streaming direction and leaves chatter on the copy path;
a pool capped at 2 pipes makes further streams fall back to copying, byte-exact."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.clients import connect, exchange, recv_exact
from support.data import MiB, RandomStream
from support.relay import SPLICE_UNAVAILABLE
from support.servers import EchoServer, SinkServer, SourceServer

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(SPLICE_UNAVAILABLE is not None, reason=str(SPLICE_UNAVAILABLE)),
]


BACKLOG = 2 * MiB


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_auto_promotes_a_stream(make_relay):
    size = 64 * MiB
    with SourceServer(size, seed=501) as up:
        relay = make_relay(up.port, splice="auto")
        with connect(relay.port) as sock:
            # Let a backlog build before reading, so the stream outpaces its reader (what
            # makes it a stream); a reader faster than a Python producer may never see
            # three full 64 KiB reads in a row.
            [rec] = up.wait_connections(1)
            rec.wait_sent(BACKLOG, timeout=10)
            result = exchange(sock, RandomStream(0, seed=0), timeout=180)
        rec.wait(10)
        counters = relay.wait_idle()
    assert result.error is None, result
    assert result.eof, result
    assert result.received == size
    assert result.digest == rec.sent_digest()
    assert counters["splice_promoted"] > 0, counters
    assert counters["bytes_spliced"] > 0, counters
    assert counters["bytes_spliced"] + counters["bytes_copied"] == size, counters
    assert counters["bytes_out"] == size, counters


def test_auto_keeps_request_response_on_copy(make_relay):
    rounds, msg_size = 20, 100
    with EchoServer() as up:
        relay = make_relay(up.port, splice="auto")
        with connect(relay.port) as sock:
            for i in range(rounds):
                msg = bytes([i]) * msg_size
                sock.sendall(msg)
                assert recv_exact(sock, msg_size) == msg
            result = exchange(sock, RandomStream(0, seed=0), timeout=10)
        counters = relay.wait_idle()
    assert result.eof, result
    assert result.received == 0, result
    assert counters["splice_promoted"] == 0, counters
    assert counters["bytes_spliced"] == 0, counters
    assert counters["bytes_copied"] == 2 * rounds * msg_size, counters


@pytest.mark.timeout(120)
def test_pipe_pool_exhaustion_falls_back_to_copy(make_relay):
    """max_pipes=2, splice="always", 4 concurrent 8 MiB uploads. The upstream does not read
    until the pool has run dry, so all 4 streams are in flight at once."""
    conns, size = 4, 8 * MiB
    gate = threading.Event()
    with SinkServer(gate=gate) as up:
        relay = make_relay(up.port, splice="always", max_pipes=2)
        with ThreadPoolExecutor(conns) as pool:

            def one(i: int):
                with connect(relay.port) as sock:
                    return exchange(
                        sock,
                        RandomStream(size, seed=600 + i),
                        chunk_seed=i,
                        head_len=32,
                        timeout=90,
                    )

            futures = [pool.submit(one, i) for i in range(conns)]
            stalled: dict[str, int] | None = None
            stall_failure = ""
            try:
                up.wait_connections(conns)
                stalled = relay.wait_counters(
                    lambda c: c["pipes_exhausted"] > 0, 10, "pipes_exhausted > 0"
                )
            except AssertionError as exc:
                stall_failure = str(exc)  # checked after the streams are verified
            finally:
                gate.set()
            results = [f.result() for f in futures]
        records = up.wait_connections(conns)
        for rec in records:
            rec.wait(10)
        counters = relay.wait_idle()
    for result in results:
        assert result.error is None, result
        assert result.eof, result
        assert result.sent == size
        assert result.head == bytes.fromhex(result.sent_digest), "upload not byte-exact"
    assert sorted(rec.received_digest() for rec in records) == sorted(
        r.sent_digest for r in results
    )
    assert stalled is not None, stall_failure
    assert stalled["pipes_open"] <= 2, stalled
    assert counters["pipes_exhausted"] > 0, counters
    assert counters["bytes_copied"] > 0, counters
    assert counters["bytes_spliced"] > 0, counters
    assert counters["bytes_in"] == conns * size, counters
