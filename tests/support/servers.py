"""Threaded loopback upstreams for relay tests.

Each server is a context manager with `.port` and `.connections` (one ConnRecord per accepted
connection, in accept order). A handler never raises: socket errors are recorded by errno
name in the record, so a test asserts on what the peer saw (EOF, ECONNRESET, bytes, digest).
`stop()` shuts down every open connection, joins every thread and closes every fd.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from .data import RandomStream

HOST = "127.0.0.1"
RECV_SIZE = 256 * 1024
IO_TIMEOUT = 60.0
JOIN_TIMEOUT = 5.0


def errno_name(exc: OSError) -> str:
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


class _Server:
    """Accept loop on 127.0.0.1:0 plus one handler thread per connection."""

    def __init__(self, *, bufsize: int | None = None, backlog: int = 128) -> None:
        self.connections: list[ConnRecord] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[tuple[socket.socket, ConnRecord]] = []
        self._bufsize = bufsize
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if bufsize is not None:
                # Accepted sockets inherit the listener's sizes; the window scale is fixed
                # at the SYN, so the receive buffer has to be small before listen().
                set_bufsize(self._lsock, bufsize)
            self._lsock.bind((HOST, 0))
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

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

    def _serve_guarded(self, conn: socket.socket, record: ConnRecord) -> None:
        try:
            self.serve(conn, record)
        except OSError as exc:
            if record.error is None:
                record.error = errno_name(exc)
        finally:
            self._close(conn)
            record.done.set()
            with self._cond:
                self._cond.notify_all()

    def _close(self, conn: socket.socket, *, reset: bool = False) -> None:
        """Close under the lock so stop() never shuts down a reused fd number."""
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

    def serve(self, conn: socket.socket, record: ConnRecord) -> None:
        raise NotImplementedError

    @staticmethod
    def _recv_into_record(conn: socket.socket, record: ConnRecord) -> None:
        """Read until EOF, counting and hashing into record."""
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                record.eof = True
                return
            record._sha.update(view[:n])
            record.received += n

    @staticmethod
    def _send_all(conn: socket.socket, record: ConnRecord, data: bytes | memoryview) -> None:
        conn.sendall(data)
        record._sent_sha.update(data)
        record.sent += len(data)


class EchoServer(_Server):
    """Echo every byte. On EOF from the client, finish echoing, then shut down the write
    side and close."""

    def serve(self, conn: socket.socket, record: ConnRecord) -> None:
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                record.eof = True
                break
            record._sha.update(view[:n])
            record.received += n
            self._send_all(conn, record, view[:n])
        conn.shutdown(socket.SHUT_WR)


class SinkServer(_Server):
    """Read and SHA-256 everything until EOF, then reply with the 32-byte digest (followed by
    `extra_reply` bytes of RandomStream(extra_reply, reply_seed), for half-close tests that
    want a large reply after EOF) and close.

    `gate`: if given, do not read anything until it is set (lets a test hold data in flight).
    """

    def __init__(
        self,
        *,
        extra_reply: int = 0,
        reply_seed: int = 0,
        gate: threading.Event | None = None,
        bufsize: int | None = None,
    ) -> None:
        super().__init__(bufsize=bufsize)
        self.extra_reply = extra_reply
        self.reply_seed = reply_seed
        self.gate = gate
        self.digests: list[bytes] = []

    def serve(self, conn: socket.socket, record: ConnRecord) -> None:
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
        stream = RandomStream(self.extra_reply, self.reply_seed)
        while not stream.done:
            chunk = stream.peek(64 * 1024)
            self._send_all(conn, record, chunk)
            stream.advance(len(chunk))


class SourceServer(_Server):
    """On accept, stream RandomStream(nbytes, seed) to the client in random 1 B .. 64 KiB
    writes, then shut down the write side; meanwhile SHA-256 what the client sends, until
    EOF. Closes when both are done. `record.sent` grows as the stream goes out."""

    def __init__(
        self, nbytes: int, seed: int, *, chunk_seed: int | None = None, bufsize: int | None = None
    ) -> None:
        super().__init__(bufsize=bufsize)
        self.nbytes = nbytes
        self.seed = seed
        self.chunk_seed = seed + 1 if chunk_seed is None else chunk_seed

    def serve(self, conn: socket.socket, record: ConnRecord) -> None:
        sender = self._spawn_helper(lambda: self._send(conn, record), f"source-send-{record.peer}")
        try:
            self._recv_into_record(conn, record)
        finally:
            sender.join(IO_TIMEOUT)

    def _send(self, conn: socket.socket, record: ConnRecord) -> None:
        stream = RandomStream(self.nbytes, self.seed)
        rng = random.Random(self.chunk_seed)
        try:
            while not stream.done:
                chunk = stream.peek(rng.randint(1, 64 * 1024))
                self._send_all(conn, record, chunk)
                stream.advance(len(chunk))
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            record.send_error = errno_name(exc)


class ResetServer(_Server):
    """Read `after_bytes` bytes (0: none), send `send_bytes` of RandomStream(send_bytes, seed)
    (0: none), then close with SO_LINGER 0 so the peer gets RST."""

    def __init__(self, *, after_bytes: int = 0, send_bytes: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.after_bytes = after_bytes
        self.send_bytes = send_bytes
        self.seed = seed

    def serve(self, conn: socket.socket, record: ConnRecord) -> None:
        while record.received < self.after_bytes:
            data = conn.recv(self.after_bytes - record.received)
            if not data:
                record.eof = True
                break
            record._sha.update(data)
            record.received += len(data)
        stream = RandomStream(self.send_bytes, self.seed)
        while not stream.done:
            chunk = stream.peek(64 * 1024)
            self._send_all(conn, record, chunk)
            stream.advance(len(chunk))
        self._close(conn, reset=True)
        record.reset_sent = True


class BlackholeListener:
    """A listener on 127.0.0.1 that never accepts, with its accept queue full, so that a
    further connect() stays in SYN_SENT (Linux drops SYNs to a listener whose accept queue
    is full) until the connector gives up. No packet leaves loopback."""

    def __init__(self, max_fill: int = 16) -> None:
        self._fillers: list[socket.socket] = []
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._lsock.bind((HOST, 0))
            self._lsock.listen(0)
            self.port: int = self._lsock.getsockname()[1]
            self._fill(max_fill)
        except BaseException:
            self.close()
            raise

    def _fill(self, max_fill: int) -> None:
        for _ in range(max_fill):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.setblocking(False)
            err = probe.connect_ex((HOST, self.port))
            if err not in (0, errno.EINPROGRESS):
                probe.close()
                raise OSError(err, "blackhole fill connect failed")
            with selectors.DefaultSelector() as sel:
                sel.register(probe, selectors.EVENT_WRITE)
                ready = sel.select(timeout=0.3)
            if ready and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                self._fillers.append(probe)
                continue
            probe.close()  # its SYN was dropped: the queue is full
            return
        raise RuntimeError(f"accept queue still not full after {max_fill} connections")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for sock in self._fillers:
            sock.close()
        self._fillers.clear()
        self._lsock.close()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound (so nobody else takes it) but not
    listening, so a SYN to it gets RST."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for configs of processes that bind themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port
