"""The PROXY protocol in the compiled loop (modes/proxyhdr.pxi). Sending: a connector with
proxy_protocol writes the header before anything else, so an echo upstream hands it back
to the device. Reading (accept_proxy): the balancer's header is taken off the connection
once complete, its client named in events and passed on; a missing, malformed or late
header is refused with an event (proxy_header) while other connections go on. Then the
parser alone under hypothesis, as test_proxy_fuzz.py does for SOCKS5.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.clients import connect, is_reset, ping, recv_exact, wait_closed
from support.relay import LoopThread
from support.servers import HOST, EchoServer
from support.unreachable import refused_port

from relaycore import _core

HEADER = b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\n"


def start(make_relay: Callable[..., LoopThread], port: int, **route: Any) -> tuple[LoopThread, int]:
    def setup(loop: Any, fd: int) -> None:
        loop.add_listener(fd, loop.add_upstream(HOST, port, **route))

    relay = make_relay(0, setup=setup, handshake_timeout_ms=500)
    return relay, relay.port


@pytest.mark.parametrize("version", [1, 2])
def test_the_header_goes_first_with_the_devices_address(make_relay, version):
    with EchoServer() as echo:
        relay, port = start(make_relay, echo.port, proxy_protocol=version)
        with connect(port) as dev:
            dev.sendall(b"hello")
            want = _core.build_proxy_header(version, HOST, dev.getsockname()[1], HOST, port)
            assert recv_exact(dev, len(want) + 5) == want + b"hello"
        relay.wait_idle()


def test_a_balancers_header_is_taken_off_and_passed_on(make_relay):
    with EchoServer() as echo:
        relay, port = start(make_relay, echo.port, accept_proxy=True, proxy_protocol=1)
        with connect(port) as dev:
            # The header may come in pieces, and the first data right behind it.
            dev.sendall(HEADER[:9])
            dev.sendall(HEADER[9:] + b"hello")
            assert recv_exact(dev, len(HEADER) + 5) == HEADER + b"hello"
            ping(dev)
        relay.wait_idle()


def test_events_name_the_client_the_balancer_gave(make_relay):
    with refused_port() as gone:
        relay, port = start(make_relay, gone, accept_proxy=True)
        with connect(port) as dev:
            dev.sendall(HEADER)
            assert is_reset(wait_closed(dev, 5.0))
        event = relay.wait_error("connect_refused")
        assert (event.client, event.destination) == ("198.51.100.7:40000", "192.0.2.1:443")


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "no PROXY header: the client sent something else first"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "malformed address or port in a PROXY v1 line"),
        (b"PROXY TCP4 1.2.3.4", "no complete PROXY header within the handshake timeout"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x31", "PROXY v2 header with an unknown version or command"),
        (b"", "the client closed the connection before its PROXY header ended"),
    ],
    ids=["http", "port", "late", "v3", "closed"],
)
def test_a_bad_header_is_refused_and_others_go_on(make_relay, sent, reason):
    with EchoServer() as echo:
        relay, port = start(make_relay, echo.port, accept_proxy=True)
        with connect(port) as bystander:
            bystander.sendall(HEADER)
            ping(bystander)
            with connect(port) as dev:
                dev.sendall(sent)
                if not sent:
                    dev.shutdown(socket.SHUT_WR)
                wait_closed(dev, 5.0)
            ping(bystander, b"still here")
        event = relay.wait_error("proxy_header")
        assert event.reason == reason
        assert len(echo.connections) == 1  # the refused one never reached it
        assert relay.wait_idle()["errors_proxy_header"] == 1


def test_an_exit_names_the_balancers_client_in_its_events(make_relay, ids):
    # A stranger's TLS behind a balancer: the exit refuses its key, and says who it was.
    import ssl

    server = _core.TLSServerContext(
        cert=str(ids.exit.cert), key=str(ids.exit.key), allow_pins=[ids.entry.pin]
    )

    def setup(loop: Any, fd: int) -> None:
        loop.add_listener(fd, loop.add_exit(server, "fixed", HOST, 9, accept_proxy=True))

    relay = make_relay(0, setup=setup)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(ids.stranger.cert, ids.stranger.key)
    with connect(relay.port) as raw:
        raw.sendall(_core.build_proxy_header(2, "2001:db8::7", 5555, "2001:db8::1", 443))
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"x")
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
    event = relay.wait_error("tls_pin_mismatch")
    assert event.client == "[2001:db8::7]:5555"


# -- the parser alone ----------------------------------------------------------------------

FUZZ = settings(max_examples=1000, deadline=None)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
ports = st.integers(1, 65535)


def check_shape(data: bytes) -> tuple[int, int, str, str, str]:
    result = _core.parse_proxy_header(data)
    status, consumed, _, _, reason = result
    assert status in (-1, 0, 1), result
    assert 0 <= consumed <= len(data)
    assert (consumed > 0) == (status == 1)
    assert bool(reason) == (status == -1)
    return result


@FUZZ
@given(st.binary(max_size=300))
@example(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff")
@example(b"PROXY UNKNOWN whatever\r\n")
def test_the_parser_takes_any_bytes(data):
    check_shape(data)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def plain(ip: Address) -> Address:
    """An IPv4-mapped IPv6 address is the IPv4 one (the connector sends it so)."""
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def as_sent(ip: Address, mixed: bool) -> Address:
    """What the header says of `ip`: IPv4 as IPv4-mapped IPv6 when the other is IPv6."""
    ip = plain(ip)
    return ipaddress.IPv6Address(f"::ffff:{ip}") if mixed and ip.version == 4 else ip


def split(text: str) -> tuple[Address, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


@FUZZ
@given(st.sampled_from([1, 2]), addresses, ports, addresses, ports, st.binary(max_size=40))
def test_what_a_connector_sends_parses_back_exactly(version, src, sport, dst, dport, tail):
    header = _core.build_proxy_header(version, str(src), sport, str(dst), dport)
    status, consumed, got_src, got_dst, _ = _core.parse_proxy_header(header + tail)
    assert (status, consumed) == (1, len(header))
    mixed = plain(src).version != plain(dst).version
    assert split(got_src) == (as_sent(src, mixed), sport)
    assert split(got_dst) == (as_sent(dst, mixed), dport)
    for k in range(len(header)):
        assert _core.parse_proxy_header(header[:k])[0] == 0, header[:k]


@FUZZ
@given(st.sampled_from([1, 2]), addresses, ports, addresses, ports, st.data())
def test_broken_headers_are_judged_never_misread(version, src, sport, dst, dport, data):
    header = bytearray(_core.build_proxy_header(version, str(src), sport, str(dst), dport))
    for _ in range(data.draw(st.integers(1, 3))):
        k = data.draw(st.integers(0, len(header) - 1))
        header[k] = data.draw(st.integers(0, 255))
    check_shape(bytes(header))
