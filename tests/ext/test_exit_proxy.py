"""Proxy exits (SOCKS5, HTTP CONNECT): which destinations they allow, how they answer
a failure or a malformed request, and the request phase's timeouts and resolver. The
nodes and helpers are test_exit.py's (conftest.py, exit_nodes.py).
"""

from __future__ import annotations

import errno
import os
import socket

import pytest
from exit_nodes import (
    TIMEOUT,
    UNRESOLVABLE,
    ExitSetup,
    Identities,
    entry_context,
    http_connect,
    http_connect_reply,
    socks5_connect,
)
from support.clients import connect, recv_exact, wait_closed
from support.servers import EchoServer, set_linger0

RESOLVER_THREADS = 4  # getaddrinfo threads per worker (ext/modes/types.pxd)

# -- destinations --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["socks5", "http-connect"])
def test_the_default_policy_keeps_the_exit_host_out(
    start_exit: ExitSetup, start_entry: ExitSetup, protocol: str
) -> None:
    # Without allow_destinations, loopback (here: the exit's own services) is refused,
    # including when spelled as an IPv4-mapped IPv6 address.
    with EchoServer() as echo:
        exit_node = start_exit(protocol, allow=None)
        entry = start_entry(exit_node.port)
        for host in ("127.0.0.1", "::ffff:127.0.0.1", "localhost"):
            with connect(entry.port) as dev:
                if protocol == "socks5":
                    assert socks5_connect(dev, host, echo.port)[1] == 2  # not allowed
                else:
                    authority = f"[{host}]" if ":" in host else host
                    reply = http_connect(dev, f"{authority}:{echo.port}")
                    assert reply.startswith(b"HTTP/1.1 403 "), reply
                assert wait_closed(dev, TIMEOUT) == "eof"
        event = exit_node.wait_error("proxy_denied", TIMEOUT)
        assert "allow_destinations" in event.reason
        assert echo.connections == []


def test_allowed_destinations_can_name_ports(start_exit: ExitSetup, start_entry: ExitSetup) -> None:
    with EchoServer() as echo, EchoServer() as other:
        exit_node = start_exit("socks5", allow=[("127.0.0.1/32", echo.port)])
        entry = start_entry(exit_node.port)
        with connect(entry.port) as dev:
            assert socks5_connect(dev, "127.0.0.1", other.port)[1] == 2
        with connect(entry.port) as dev:
            assert socks5_connect(dev, "127.0.0.1", echo.port)[1] == 0
            dev.sendall(b"ping")
            assert recv_exact(dev, 4) == b"ping"
        assert other.connections == []


@pytest.mark.parametrize("protocol", ["socks5", "http-connect"])
def test_failures_are_answered_in_the_protocol(
    start_exit: ExitSetup, start_entry: ExitSetup, protocol: str
) -> None:
    # A name that does not resolve and a port nobody listens on.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    exit_node = start_exit(protocol)
    entry = start_entry(exit_node.port)
    for host, socks_code, http_status, cause in (
        (UNRESOLVABLE, 4, b"502", "resolve_failed"),
        ("127.0.0.1", 5, b"502", "connect_refused"),
    ):
        with connect(entry.port) as dev:
            if protocol == "socks5":
                assert socks5_connect(dev, host, port)[1] == socks_code
            else:
                reply = http_connect(dev, f"{host}:{port}")
                assert reply.startswith(b"HTTP/1.1 " + http_status), reply
            assert wait_closed(dev, TIMEOUT) == "eof"
        event = exit_node.wait_error(cause, TIMEOUT)
        assert (UNRESOLVABLE in event.reason) if cause == "resolve_failed" else True


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"\x05\xff"),  # SOCKS4
        (b"\x05\x01\x02", b"\x05\xff"),  # only user/password
        (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),  # BIND
        (b"\x05\x01\x00\x05\x01\x00\x09", b"\x05\x00\x05\x08"),  # address type 9
        (b"\x05\x01\x00\x05\x01\x00\x03\x03a b\x00\x50", b"\x05\x00\x05\x04"),  # bad name
    ],
)
def test_malformed_socks5_gets_its_reply_and_a_close(
    start_exit: ExitSetup, start_entry: ExitSetup, request_bytes: bytes, reply: bytes
) -> None:
    exit_node = start_exit("socks5")
    entry = start_entry(exit_node.port)
    with connect(entry.port) as dev:
        dev.sendall(request_bytes)
        assert recv_exact(dev, len(reply)) == reply
        assert wait_closed(dev, TIMEOUT) in ("eof", "data")
    exit_node.wait_error("proxy_request", TIMEOUT)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"CONNECT localhost HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT localhost:99999 HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT ::1:80 HTTP/1.1\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", b"400"),
        (b"CONNECT localhost:80 HTTP/1.1\r\n" + b"X: " + b"y" * 5000, b"431"),
    ],
)
def test_malformed_connect_gets_its_status_and_a_close(
    start_exit: ExitSetup, start_entry: ExitSetup, request_bytes: bytes, status: bytes
) -> None:
    exit_node = start_exit("http-connect")
    entry = start_entry(exit_node.port)
    with connect(entry.port) as dev:
        dev.sendall(request_bytes)
        assert http_connect_reply(dev).startswith(b"HTTP/1.1 " + status)
    exit_node.wait_error("proxy_request", TIMEOUT)


