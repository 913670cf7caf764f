"""The exit's SOCKS5 and HTTP CONNECT parsers under hypothesis: first as pure functions
(thousands of cases: arbitrary bytes, valid requests, mutations of valid requests), then
live, where a running exit must answer each request exactly as the parser decided, stay
up, and leave an established tunnel connection untouched.

The live fuzz never lets the exit resolve a name (no DNS query leaves the machine) and
allows one destination only (127.0.0.1 and the echo server's port): whatever a request
names, the exit never dials beyond loopback.
"""

from __future__ import annotations

import ipaddress
import ssl
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from support.clients import connect
from support.relay import LoopThread
from support.servers import EchoServer

from relaycore import _core

SOCKS_CODES = {1, 2, 3, 4, 5, 6, 7, 8, 255}
HTTP_CODES = {400, 405, 431}

labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
ports = st.integers(1, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6)


def socks5_request(host: str, port: int, *, methods: bytes = b"\x00") -> bytes:
    try:
        ip = ipaddress.ip_address(host)
        addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    except ValueError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    return (
        b"\x05" + bytes([len(methods)]) + methods + b"\x05\x01\x00" + addr + struct.pack(">H", port)
    )


def connect_request(host: str, port: int, headers: str = "") -> bytes:
    authority = f"[{host}]" if ":" in host else host
    return f"CONNECT {authority}:{port} HTTP/1.1\r\n{headers}\r\n".encode()


def same_host(got: str, want: str) -> bool:
    # inet_ntop and Python spell some IPv6 addresses differently (::ffff:0.0.0.0).
    if _ip_host(want):
        return _ip_host(got) and ipaddress.ip_address(got) == ipaddress.ip_address(want)
    return got == want


def check_shape(result: tuple[int, int, str, int], data: bytes, codes: set[int]) -> None:
    status, consumed, host, port = result
    assert status in (0, 1) or -status in codes, result
    if status == 1:
        assert 0 < consumed <= len(data)
        assert host
        assert host.isascii()
        assert 0 < port < 65536
    else:
        assert consumed == 0


# -- the parsers alone -------------------------------------------------------------------

FUZZ = settings(max_examples=3000, deadline=None)


@FUZZ
@given(st.binary(max_size=600))
def test_socks5_parser_takes_any_bytes(data: bytes) -> None:
    check_shape(_core.parse_socks5(data), data, SOCKS_CODES)


@FUZZ
@given(st.binary(max_size=600))
def test_connect_parser_takes_any_bytes(data: bytes) -> None:
    check_shape(_core.parse_http_connect(data), data, HTTP_CODES)


@FUZZ
@given(
    st.one_of(ipv4, ipv6.map(str), names),
    ports,
    st.binary(max_size=50),
    st.binary(min_size=1, max_size=5),
)
def test_socks5_requests_parse_exactly_and_by_prefix(
    host: str, port: int, tail: bytes, methods: bytes
) -> None:
    methods = methods + b"\x00"
    data = socks5_request(host, port, methods=methods)
    status, consumed, got_host, got_port = _core.parse_socks5(data + tail)
    assert (status, consumed, got_port) == (1, len(data), port)
    assert same_host(got_host, host)
    # Every strict prefix is "read more": nothing is decided before its byte arrives.
    for k in range(len(data)):
        assert _core.parse_socks5(data[:k])[0] == 0


@FUZZ
@given(
    st.one_of(ipv4, ipv6.map(str), names),
    ports,
    st.binary(max_size=50),
    st.lists(st.tuples(labels, st.text("abc XYZ:;/", max_size=30)), max_size=5),
)
def test_connect_requests_parse_exactly_and_by_prefix(
    host: str, port: int, tail: bytes, headers: list[tuple[str, str]]
) -> None:
    data = connect_request(host, port, "".join(f"{k}: {v}\r\n" for k, v in headers))
    status, consumed, got_host, got_port = _core.parse_http_connect(data + tail)
    assert (status, consumed, got_port) == (1, len(data), port)
    assert same_host(got_host, host)
    for k in range(len(data)):
        assert _core.parse_http_connect(data[:k])[0] == 0


@settings(max_examples=1000, deadline=None)
@given(st.text("0123456789abcdefABCDEF:.", max_size=3000))
@example("0.0.0.0")
@example("::ffff:127.0.0.1")
@example("1" * 46)
def test_connect_parser_bounds_a_bracketed_host(inside: str) -> None:
    # An IPv6 literal is at most 45 characters: a longer "[...]" never reaches the
    # 256-byte host buffer, however long the request line. Brackets hold IPv6 only
    # (RFC 3986 IP-literal), so "[0.0.0.0]" is refused like any other non-IPv6 text.
    data = f"CONNECT [{inside}]:443 HTTP/1.1\r\n\r\n".encode()
    result = _core.parse_http_connect(data)
    check_shape(result, data, HTTP_CODES)
    if result[0] == 1:
        assert ipaddress.IPv6Address(result[2]) == ipaddress.IPv6Address(inside)
    elif len(inside) <= 45 and _ipv6_host(inside) and len(data) < 4096:
        raise AssertionError(f"an IPv6 literal was refused: {result}")


