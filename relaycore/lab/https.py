"""A recording HTTPS server: the far end of the relay in the demo and the tests, standing in
for a customer's server. It tells what reached it over TLS.

For each TLS connection it notes a `TlsLeg`: the client's address, the SNI it sent, the
version and cipher, whether the session was resumed, and the CN of the client certificate
(when `client_ca` is given, a certificate is asked for, not required). For each request, a
`Received`: the request line, the headers and the body. A failed handshake, or a
connection that broke mid-request, is a `Failure`. `answer(received)` makes each reply:
`json_echo` (the default: a JSON body saying what the server got) or `pages({...})`.
`on_request` and `on_failure`, when set, are called on the connection's thread.

Each connection has its own thread, which does the handshake (a slow one never holds up
accept()), serves requests (HTTP/1.1, kept alive unless the answer closes it) and answers
the client's close_notify with its own before closing. stop() (or the end of the `with`
block) stops accepting, shuts down every open connection, joins every thread and closes
every fd.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from relaycore.lab.base import HOST, Running

HANDSHAKE_TIMEOUT = 10.0
# A kept-alive connection with no request for this long is closed.
IDLE_TIMEOUT = 300.0
# For the client's close_notify, after ours.
CLOSE_NOTIFY_TIMEOUT = 2.0
JOIN_TIMEOUT = 5.0
POLL_INTERVAL = 0.1
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class TlsLeg:
    """One TLS connection the server accepted (through the relay: one upstream leg)."""

    number: int  # 1, 2, ... in the order the handshakes completed
    peer: str  # the client's address
    port: int  # ... and port
    sni: str | None
    version: str
    cipher: str
    resumed: bool
    client_cn: str | None  # the CN of a verified client certificate, None without one


@dataclass(frozen=True)
class Received:
    """One HTTP request as the server read it, on the TLS connection `leg`."""

    leg: TlsLeg
    request_line: str
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def host(self) -> str | None:
        """The Host header."""
        return next((v for k, v in self.headers if k.lower() == "host"), None)

    @property
    def sni(self) -> str | None:
        return self.leg.sni

    @property
    def tls_version(self) -> str:
        return self.leg.version

    @property
    def peer(self) -> str:
        return self.leg.peer


@dataclass(frozen=True)
class Failure:
    """A connection that went wrong: its handshake failed, or it broke mid-request."""

    peer: str
    port: int
    stage: str  # "handshake" or "request"
    error: str

    def __str__(self) -> str:
        if self.stage == "handshake":
            return f"TLS handshake with {self.peer}:{self.port} failed: {self.error}"
        return f"connection from {self.peer}:{self.port}: {self.error}"


@dataclass(frozen=True)
class Reply:
    """What to answer: `close` ends the connection after it (Connection: close)."""

    status: int
    body: bytes
    content_type: str = "text/plain"
    close: bool = False


Answer = Callable[[Received], Reply]


def json_echo(got: Received) -> Reply:
    """200 with a JSON body that says what the server got and over what TLS (what the
    demo's devices check)."""
    reply = {
        "ok": True,
        "server": "relaycore demo HTTPS server",
        "got": {"method": got.method, "path": got.path, "body_bytes": len(got.body)},
        "tls": {
            "sni": got.leg.sni,
            "version": got.leg.version,
            "cipher": got.leg.cipher,
            "resumed": got.leg.resumed,
        },
    }
    return Reply(200, json.dumps(reply).encode() + b"\n", "application/json")


def pages(content: Mapping[str, bytes]) -> Answer:
    """An answer that serves these pages (200, the bytes given) and 404 for any other
    path, closing the connection after each answer."""
    table = dict(content)

    def answer(got: Received) -> Reply:
        page = table.get(got.path)
        if page is None:
            return Reply(404, b"not found\n", close=True)
        return Reply(200, page, close=True)

    return answer


class HttpsUpstream(Running):
    """HTTPS on `host`:`port` (127.0.0.1, a free port by default) presenting `cert` (a
    chain, leaf first) with `key`; see the module's docstring."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        answer: Answer = json_echo,
        client_ca: Path | None = None,
        host: str = HOST,
        port: int = 0,
    ) -> None:
        self.answer = answer
        self.on_request: Callable[[Received], None] | None = None
        self.on_failure: Callable[[Failure], None] | None = None
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.load_verify_locations(client_ca)
            self.context.verify_mode = ssl.CERT_OPTIONAL
        self.context.sni_callback = _note_sni
        self._lock = threading.Lock()
        self._legs: list[TlsLeg] = []
        self._requests: list[Received] = []
        self._failures: list[Failure] = []
        # By the id of the thread that serves it: the connection's socket, and its leg.
        self._open: dict[int, socket.socket] = {}
        self._leg_of: dict[int, TlsLeg] = {}
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._started = False
        self._server = _Server((host, port), self)
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self._accept = threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL,), name="https-accept"
        )

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def legs(self) -> list[TlsLeg]:
        with self._lock:
            return list(self._legs)

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    @property
    def failures(self) -> list[Failure]:
        with self._lock:
            return list(self._failures)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        self._started = True
        self._accept.start()
        return self

    def stop(self) -> None:
        """Stop accepting, shut down every open connection (its thread then ends), join
        every thread, close every fd. Idempotent. RuntimeError if a thread outlives the
        deadline."""
        if self._started:
            self._started = False
            self._server.shutdown()
            self._accept.join(JOIN_TIMEOUT)
        with self._lock:
            self._closing = True
            for sock in self._open.values():
                _shut_down(sock)
            threads = list(self._threads)
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._server.server_close()
        alive = [t.name for t in [*threads, self._accept] if t.is_alive()]
        if alive:
            raise RuntimeError(f"HttpsUpstream: threads did not stop: {alive}")

    # -- one connection, on its own thread ---------------------------------------------------

    def _spawn(self, raw: socket.socket, address: tuple[str, int]) -> None:
        thread = threading.Thread(
            target=self._serve, args=(raw, address), name=f"https-{address[1]}", daemon=True
        )
        with self._lock:
            if self._closing:
                raw.close()
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            self._open[id(thread)] = raw
        thread.start()

    def _serve(self, raw: socket.socket, address: tuple[str, int]) -> None:
        me = id(threading.current_thread())
        peer, port = address[0], address[1]
        # The handshake waits on the TLS socket, which stop() can then shut down.
        raw.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            self._forget(me, raw)
            self._failed(Failure(peer, port, "handshake", str(exc)))
            return
        try:
            with self._lock:
                self._open[me] = tls
                if self._closing:
                    _shut_down(tls)
            try:
                tls.do_handshake()
            except OSError as exc:
                self._failed(Failure(peer, port, "handshake", str(exc)))
                return
            with self._lock:
                self._leg_of[me] = self._note_leg(tls, peer, port)
            try:
                _Handler(tls, address, self._server)
            except OSError as exc:
                self._failed(Failure(peer, port, "request", str(exc)))
                return
            # The client sent close_notify (the relay does when its device closes), or the
            # answer closed the connection: ours in reply, so no one sees a truncated stream.
            with contextlib.suppress(OSError, ValueError):
                tls.settimeout(CLOSE_NOTIFY_TIMEOUT)
                tls.unwrap()
        finally:
            self._forget(me, tls)

    def _forget(self, me: int, sock: socket.socket) -> None:
        # Closed under the lock, so that stop() never shuts down a reused fd number.
        with self._lock:
            self._open.pop(me, None)
            self._leg_of.pop(me, None)
            sock.close()

    def _note_leg(self, tls: ssl.SSLSocket, peer: str, port: int) -> TlsLeg:
        # Under _lock.
        cipher = tls.cipher()
        # The subject is a tuple of RDNs, each a tuple of (attribute, value) pairs.
        subject: Any = (tls.getpeercert() or {}).get("subject", ())
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        leg = TlsLeg(
            number=len(self._legs) + 1,
            peer=peer,
            port=port,
            sni=getattr(tls, "lab_sni", None),
            version=tls.version() or "?",
            cipher=cipher[0] if cipher else "?",
            resumed=bool(tls.session_reused),
            client_cn=names[0] if names else None,
        )
        self._legs.append(leg)
        return leg

    def _current_leg(self) -> TlsLeg:
        with self._lock:
            return self._leg_of[id(threading.current_thread())]

    def _received(self, got: Received) -> None:
        with self._lock:
            self._requests.append(got)
        callback = self.on_request
        if callback is not None:
            callback(got)

    def _failed(self, failure: Failure) -> None:
        with self._lock:
            if self._closing:
                return  # stop() broke it
            self._failures.append(failure)
        callback = self.on_failure
        if callback is not None:
            callback(failure)


def _note_sni(sock: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
    # The servername callback, on every ClientHello (server_name None without SNI).
    sock.lab_sni = server_name


def _shut_down(sock: socket.socket) -> None:
    """Wake the thread blocked on `sock`: its read sees EOF. The plain socket's shutdown,
    even for an SSLSocket (whose own would also drop its TLS state under the thread)."""
    if sock.fileno() != -1:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Server(http.server.HTTPServer):
    def __init__(self, address: tuple[str, int], upstream: HttpsUpstream) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.upstream = upstream
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's would look up the host's FQDN, which can stall on a broken resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.upstream._spawn(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "relaycore-demo-upstream/1"
    sys_version = ""
    # Headers and body leave in one write: one TLS record, no Nagle wait between two.
    wbufsize = -1
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server: _Server

    def do_GET(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "bad Content-Length")
            return
        if not 0 <= length <= MAX_BODY:
            self.send_error(413, f"this server takes bodies up to {MAX_BODY} bytes")
            return
        upstream = self.server.upstream
        got = Received(
            leg=upstream._current_leg(),
            request_line=self.requestline,
            method=self.command,
            path=self.path,
            headers=list(self.headers.items()),
            body=self.rfile.read(length) if length else b"",
        )
        upstream._received(got)
        reply = upstream.answer(got)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # what a caller wants to show, it shows from on_request
