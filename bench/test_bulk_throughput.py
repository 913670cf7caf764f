"""Bulk throughput of one connection, one direction: client -> (relay) -> sink.

On the tls path the client still sends plain TCP: the relay encrypts every byte
(plain -> TLS) and the TLS sink decrypts it.

Each round opens a connection (outside the clock), sends BULK_BYTES from a 4 MiB buffer,
shuts down its write side and stops the clock when the sink's byte count comes back: the
relay must deliver every byte and forward the EOF for a round to end. Rounds of 1 GiB last
long enough (0.3-1 s here) that where the scheduler happens to put three busy processes on
two cores averages out within a round; 256 MiB rounds spread twice as wide.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from benchlib import Endpoints, connect

BULK_BYTES = 1 << 30
CHUNK = memoryview(bytearray(4 << 20))


def send_all_to_sink(sock: socket.socket) -> None:
    with sock:
        for _ in range(BULK_BYTES // len(CHUNK)):
            sock.sendall(CHUNK)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while len(reply) < 8:
            data = sock.recv(8 - len(reply))
            if not data:
                break
            reply += data
    received = int.from_bytes(reply, "little") if len(reply) == 8 else None
    assert received == BULK_BYTES, f"sink got {received} bytes of {BULK_BYTES}"


@pytest.mark.benchmark(group="bulk 1 GiB, one connection")
def test_bulk_throughput(
    benchmark: Any, endpoints: Endpoints, record_rate: Callable[..., None]
) -> None:
    """MB/s of 1 GiB through one connection into a sink."""
    benchmark.pedantic(
        send_all_to_sink,
        setup=lambda: ((connect(endpoints.sink),), {}),
        rounds=7,
        warmup_rounds=1,
    )
    record_rate(benchmark, "bulk, 1 connection", "MB/s", BULK_BYTES / 1e6, endpoints.sink_peer)