def mutate(data: bytes, draw: Callable[[Any], Any]) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        k = draw(st.integers(0, len(out) - 1))
        action = draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            out[k] = draw(st.integers(0, 255))
        elif action == "drop":
            del out[k]
        else:
            out.insert(k, draw(st.integers(0, 255)))
    return bytes(out)


@st.composite
def mutated_requests(draw: Callable[[Any], Any], build: Callable[[str, int], bytes]) -> bytes:
    return mutate(build(draw(st.one_of(ipv4, names)), draw(ports)), draw)


@FUZZ
@given(mutated_requests(socks5_request))
def test_socks5_parser_takes_broken_requests(data: bytes) -> None:
    check_shape(_core.parse_socks5(data), data, SOCKS_CODES)


@FUZZ
@given(mutated_requests(connect_request))
def test_connect_parser_takes_broken_requests(data: bytes) -> None:
    check_shape(_core.parse_http_connect(data), data, HTTP_CODES)


# -- a running exit ----------------------------------------------------------------------


def _ip_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ipv6_host(host: str) -> bool:
    return ":" in host and _ip_host(host)


class LiveExit:
    """An exit (LoopThread) allowing only 127.0.0.1:<echo port>, an entry identity to talk
    to it, and one tunnel connection kept open the whole time as the bystander."""

    def __init__(self, target: str, tmp: Path, echo: EchoServer) -> None:
        exit_pin = _core.make_identity(
            str(tmp / f"exit-{target}.key"), str(tmp / f"exit-{target}.crt"), "exit"
        )
        del exit_pin
        entry_key, entry_crt = tmp / f"entry-{target}.key", tmp / f"entry-{target}.crt"
        entry_pin = _core.make_identity(str(entry_key), str(entry_crt), "entry")
        ctx = _core.TLSServerContext(
            cert=str(tmp / f"exit-{target}.crt"),
            key=str(tmp / f"exit-{target}.key"),
            allow_pins=[entry_pin],
        )
        self.echo = echo
        self.target = target

        def setup(loop: Any, fd: int) -> None:
            route = loop.add_exit(ctx, target)
            loop.allow_destination(route, "127.0.0.1/32", echo.port)
            loop.add_listener(fd, route)

        self.relay = LoopThread(0, setup=setup, handshake_timeout_ms=2000).start()
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.check_hostname = False
        self.client.verify_mode = ssl.CERT_NONE
        self.client.load_cert_chain(str(entry_crt), str(entry_key))
        self.bystander = self.open()
        request = (
            socks5_request("127.0.0.1", echo.port)
            if target == "socks5"
            else connect_request("127.0.0.1", echo.port)
        )
        self.bystander.sendall(request)
        self.bystander.recv(2 if target == "socks5" else 4096)
        if target == "socks5":
            self.bystander.recv(10)

    def open(self) -> ssl.SSLSocket:
        raw = connect(self.relay.port, timeout=5)
        return self.client.wrap_socket(raw)

    def ping_bystander(self, n: int) -> None:
        msg = struct.pack(">Q", n)
        self.bystander.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = self.bystander.recv(len(msg) - len(got))
            assert chunk, "the bystander connection was closed"
            got += chunk
        assert got == msg

    def close(self) -> None:
        self.bystander.close()
        self.relay.wait_idle()
        self.relay.stop()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture(params=["socks5", "http-connect"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, echo: EchoServer
) -> Iterator[LiveExit]:
    node = LiveExit(request.param, tmp_path_factory.mktemp("live"), echo)
    yield node
    node.close()


def read_until_closed(sock: ssl.SSLSocket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except (TimeoutError, ssl.SSLError, OSError):
        return data


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=300),
        mutated_requests(socks5_request),
        mutated_requests(connect_request),
    )
)
def test_a_running_exit_answers_as_its_parser_decides(live: LiveExit, data: bytes) -> None:
    socks = live.target == "socks5"
    status, _, host, port = (_core.parse_socks5 if socks else _core.parse_http_connect)(data)
    # A name would be resolved: with DNS, that would leave the machine.
    assume(not (status == 1 and not _ip_host(host)))
    with live.open() as tls:
        tls.sendall(data)
        reply = read_until_closed(tls, 5.0 if status < 0 else 0.05)
    if socks:
        greeted = (
            len(data) >= 2
            and data[0] == 5
            and len(data) >= 2 + data[1]
            and 0 in data[2 : 2 + data[1]]
        )
        if status == -255:
            assert reply == b"\x05\xff"
        elif status < 0:
            assert reply == b"\x05\x00\x05" + bytes([-status]) + b"\x00\x01" + bytes(6)
        elif status == 0:
            assert reply == (b"\x05\x00" if greeted else b"")
        else:
            allowed = host == "127.0.0.1" and port == live.echo.port
            assert reply[:4] == b"\x05\x00\x05" + (b"\x00" if allowed else b"\x02")
    else:
        if status < 0:
            assert reply.startswith(f"HTTP/1.1 {-status} ".encode()), reply
        elif status == 0:
            assert reply == b""
        else:
            allowed = host == "127.0.0.1" and port == live.echo.port
            assert reply.startswith(b"HTTP/1.1 200 " if allowed else b"HTTP/1.1 403 "), reply
    live.ping_bystander(len(data))
