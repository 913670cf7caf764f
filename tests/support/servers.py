"""Threaded loopback upstreams for relay tests.

Each server is a context manager with `.port` and `.connections` (one ConnRecord per accepted
connection, in accept order). A handler never raises: socket errors are recorded by errno
name in the record, so a test asserts on what the peer saw (EOF, ECONNRESET, bytes, digest).
`stop()` shuts down every open connection, joins every thread and closes every fd.

Every server can speak TLS instead (`tls=` a server-side ssl.SSLContext): each accepted
socket is wrapped in a TLSConn (tlsconn.py), which behaves like the socket for the
handlers (recv_into, sendall, shutdown), so the same handler serves both. Over TLS the
record also tells what the handshake was (version, resumption, the SNI seen, the client's
certificate), and EOF means the peer's close_notify: a TCP FIN without one is an error
(TLS_TRUNCATED), and the FIN that must follow a close_notify is checked too (`tcp_eof`).
The server's own end of the stream is close_notify then FIN, or a bare FIN with
`close_notify=False` (truncation).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import random
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from relaycore.lab.base import HOST

from .data import RandomStream
from .tlsconn import TLSConn, note_sni

RECV_SIZE = 256 * 1024
IO_TIMEOUT = 60.0
JOIN_TIMEOUT = 5.0
# How long a TLS upstream waits for the TCP FIN that must follow the peer's close_notify.
TCP_EOF_TIMEOUT = 10.0

# What a TLS upstream records as `error` when the peer ended TCP without close_notify.
TLS_TRUNCATED = "UNEXPECTED_EOF_WHILE_READING"


def errno_name(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLEOFError):
        return TLS_TRUNCATED
    if isinstance(exc, ssl.SSLError):
        # An ssl error's errno is an SSL_ERROR_* code, not an errno: name the reason
        # (e.g. TLSV1_ALERT_UNKNOWN_CA), or the class when OpenSSL gave none.
        return exc.reason or type(exc).__name__
    if exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def set_linger0(sock: socket.socket) -> None:
    """Make close() send RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def set_bufsize(sock: socket.socket, size: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


@dataclass
class ConnRecord:
    """What one upstream connection saw. Written by the handler thread; read by the test
    after `done` is set (or as a progress indication before)."""

    peer: tuple[str, int]
    received: int = 0
    sent: int = 0
    eof: bool = False
    error: str | None = None
    send_error: str | None = None
    reset_sent: bool = False
    # TLS upstreams only (None / False over plain TCP).
    tls_version: str | None = None
    cipher: str | None = None
    session_reused: bool | None = None
    sni: str | None = None  # the server_name the client sent; None: no SNI
    sni_checked: bool = False  # the SNI callback ran (so sni None means "none sent")
    peer_cert: dict[str, Any] | None = None  # the client's certificate, when asked for
    tls_error: str | None = None  # the handshake failure, in OpenSSL's words
    close_notify: bool = False  # the peer's close_notify arrived
    tcp_eof: bool = False  # ... and then its TCP FIN, with nothing in between
    done: threading.Event = field(default_factory=threading.Event)
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)
    _sent_sha: hashlib._Hash = field(default_factory=hashlib.sha256)

    def received_digest(self) -> str:
        return self._sha.hexdigest()

    def sent_digest(self) -> str:
        return self._sent_sha.hexdigest()

    def wait_sent(self, nbytes: int, timeout: float) -> None:
        """Until the handler has sent at least nbytes (polled, bounded by the deadline)."""
        deadline = time.monotonic() + timeout
        pacing = threading.Event()
        while self.sent < nbytes:
            if self.done.is_set() or time.monotonic() > deadline:
                raise TimeoutError(f"upstream sent {self.sent} of {nbytes} bytes")
            pacing.wait(0.01)

    def wait(self, timeout: float) -> ConnRecord:
        if not self.done.wait(timeout):
            raise TimeoutError(f"upstream connection from {self.peer} still open: {self!r}")
        return self


