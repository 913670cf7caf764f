"""io = "io_uring" (ext/uring/): which connections the ring takes, and what the ring must
get right beyond the data-path tests (which `make test-uring` runs on it too): receive
buffers running out and coming back, and slots held until the last completion of a
closed connection's requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.clients import connect, exchange
from support.data import KiB, MiB, RandomStream
from support.relay import DataPath, LoopThread, assert_data_path
from support.servers import SinkServer

pytestmark = pytest.mark.timeout(90)


def uring_relay(make_relay, up_port: int, path: DataPath, **loop_kwargs) -> LoopThread:
    """A relay on the ring for `path` (copy: splice off, the plain path the ring takes)."""
    kwargs = path.relay(io="io_uring", **loop_kwargs)
    if not path.tls:
        kwargs["splice"] = "off"
    return make_relay(up_port, **kwargs)


def wait_uring(relay: LoopThread, predicate, timeout: float, what: str) -> dict[str, int]:
    """Poll uring_stats() (a loop slice apart) until predicate holds; the last snapshot."""
    deadline = time.monotonic() + timeout
    pacing = threading.Event()
    while True:
        stats = relay.call(lambda loop: loop.uring_stats())
        if predicate(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {stats}")
        pacing.wait(0.01)


def upload(port: int, size: int, seed: int) -> tuple[str | None, bytes, str]:
    with connect(port) as sock:
        result = exchange(sock, RandomStream(size, seed=seed), chunk_seed=seed, head_len=32)
    return result.error, result.head, result.sent_digest


def assert_uploaded(results: list[tuple[str | None, bytes, str]]) -> None:
    """Each upload's bytes reached the server whole: its digest came back."""
    for error, head, digest in results:
        assert error is None, error
        assert head == bytes.fromhex(digest)


def assert_ring_idle(stats: dict[str, int]) -> None:
    """No request in flight, every receive buffer back with the kernel."""
    assert stats["inflight"] == 0, stats
    assert stats["buffers_free"] == stats["buffers"], stats


@pytest.fixture(params=["copy", "tls"])
def ring_path(request: pytest.FixtureRequest, tls_files) -> DataPath:
    return DataPath(request.param, tls_files)


def test_bad_io_arguments_are_refused():
    from relaycore._core import Loop

    with pytest.raises(ValueError, match="io must be 'epoll' or 'io_uring', not 'uring'"):
        Loop(io="uring")
    with pytest.raises(ValueError, match="uring_buffers must be a power of two"):
        Loop(io="io_uring", uring_buffers=1000)
    loop = Loop()
    try:
        assert loop.io == "epoll"
        assert loop.uring_stats() is None
    finally:
        loop.close()


def test_relaying_connections_move_to_the_ring(make_relay, ring_path):
    conns = 16
    with SinkServer(**ring_path.upstream()) as up:
        relay = uring_relay(make_relay, up.port, ring_path)
        assert relay.call(lambda loop: loop.io) == "io_uring"
        with ThreadPoolExecutor(conns) as pool:
            results = list(pool.map(lambda k: upload(relay.port, 256 * KiB + k, k), range(conns)))
        up.wait_connections(conns)
        counters = relay.wait_idle()
        stats = relay.call(lambda loop: loop.uring_stats())
    assert_uploaded(results)
    assert stats["adopted"] == conns, stats
    assert_ring_idle(stats)
    assert_data_path(
        counters,
        "tls" if ring_path.tls else "copy",
        bytes_in=sum(256 * KiB + k for k in range(conns)),
        bytes_out=32 * conns,
        conns=conns if ring_path.tls else None,
    )


def test_a_plain_stream_that_may_splice_stays_on_epoll(make_relay, tls_files):
    with SinkServer() as up:
        relay = make_relay(up.port, io="io_uring", splice="auto")
        error, head, digest = upload(relay.port, MiB, 1)
        relay.wait_idle()
        stats = relay.call(lambda loop: loop.uring_stats())
    assert_uploaded([(error, head, digest)])
    assert stats["adopted"] == 0, stats


def test_receive_buffers_run_out_and_come_back(make_relay, ring_path):
    # 16 buffers of 16 KiB for 8 uploads whose server does not read yet: once the relay's
    # socket buffers towards it are full, every connection holds received buffers it
    # cannot pass on, the ring runs dry and receives end with ENOBUFS. When the server
    # reads, the buffers come back, the receives are armed again and every byte arrives.
    conns, size = 8, 8 * MiB
    gate = threading.Event()
    with SinkServer(gate=gate, bufsize=16 * KiB, **ring_path.upstream()) as up:
        relay = uring_relay(make_relay, up.port, ring_path, uring_buffers=16)
        with ThreadPoolExecutor(conns) as pool:
            futures = [pool.submit(upload, relay.port, size, k) for k in range(conns)]
            wait_uring(relay, lambda s: s["starved"] > 0, 30, "a receive starved")
            gate.set()
            results = [f.result() for f in futures]
        counters = relay.wait_idle()
        stats = relay.call(lambda loop: loop.uring_stats())
    assert_uploaded(results)
    assert_ring_idle(stats)
    assert counters["bytes_in"] == conns * size, counters


def test_closing_with_requests_in_flight_frees_slot_and_buffers(make_relay, ring_path):
    # Uploads stall (the server does not read) until the idle timeout closes them: their
    # sends are stuck in flight and their receives armed or cancelled when the relay
    # closes them. Every slot must come back (the loop takes max_connections again), and
    # every buffer.
    conns = 4
    gate = threading.Event()
    with SinkServer(gate=gate, bufsize=16 * KiB, **ring_path.upstream()) as up:
        relay = uring_relay(
            make_relay, up.port, ring_path, max_connections=conns, idle_timeout_ms=1000
        )
        socks = [connect(relay.port) for _ in range(conns)]
        try:
            blob = bytes(256 * KiB)
            for sock in socks:
                sock.setblocking(False)
            for _ in range(64):
                for sock in socks:
                    try:
                        sock.send(blob)
                    except BlockingIOError:
                        pass
            wait_uring(relay, lambda s: s["adopted"] == conns, 10, "all adopted")
            counters = relay.wait_idle()
            stats = relay.call(lambda loop: loop.uring_stats())
        finally:
            for sock in socks:
                sock.close()
        assert counters["idle_timeout"] == conns, counters
        assert_ring_idle(stats)
        gate.set()
        with ThreadPoolExecutor(conns) as pool:
            results = list(pool.map(lambda k: upload(relay.port, 64 * KiB, k), range(conns)))
        relay.wait_idle()
    assert_uploaded(results)


def test_a_device_half_close_still_gets_the_reply(make_relay, ring_path):
    # EOF crosses one direction at a time: the device's FIN (close_notify, then FIN, over
    # TLS) reaches the server, whose 1 MiB reply still reaches the device.
    with SinkServer(extra_reply=MiB, reply_seed=9, **ring_path.upstream()) as up:
        relay = uring_relay(make_relay, up.port, ring_path)
        with connect(relay.port) as sock:
            result = exchange(sock, RandomStream(100 * KiB, seed=3), chunk_seed=3, head_len=32)
        [rec] = up.wait_connections(1)
        rec.wait(10)
        relay.wait_idle()
    assert result.error is None, result.error
    assert result.eof
    assert result.received == 32 + MiB
    assert rec.eof
    assert rec.close_notify or not ring_path.tls
