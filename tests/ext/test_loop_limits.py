"""max_connections: beyond the limit the loop stops accepting (the kernel queue holds the
connection) and resumes as soon as a slot frees."""

from __future__ import annotations

import contextlib

import pytest
from support.clients import connect, ping, recv_exact
from support.servers import EchoServer

pytestmark = pytest.mark.timeout(60)


def test_max_connections_queues_the_next(make_relay, path):
    with EchoServer(**path.upstream()) as up:
        relay = make_relay(up.port, **path.relay(max_connections=5))
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(connect(relay.port)) for _ in range(5)]
            for i, sock in enumerate(held):
                ping(sock, b"held%d" % i)
            sixth = stack.enter_context(connect(relay.port))  # the kernel completes it
            sixth.sendall(b"sixth")
            sixth.settimeout(0.5)
            try:
                early = sixth.recv(5)
            except TimeoutError:
                early = None
            assert early is None, f"6th connection answered {early!r} while 5 were open"
            before = relay.counters()
            held[0].close()
            late = recv_exact(sixth, 5, timeout=5)
            after = relay.counters()
        relay.wait_idle()
    assert before["accepted"] == before["active"] == 5, before
    assert late == b"sixth", "6th connection not served after a slot freed"
    assert after["accepted"] == 6, after
    assert after["accept_paused_limit"] > 0, after
