"""Client-side drivers: send with seeded random chunking while reading concurrently, hash
both ends, and give up at a deadline instead of hanging.

No sleeps: every wait is a selector or socket timeout bounded by the caller's deadline.
"""

from __future__ import annotations

import errno
import hashlib
import random
import selectors
import socket
import time
from dataclasses import dataclass, field

from .data import RandomStream
from .servers import HOST, errno_name, set_bufsize

RECV_SIZE = 256 * 1024
MAX_WRITE = 64 * 1024


def connect(port: int, *, bufsize: int | None = None, timeout: float = 10.0) -> socket.socket:
    """A blocking TCP connection to 127.0.0.1:port with a socket timeout. `bufsize` sets
    SO_SNDBUF and SO_RCVBUF before connect (so the window is small from the SYN on)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if bufsize is not None:
            set_bufsize(sock, bufsize)
        sock.settimeout(timeout)
        sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Result:
    """What one client saw. `digest` covers the received bytes after the first `head_len`
    bytes, which are kept verbatim in `head`."""

    sent: int = 0
    sent_digest: str = ""
    received: int = 0
    head: bytes = b""
    eof: bool = False
    error: str | None = None
    elapsed: float = 0.0
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def digest(self) -> str:
        return self._sha.hexdigest()


def exchange(
    sock: socket.socket,
    send: RandomStream | None = None,
    *,
    chunk_seed: int = 0,
    shutdown: bool = True,
    read: bool = True,
    head_len: int = 0,
    timeout: float = 60.0,
) -> Result:
    """Send `send` (if any) in random 1 B .. 64 KiB writes while reading; after the last
    byte, shutdown(SHUT_WR) if `shutdown`. Read until EOF if `read`. Stops early, with
    `error` set to the errno name, on a socket error. Raises TimeoutError at the deadline.

    The socket is left open (the caller closes it) and in non-blocking mode."""
    result = Result()
    rng = random.Random(chunk_seed)
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)
    sending = send is not None
    if send is not None and send.done and shutdown:
        sock.shutdown(socket.SHUT_WR)
        sending = False
    reading = read
    sock.setblocking(False)
    with selectors.DefaultSelector() as sel:
        events = (selectors.EVENT_READ if reading else 0) | (
            selectors.EVENT_WRITE if sending else 0
        )
        if events:
            sel.register(sock, events)
        while reading or sending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"exchange timed out after {timeout}s: sent {result.sent}"
                    f"/{send.total if send else 0}, received {result.received}, eof={result.eof}"
                )
            ready = sel.select(timeout=min(left, 1.0))
            for _, mask in ready:
                try:
                    if mask & selectors.EVENT_WRITE and send is not None and sending:
                        chunk = send.peek(rng.randint(1, MAX_WRITE))
                        n = sock.send(chunk)
                        send.advance(n)
                        result.sent += n
                        if send.done:
                            sending = False
                            if shutdown:
                                sock.shutdown(socket.SHUT_WR)
                    if mask & selectors.EVENT_READ and reading:
                        n = sock.recv_into(buf)
                        if n == 0:
                            result.eof = True
                            reading = False
                        else:
                            _take(result, view[:n], head_len)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    result.error = errno_name(exc)
                    reading = sending = False
            if reading or sending:
                sel.modify(
                    sock,
                    (selectors.EVENT_READ if reading else 0)
                    | (selectors.EVENT_WRITE if sending else 0),
                )
    if send is not None:
        result.sent_digest = send.hexdigest()
    result.elapsed = time.monotonic() - start
    return result


def _take(result: Result, data: memoryview, head_len: int) -> None:
    result.received += len(data)
    missing = head_len - len(result.head)
    if missing > 0:
        result.head += bytes(data[:missing])
        data = data[missing:]
    result._sha.update(data)


class Reader:
    """Incremental blocking reader with a running SHA-256, for tests that pause reading."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0
        self.eof = False
        self.sha = hashlib.sha256()
        self._buf = bytearray(RECV_SIZE)

    def read(self, n: int, timeout: float) -> None:
        """Read exactly n more bytes (or to EOF) by the deadline."""
        self._read(self.received + n, timeout)

    def read_to_eof(self, timeout: float) -> None:
        self._read(None, timeout)

    def _read(self, upto: int | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        view = memoryview(self._buf)
        while not self.eof and (upto is None or self.received < upto):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"read {self.received} bytes, wanted {upto} (None: EOF)")
            self.sock.settimeout(min(left, 5.0))
            want = RECV_SIZE if upto is None else min(RECV_SIZE, upto - self.received)
            try:
                n = self.sock.recv_into(self._buf, want)
            except TimeoutError:
                continue
            if n == 0:
                self.eof = True
            self.sha.update(view[:n])
            self.received += n

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def wait_closed(sock: socket.socket, timeout: float) -> str:
    """Discard input until the peer closes: return "eof" for a FIN, else the errno name
    ("ECONNRESET" for a RST). Raises TimeoutError if still open at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"connection still open after {timeout}s")
        sock.settimeout(left)
        try:
            data = sock.recv(RECV_SIZE)
        except TimeoutError:
            continue
        except OSError as exc:
            return errno_name(exc)
        if not data:
            return "eof"


def connect_until_closed(port: int, timeout: float = 5.0) -> tuple[str, float]:
    """Connect as a device that sends nothing and wait for the relay to close: the outcome
    (as wait_closed says it; "open" if still open at the deadline) and the seconds from
    connect to close."""
    start = time.monotonic()
    try:
        sock = connect(port, timeout=timeout)
    except ConnectionResetError:
        # The relay's RST can beat connect()'s own SO_ERROR check on loopback.
        return errno.errorcode[errno.ECONNRESET], time.monotonic() - start
    with sock:
        try:
            outcome = wait_closed(sock, timeout)
        except TimeoutError:
            outcome = "open"
        return outcome, time.monotonic() - start


def is_reset(outcome: str) -> bool:
    return outcome == errno.errorcode[errno.ECONNRESET]


def recv_exact(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """Exactly n bytes by the deadline; fewer only if the peer closed first."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"got {len(data)} of {n} bytes in {timeout}s")
        sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def ping(sock: socket.socket, msg: bytes = b"ping", timeout: float = 5.0) -> None:
    """Round trip through an echo upstream."""
    sock.sendall(msg)
    echoed = recv_exact(sock, len(msg), timeout)
    assert echoed == msg, f"echo returned {echoed!r} for {msg!r}"