def tls_server_context(
    chain: Path,
    key: Path,
    *,
    client_ca: Path | None = None,
    minimum_version: ssl.TLSVersion | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A server-side context presenting `chain`; with `client_ca`, it requires a client
    certificate issued by that CA (CERT_REQUIRED)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    # A TCP FIN without close_notify must stay visible as an error (Python 3.11 leaves
    # this clear already; a later default must not hide truncation from the tests).
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    if minimum_version is not None:
        ctx.minimum_version = minimum_version
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


class _Server:
    """Accept loop on 127.0.0.1:0 plus one handler thread per connection."""

    def __init__(
        self,
        *,
        bufsize: int | None = None,
        backlog: int = 128,
        tls: ssl.SSLContext | None = None,
        close_notify: bool = True,
        fin_after_close_notify: bool = True,
        coalesce: int = 0,
        host: str = HOST,
        port: int = 0,
    ) -> None:
        """`host`: the address to listen on (127.0.0.1, or ::1 for IPv6), `port` (0: a
        free one).
        `tls`: serve TLS with this server-side context (its sni_callback is taken over
        to record the SNI). `close_notify=False`: end TLS streams with a bare TCP FIN.
        `fin_after_close_notify=False`: a TLS handler's shutdown(SHUT_WR) sends close_notify
        alone, the FIN coming only when the connection closes. `coalesce`: see TLSConn."""
        self.tls = tls
        self.close_notify = close_notify
        self.fin_after_close_notify = fin_after_close_notify
        self.coalesce = coalesce
        if tls is not None:
            tls.sni_callback = note_sni
        self.connections: list[ConnRecord] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[tuple[socket.socket, ConnRecord]] = []
        self._bufsize = bufsize
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if bufsize is not None:
                # Accepted sockets inherit the listener's sizes; the window scale is fixed
                # at the SYN, so the receive buffer has to be small before listen().
                set_bufsize(self._lsock, bufsize)
            self._lsock.bind((host, port))
            self._lsock.listen(backlog)
            self._lsock.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._lsock.close()
            raise
        self.port: int = self._lsock.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{type(self).__name__}-accept", daemon=True
        )
        self._started = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._started = True
        self._accept_thread.start()

    # -- for tests ---------------------------------------------------------------------------

    def wait_connections(self, n: int, timeout: float = 10.0) -> list[ConnRecord]:
        """Block until at least n connections were accepted; return the first n."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.connections) >= n, timeout):
                raise TimeoutError(f"{type(self).__name__}: {len(self.connections)} of {n} seen")
            return self.connections[:n]

    def stop(self) -> None:
        self._stopping.set()
        if self._started:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            self._accept_thread.join(JOIN_TIMEOUT)
        with self._cond:
            for sock, _ in self._socks:
                if sock.fileno() != -1:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        deadline = time.monotonic() + JOIN_TIMEOUT
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        alive += [self._accept_thread.name] if self._accept_thread.is_alive() else []
        with self._cond:
            for sock, _ in self._socks:
                sock.close()
        self._lsock.close()
        self._wake_r.close()
        self._wake_w.close()
        if alive:
            raise RuntimeError(f"{type(self).__name__}: threads did not stop: {alive}")

    # -- internals ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._lsock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=1.0):
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        conn, addr = self._lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        if self._stopping.is_set():
                            return
                        raise
                    self._spawn(conn, addr)

    def _spawn(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        conn.setblocking(True)
        conn.settimeout(IO_TIMEOUT)
        record = ConnRecord(peer=addr)
        thread = threading.Thread(
            target=self._serve_guarded,
            args=(conn, record),
            name=f"{type(self).__name__}-{addr[1]}",
            daemon=True,
        )
        with self._cond:
            self.connections.append(record)
            self._socks.append((conn, record))
            self._threads.append(thread)
            self._cond.notify_all()
        thread.start()

    def _serve_guarded(self, raw: socket.socket, record: ConnRecord) -> None:
        conn: socket.socket | TLSConn = raw
        try:
            if self.tls is not None:
                conn = TLSConn(
                    raw,
                    self.tls,
                    close_notify=self.close_notify,
                    fin_after_close_notify=self.fin_after_close_notify,
                    coalesce=self.coalesce,
                )
                conn.handshake(record)
            self.serve(conn, record)
        except OSError as exc:
            if record.error is None:
                record.error = errno_name(exc)
        finally:
            self._close(conn)
            record.done.set()
            with self._cond:
                self._cond.notify_all()

    def _close(self, conn: socket.socket | TLSConn, *, reset: bool = False) -> None:
        """Close under the lock so stop() never shuts down a reused fd number. A TLS
        stream closed gracefully gets its close_notify first (unless already sent)."""
        if isinstance(conn, TLSConn):
            if not reset and conn.raw.fileno() != -1:
                conn.finish()
            conn = conn.raw
        with self._cond:
            if conn.fileno() == -1:
                return
            if reset:
                with contextlib.suppress(OSError):
                    set_linger0(conn)
            conn.close()

    def _spawn_helper(self, target: object, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        with self._cond:
            self._threads.append(thread)
        thread.start()
        return thread

    def serve(self, conn: Any, record: ConnRecord) -> None:
        """Handle one connection: `conn` is the socket, or its TLSConn over TLS."""
        raise NotImplementedError

    @staticmethod
    def _got_eof(conn: socket.socket | TLSConn, record: ConnRecord) -> None:
        """The peer's end of stream: a FIN, or over TLS close_notify and then the FIN."""
        record.eof = True
        if isinstance(conn, TLSConn):
            record.close_notify = True
            conn.expect_tcp_eof(TCP_EOF_TIMEOUT)
            record.tcp_eof = True

    @classmethod
    def _recv_into_record(
        cls, conn: socket.socket | TLSConn, record: ConnRecord, *, echo: bool = False
    ) -> None:
        """Read until EOF, counting and hashing into record; with `echo`, send each chunk
        back before reading the next."""
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                cls._got_eof(conn, record)
                return
            record._sha.update(view[:n])
            record.received += n
            if echo:
                cls._send_all(conn, record, view[:n])

    @classmethod
    def _send_stream(
        cls, conn: socket.socket | TLSConn, record: ConnRecord, stream: RandomStream
    ) -> None:
        """All of `stream`, in 64 KiB writes."""
        while not stream.done:
            chunk = stream.peek(64 * 1024)
            cls._send_all(conn, record, chunk)
            stream.advance(len(chunk))

    @staticmethod
    def _send_all(
        conn: socket.socket | TLSConn, record: ConnRecord, data: bytes | memoryview
    ) -> None:
        conn.sendall(data)
        record._sent_sha.update(data)
        record.sent += len(data)