def test_a_request_that_never_ends_times_out(start_exit: ExitSetup, start_entry: ExitSetup) -> None:
    exit_node = start_exit("socks5", handshake_timeout_ms=300)
    entry = start_entry(exit_node.port)
    with connect(entry.port) as dev:
        dev.sendall(b"\x05\x01\x00\x05\x01")  # greeting, half a request
        assert recv_exact(dev, 2) == b"\x05\x00"
        assert recv_exact(dev, 2) == b"\x05\x01"  # general failure
        assert wait_closed(dev, TIMEOUT) in ("eof", "data")
    event = exit_node.wait_error("proxy_request", TIMEOUT)
    assert "in time" in event.reason


def os_threads() -> int:
    """Threads of this process, the C ones (the resolver's) included."""
    return len(os.listdir("/proc/self/task"))


def test_connections_waiting_for_the_resolver_close_cleanly(
    start_exit: ExitSetup, start_entry: ExitSetup
) -> None:
    # The devices leave while their names are being resolved, and the loops are closed
    # with lookups maybe still in flight: closing joins the resolver's threads (each ends
    # the lookup it is in) and leaves no fd behind.
    threads, fds = os_threads(), len(os.listdir("/proc/self/fd"))
    exit_node = start_exit("socks5")
    entry = start_entry(exit_node.port)
    for _ in range(20):
        with connect(entry.port) as dev:
            dev.sendall(b"\x05\x01\x00")
            recv_exact(dev, 2)
            name = b"localhost"
            dev.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x00\x50")
    # Two loop threads, and the exit's resolver threads, started by the first name.
    running = threads + 2 + RESOLVER_THREADS
    exit_node.wait_counters(
        lambda c: c["accepted"] == 20 and os_threads() == running, TIMEOUT, "the resolver"
    )
    entry.stop()
    exit_node.stop()
    assert os_threads() == threads
    assert len(os.listdir("/proc/self/fd")) == fds


def test_events_name_the_client_after_it_reset(start_exit: ExitSetup, ids: Identities) -> None:
    # The address comes from accept: getpeername has nothing to say once the peer is gone.
    # The entry sends a record that cannot be decrypted, then resets: the exit reads the
    # record (queued before the RST) and fails on it with nobody left at the other end.
    with EchoServer() as echo:
        exit_node = start_exit("fixed", host="127.0.0.1", port=echo.port)
        raw = connect(exit_node.port)
        port = raw.getsockname()[1]
        with entry_context(ids.entry).wrap_socket(raw) as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
            os.write(tls.fileno(), b"\x17\x03\x03\x00\x20" + bytes(32))
            set_linger0(tls)
        event = exit_node.wait_error("tls_error", TIMEOUT)
        assert event.client == f"127.0.0.1:{port}", event
        assert event.errno == errno.EPROTO, event
