"""http_host = "rewrite" in the compiled loop (modes/http.pxi, modes/http_pump.pxi): a TLS
echo server hands back exactly what reached it, so the device reads the stream as the
server got it. Heads get the new Host (pipelined, kept alive, in pieces), bodies and
everything after Upgrade pass untouched, a large body streams through, and a request that
is refused gets 400 without a byte of it reaching the server, while other connections go
on. The parser alone, under hypothesis and against h11, is test_http_fuzz.py.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from support.clients import connect, recv_exact, wait_closed
from support.relay import SERVER_NAME, LoopThread, TLSFiles
from support.servers import HOST, EchoServer, SinkServer, tls_server_context

from relaycore import _core

HOST_VALUE = "api.example.com:8443"


def start(make_relay: Callable[..., LoopThread], files: TLSFiles, port: int) -> LoopThread:
    tls = _core.TLSClientContext(server_name=SERVER_NAME, ca=str(files.pki.ca_cert), ktls="off")

    def setup(loop: Any, fd: int) -> None:
        loop.add_listener(fd, loop.add_upstream(HOST, port, tls, http_host=HOST_VALUE))

    return make_relay(0, setup=setup, splice="off")


def ask(sock: Any, request: bytes) -> None:
    """Send a request through the relay to the echo server: it comes back rewritten."""
    sock.sendall(request)
    want = _core.http_rewrite(request, HOST_VALUE)[0]
    assert recv_exact(sock, len(want)) == want


def tls_echo(files: TLSFiles) -> EchoServer:
    return EchoServer(tls=tls_server_context(files.server.chain, files.server.key))


def test_every_request_of_a_kept_alive_connection_gets_the_host(make_relay, tls_files):
    stream = (
        b"GET /a HTTP/1.1\r\nHost: 1.2.3.4\r\nAccept: */*\r\n\r\n"
        b"POST /b HTTP/1.1\r\nContent-Length: 11\r\nhOsT: 1.2.3.4:80\r\n\r\nhello world"
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nHost:\r\n0\r\nTrailer: x\r\n\r\n"
        b"GET /d HTTP/1.0\r\n\r\n"
    )
    want, consumed, reason = _core.http_rewrite(stream, HOST_VALUE)
    assert (consumed, reason) == (len(stream), "")
    assert want == (
        b"GET /a HTTP/1.1\r\nHost: api.example.com:8443\r\nAccept: */*\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: api.example.com:8443\r\nContent-Length: 11\r\n\r\n"
        b"hello world"
        b"PUT /c HTTP/1.1\r\nHost: api.example.com:8443\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nHost:\r\n0\r\nTrailer: x\r\n\r\n"
        b"GET /d HTTP/1.0\r\nHost: api.example.com:8443\r\n\r\n"
    )
    with tls_echo(tls_files) as echo:
        relay = start(make_relay, tls_files, echo.port)
        with connect(relay.port) as dev:
            # In pieces that cut heads, bodies and chunk lines anywhere, pipelined.
            for k in range(0, len(stream), 7):
                dev.sendall(stream[k : k + 7])
            assert recv_exact(dev, len(want)) == want
        counters = relay.wait_idle()
    assert counters["http_rewritten"] == 4
    assert counters["bytes_in"] == len(want)


def test_expect_100_continue_sends_the_head_before_the_body(make_relay, tls_files):
    # The device waits for the server's 100 Continue before its body: the head must reach
    # the server on its own, not wait for the body behind it.
    head = b"PUT /fw HTTP/1.1\r\nHost: 1.2.3.4\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    with tls_echo(tls_files) as echo:
        relay = start(make_relay, tls_files, echo.port)
        with connect(relay.port) as dev:
            dev.sendall(head)
            rewritten = _core.http_rewrite(head, HOST_VALUE)[0]
            assert recv_exact(dev, len(rewritten)) == rewritten
            dev.sendall(b"hello")
            assert recv_exact(dev, 5) == b"hello"
        relay.wait_idle()


def test_after_an_upgrade_the_rest_passes_as_it_comes(make_relay, tls_files):
    head = b"GET /ws HTTP/1.1\r\nHost: 1.2.3.4\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    later = b"GET /not-a-head HTTP/1.1\r\nHost: 1.2.3.4\r\n\r\n\x81\x05hello"
    with tls_echo(tls_files) as echo:
        relay = start(make_relay, tls_files, echo.port)
        with connect(relay.port) as dev:
            dev.sendall(head)
            got = recv_exact(dev, len(head) + len(HOST_VALUE) - len("1.2.3.4"))
            assert got.startswith(b"GET /ws HTTP/1.1\r\nHost: api.example.com:8443\r\n")
            dev.sendall(later)
            assert recv_exact(dev, len(later)) == later
        assert relay.wait_idle()["http_rewritten"] == 1


def test_a_large_body_streams_through_untouched(make_relay, tls_files):
    body = bytes(range(256)) * (16 << 10)  # 4 MiB
    head = f"POST /up HTTP/1.1\r\nHost: 1.2.3.4\r\nContent-Length: {len(body)}\r\n\r\n"
    forwarded = head.replace("1.2.3.4", HOST_VALUE).encode() + body
    sink = SinkServer(tls=tls_server_context(tls_files.server.chain, tls_files.server.key))
    with sink:
        relay = start(make_relay, tls_files, sink.port)
        with connect(relay.port) as dev:
            dev.sendall(head.encode())
            dev.sendall(body)
            dev.shutdown(1)
            assert recv_exact(dev, 32, timeout=30) == hashlib.sha256(forwarded).digest()
        assert relay.wait_idle()["bytes_in"] == len(forwarded)


def test_a_refused_request_gets_400_and_never_reaches_the_server(make_relay, tls_files):
    with tls_echo(tls_files) as echo:
        relay = start(make_relay, tls_files, echo.port)
        with connect(relay.port) as bystander:
            ask(bystander, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with connect(relay.port) as dev:
                dev.sendall(b"GET / HTTP/1.1\r\nHost: 1.2.3.4\r\n Host: folded\r\n\r\n")
                answer = b""
                dev.settimeout(5.0)
                while chunk := dev.recv(4096):
                    answer += chunk
            ask(bystander, b"GET /again HTTP/1.1\r\n\r\n")
        event = relay.wait_error("http_request")
        counters = relay.wait_idle()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert answer.endswith(b"\r\n\r\nrelaycore: obsolete line folding (a field line starting"
                           b" with space or tab)\n")  # fmt: skip
    assert "obsolete line folding" in event.reason
    assert "(answered with 400 Bad Request)" in event.reason
    # The refused connection's TLS leg carried no byte of it.
    assert sorted(c.received for c in echo.connections)[0] == 0
    assert counters["errors_http_request"] == 1


def test_what_is_not_http_is_refused_at_once(make_relay, tls_files):
    with tls_echo(tls_files) as echo:
        relay = start(make_relay, tls_files, echo.port)
        for first in (b"\x10\x1a\x00\x04MQTT\x04\x02", b"PRI * HTTP/2.0\r\n", b"X" * 17000):
            with connect(relay.port) as dev:
                dev.sendall(first)
                dev.settimeout(5.0)
                assert dev.recv(4096).startswith(b"HTTP/1.1 400 Bad Request\r\n")
                wait_closed(dev, 5.0)
        reasons = [e.reason for e in relay.pop_errors()]
        relay.wait_idle()
    assert reasons == [
        "not an HTTP/1.0 or HTTP/1.1 request line (answered with 400 Bad Request)",
        "not an HTTP/1.0 or HTTP/1.1 request line (answered with 400 Bad Request)",
        "not an HTTP/1.0 or HTTP/1.1 request line (answered with 400 Bad Request)",
    ]


def test_a_server_that_stops_reading_stops_the_device(make_relay, tls_files):
    # Backpressure: while the server reads nothing, the device's upload stalls after what
    # the socket buffers hold (the relay keeps at most one buffer of it); then every byte
    # arrives, the head rewritten, the body intact.
    body = bytes(range(256)) * (128 << 10)  # 32 MiB
    head = f"POST /up HTTP/1.1\r\nHost: 1.2.3.4\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    forwarded = _core.http_rewrite(head, HOST_VALUE)[0] + body
    gate = threading.Event()
    tls = tls_server_context(tls_files.server.chain, tls_files.server.key)
    sent = 0
    with SinkServer(tls=tls, gate=gate, bufsize=64 << 10) as sink:
        relay = start(make_relay, tls_files, sink.port)
        with connect(relay.port, bufsize=64 << 10) as dev:

            def upload() -> None:
                nonlocal sent
                dev.sendall(head)
                for k in range(0, len(body), 64 << 10):
                    dev.sendall(body[k : k + (64 << 10)])
                    sent += 64 << 10
                dev.shutdown(socket.SHUT_WR)

            uploader = threading.Thread(target=upload, name="device-upload")
            uploader.start()
            threading.Event().wait(2.0)  # the server deliberately reads nothing meanwhile
            stalled_at = sent
            gate.set()
            uploader.join(60)
            assert recv_exact(dev, 32, timeout=30) == hashlib.sha256(forwarded).digest()
        relay.wait_idle()
    assert stalled_at < len(body) // 4, f"the device sent {stalled_at} bytes into a stalled server"
