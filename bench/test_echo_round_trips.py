"""64-byte echo round trips on one kept connection: client -> (relay) -> echo -> back.

One connection per path, opened once; each round is ROUND_TRIPS strict ping-pongs (send 64
bytes, read the 64 back), so a round measures latency through every hop, not bandwidth.
On the tls path each message is one TLS record each way between the relay and the peer.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from benchlib import Endpoints, connect

ROUND_TRIPS = 20_000
SIZE = 64


@pytest.fixture
def echo_conn(endpoints: Endpoints) -> Iterator[socket.socket]:
    with connect(endpoints.echo) as sock:
        yield sock


def ping_pong(sock: socket.socket) -> None:
    message = bytes(range(SIZE))
    buf = bytearray(SIZE)
    view = memoryview(buf)
    send, recv_into = sock.sendall, sock.recv_into
    for _ in range(ROUND_TRIPS):
        send(message)
        got = 0
        while got < SIZE:
            n = recv_into(view[got:])
            if n == 0:
                raise ConnectionError("echo connection closed")
            got += n
    assert buf == message


@pytest.mark.benchmark(group="echo 64 B, one connection")
def test_echo_round_trips(
    benchmark: Any,
    endpoints: Endpoints,
    echo_conn: socket.socket,
    record_rate: Callable[..., None],
) -> None:
    """Round trips/s of 64-byte messages, one outstanding at a time."""
    benchmark.pedantic(ping_pong, args=(echo_conn,), rounds=7, warmup_rounds=1)
    record_rate(
        benchmark, "echo 64 B, 1 connection", "round trips/s", ROUND_TRIPS, endpoints.echo_peer
    )