class EchoServer(_Server):
    """Echo every byte. On EOF from the client, finish echoing, then shut down the write
    side and close."""

    def serve(self, conn: socket.socket | TLSConn, record: ConnRecord) -> None:
        self._recv_into_record(conn, record, echo=True)
        conn.shutdown(socket.SHUT_WR)


class SinkServer(_Server):
    """Read and SHA-256 everything until EOF, then reply with the 32-byte digest (followed by
    `extra_reply` bytes of RandomStream(extra_reply, reply_seed), for half-close tests that
    want a large reply after EOF) and close.

    `gate`: if given, do not read anything until it is set (lets a test hold data in flight).
    Over TLS the handshake happens first. Without TLS, a SinkServer is also a server that
    never answers a ClientHello.
    """

    def __init__(
        self,
        *,
        extra_reply: int = 0,
        reply_seed: int = 0,
        gate: threading.Event | None = None,
        bufsize: int | None = None,
        tls: ssl.SSLContext | None = None,
        close_notify: bool = True,
        fin_after_close_notify: bool = True,
    ) -> None:
        super().__init__(
            bufsize=bufsize,
            tls=tls,
            close_notify=close_notify,
            fin_after_close_notify=fin_after_close_notify,
        )
        self.extra_reply = extra_reply
        self.reply_seed = reply_seed
        self.gate = gate
        self.digests: list[bytes] = []

    def serve(self, conn: socket.socket | TLSConn, record: ConnRecord) -> None:
        if self.gate is not None:
            deadline = time.monotonic() + IO_TIMEOUT
            while not self.gate.wait(0.05):
                if self._stopping.is_set() or time.monotonic() > deadline:
                    return
        self._recv_into_record(conn, record)
        digest = record._sha.digest()
        with self._cond:
            self.digests.append(digest)
        self._send_all(conn, record, digest)
        self._send_stream(conn, record, RandomStream(self.extra_reply, self.reply_seed))


class SourceServer(_Server):
    """On accept, stream RandomStream(nbytes, seed) to the client in random 1 B .. 64 KiB
    writes (or writes of `write_size` bytes, shorter only at a 1 MiB block boundary: over
    TLS one write is one record), then shut down the write side; meanwhile SHA-256 what
    the client sends, until EOF. Closes when both are done. `record.sent` grows as the
    stream goes out."""

    def __init__(
        self,
        nbytes: int,
        seed: int,
        *,
        chunk_seed: int | None = None,
        write_size: int | None = None,
        bufsize: int | None = None,
        tls: ssl.SSLContext | None = None,
        close_notify: bool = True,
        fin_after_close_notify: bool = True,
        coalesce: int = 0,
    ) -> None:
        super().__init__(
            bufsize=bufsize,
            tls=tls,
            close_notify=close_notify,
            fin_after_close_notify=fin_after_close_notify,
            coalesce=coalesce,
        )
        self.nbytes = nbytes
        self.seed = seed
        self.chunk_seed = seed + 1 if chunk_seed is None else chunk_seed
        self.write_size = write_size

    def serve(self, conn: socket.socket | TLSConn, record: ConnRecord) -> None:
        sender = self._spawn_helper(lambda: self._send(conn, record), f"source-send-{record.peer}")
        try:
            self._recv_into_record(conn, record)
        finally:
            sender.join(IO_TIMEOUT)

    def _send(self, conn: socket.socket | TLSConn, record: ConnRecord) -> None:
        stream = RandomStream(self.nbytes, self.seed)
        rng = random.Random(self.chunk_seed)
        try:
            while not stream.done:
                chunk = stream.peek(self.write_size or rng.randint(1, 64 * 1024))
                self._send_all(conn, record, chunk)
                stream.advance(len(chunk))
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            record.send_error = errno_name(exc)


class ResetServer(_Server):
    """Read `after_bytes` bytes (0: none), send `send_bytes` of RandomStream(send_bytes, seed)
    (0: none), then close with SO_LINGER 0 so the peer gets RST (over TLS: no close_notify,
    just the RST)."""

    def __init__(
        self,
        *,
        after_bytes: int = 0,
        send_bytes: int = 0,
        seed: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(tls=tls)
        self.after_bytes = after_bytes
        self.send_bytes = send_bytes
        self.seed = seed

    def serve(self, conn: socket.socket | TLSConn, record: ConnRecord) -> None:
        while record.received < self.after_bytes:
            data = conn.recv(self.after_bytes - record.received)
            if not data:
                record.eof = True
                break
            record._sha.update(data)
            record.received += len(data)
        self._send_stream(conn, record, RandomStream(self.send_bytes, self.seed))
        self._close(conn, reset=True)
        record.reset_sent = True
