"""Connect failures and the idle timeout, per data path: the client is closed promptly,
the cause is counted and reported as an error event, and resources are released."""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time

import pytest
from support.clients import connect, ping, wait_closed
from support.servers import HOST, EchoServer
from support.unreachable import BlackholeListener, refused_port

pytestmark = pytest.mark.timeout(60)

CLOSED = ("eof", "ECONNRESET")


def test_connect_refused(make_relay, path):
    with refused_port() as port:
        relay = make_relay(port, **path.relay())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((HOST, 0))
            client_port = sock.getsockname()[1]
            sock.settimeout(5)
            start = time.monotonic()
            try:
                sock.connect((HOST, relay.port))
                outcome = wait_closed(sock, 5)
            except ConnectionResetError:
                # The relay's RST can beat connect()'s own SO_ERROR check on loopback.
                outcome = "ECONNRESET"
            elapsed = time.monotonic() - start
        finally:
            sock.close()
        event = relay.wait_error("connect_refused")
        counters = relay.wait_idle()
    assert outcome in CLOSED
    assert elapsed < 1.0, f"client closed {elapsed:.2f}s after a refused connect"
    assert counters["errors_connect_refused"] == 1, counters
    assert counters["errors_connect_timeout"] == counters["errors_connect_failed"] == 0, counters
    assert counters["handshakes"] == 0, counters
    assert (event.route, event.cause, event.errno) == (0, "connect_refused", errno.ECONNREFUSED)
    assert str(client_port) in event.client, event
    assert str(port) in event.upstream, event
    with pytest.raises(AttributeError):
        event.cause = "connect_timeout"  # read-only: the loop's record


def test_connect_timeout(make_relay, path):
    with BlackholeListener() as hole:
        relay = make_relay(hole.port, **path.relay(connect_timeout_ms=300))
        with connect(relay.port) as sock:
            start = time.monotonic()
            outcome = wait_closed(sock, 10)
            elapsed = time.monotonic() - start
        event = relay.wait_error("connect_timeout")
        counters = relay.wait_idle()
    assert outcome in CLOSED
    assert 0.2 <= elapsed < 2.0, f"client closed {elapsed:.2f}s after connect, timeout 0.3s"
    assert counters["errors_connect_timeout"] == 1, counters
    assert counters["errors_connect_refused"] == 0, counters
    assert counters["handshakes"] == counters["errors_handshake_timeout"] == 0, counters
    assert (event.route, event.cause) == (0, "connect_timeout"), event
    assert str(hole.port) in event.upstream, event


def test_idle_timeout(make_relay, path):
    """Two relayed connections, idle_timeout 300 ms: the idle one is closed on both sides;
    the one that pings every 100 ms for 1.5 s stays open."""
    with EchoServer(**path.upstream()) as up:
        relay = make_relay(up.port, **path.relay(idle_timeout_ms=300))
        with connect(relay.port) as idle, connect(relay.port) as busy:
            ping(idle)
            [rec_idle] = up.wait_connections(1)
            ping(busy)
            rec_busy = up.wait_connections(2)[1]
            idle_since = time.monotonic()
            outcome, closed_after = None, None
            pacing = threading.Event()
            with selectors.DefaultSelector() as sel:
                sel.register(idle, selectors.EVENT_READ)
                for _ in range(15):
                    ping(busy)
                    if outcome is not None:
                        pacing.wait(0.1)
                    elif sel.select(timeout=0.1):
                        outcome = wait_closed(idle, 1.0)
                        closed_after = time.monotonic() - idle_since
            if outcome is None:
                outcome = wait_closed(idle, 3.0)
                closed_after = time.monotonic() - idle_since
            rec_idle.wait(3)
            ping(busy)
            assert not rec_busy.done.is_set(), "busy connection was closed"
            counters = relay.counters()
        relay.wait_idle()
    assert outcome in CLOSED
    assert closed_after is not None, closed_after
    assert closed_after < 3.0, closed_after
    if path.tls:
        # RFC 8446 6.1: a party MUST send close_notify before closing its write side
        # (unless it sent an error alert): a bare FIN reads as a truncated stream.
        assert rec_idle.close_notify or rec_idle.error == "ECONNRESET", (
            f"the idle close reached the TLS upstream as {rec_idle.error}, no close_notify"
        )
    else:
        assert rec_idle.eof or rec_idle.error == "ECONNRESET", rec_idle
    assert counters["idle_timeout"] == 1, counters
    assert counters["active"] == 1, counters
