"""The lean data path (issue 13) with real sockets and real OpenSSL, in one worker's Loop:

- a short read empties a TCP socket, so the relay waits for the next epoll edge instead of
  reading again for an EAGAIN (counted: `reads_empty`), on the copy and TLS paths, while
  a device sends its messages in pieces with pauses and every byte still comes back;
- a TLS upstream that writes each record in two pieces, or byte by byte, with pauses
  between them: with read-ahead a record cut across reads still reaches the device whole
  and in order (OpenSSL holds the first piece; nothing waits for an edge that came);
- partial record writes under backpressure: the TLS upstream reads nothing for a while,
  the relay's SSL_write stops part-way, the device's side is no longer read; when the
  upstream reads again, every byte arrives in order (SHA-256 at both ends);
- several records per send, in a real worker under strace (skipped without strace): the
  records of each chunk leave in one send (153 sends for 8 MiB here, 518 before);
- no epoll_ctl per message: a kept connection's round trips change no interest.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import connect, ping
from support.data import MiB, RandomStream
from support.relay import (
    SERVER_NAME,
    LoopThread,
    TLSFiles,
    relay_config,
    relay_process,
    tls_failures,
)
from support.servers import EchoServer, SinkServer, tls_server_context

from relaycore.lab.base import free_port

pytestmark = pytest.mark.timeout(90)

ROUND_TRIPS = 200
MESSAGE = 64


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.make(tmp_path_factory.mktemp("pki"))


def client_context(files: TLSFiles) -> object:
    from relaycore._core import TLSClientContext

    return TLSClientContext(server_name=SERVER_NAME, ca=str(files.pki.ca_cert))


@contextlib.contextmanager
def relay_to(port: int, tls: object | None, **kwargs: object) -> Iterator[LoopThread]:
    relay = LoopThread(port, tls=tls, splice="off", **kwargs).start()
    try:
        yield relay
    finally:
        relay.stop()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


@pytest.mark.parametrize("path", ["copy", "tls"])
def test_short_reads_wait_for_the_next_edge(tls_files, path):
    """ROUND_TRIPS echo round trips of 64 bytes, each message sent in two pieces with a
    pause between them (a device trickling its message out), on one connection. Every
    byte comes back in order, and the relay reads a socket for nothing (EAGAIN) far less
    than once per piece: before issue 13 it did so after every read, on both sides (at
    least 4 per round trip here)."""
    tls = path == "tls"
    server_ctx = tls_server_context(tls_files.server.chain, tls_files.server.key) if tls else None
    pause = threading.Event()
    with (
        EchoServer(tls=server_ctx) as up,
        relay_to(up.port, client_context(tls_files) if tls else None) as relay,
        connect(relay.port) as sock,
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = RandomStream(ROUND_TRIPS * MESSAGE, seed=13)
        got = hashlib.sha256()
        for _ in range(ROUND_TRIPS):
            message = bytes(stream.peek(MESSAGE))
            stream.advance(len(message))
            sock.sendall(message[:20])
            pause.wait(0.001)  # the device's pause between pieces (not a synchronisation)
            sock.sendall(message[20:])
            got.update(recv_exact(sock, len(message)))
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
        counters = relay.wait_idle()
    assert got.hexdigest() == stream.hexdigest(), "echo corrupted"
    assert counters["bytes_in"] == counters["bytes_out"] == ROUND_TRIPS * MESSAGE, counters
    assert tls_failures(counters) == 0, counters
    # 2 pieces per round trip, 2 sides: the old loop had >= 4 * ROUND_TRIPS empty reads.
    # What may remain: the first read after the handshake, a read racing a FIN.
    assert counters["reads_empty"] <= ROUND_TRIPS // 20, counters


class SplitRecordEcho:
    """A TLS 1.3 echo upstream that controls its wire bytes (ssl.SSLObject over memory
    BIOs): each record it writes goes out in pieces of `piece` bytes (1: byte by byte)
    with `gap_s` between them, so every record reaches the relay cut across reads."""

    def __init__(self, files: TLSFiles, piece: int, gap_s: float) -> None:
        self.ctx = tls_server_context(files.server.chain, files.server.key)
        self.ctx.num_tickets = 0
        self.piece = piece
        self.gap_s = gap_s
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="split-echo", daemon=True)

    def __enter__(self) -> SplitRecordEcho:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lsock.close()
        self.thread.join(20)

    def _run(self) -> None:
        try:
            self.lsock.settimeout(20)
            sock, _ = self.lsock.accept()
            with sock:
                sock.settimeout(20)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._serve(sock)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _serve(self, sock: socket.socket) -> None:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ctx.wrap_bio(inc, out, server_side=True)
        gap = threading.Event()
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(out.read())
                inc.write(sock.recv(65536))
        sock.sendall(out.read())
        while True:
            try:
                plain = obj.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return
                inc.write(data)
                continue
            except ssl.SSLZeroReturnError:
                plain = b""
            if not plain:  # the relay's close_notify: answer with ours, then FIN
                obj.unwrap()
                sock.sendall(out.read())
                sock.shutdown(socket.SHUT_WR)
                return
            obj.write(plain)
            wire = out.read()
            for k in range(0, len(wire), self.piece):
                sock.sendall(wire[k : k + self.piece])
                gap.wait(self.gap_s)  # the record's pieces apart on the wire (the workload)


@pytest.mark.parametrize(("piece", "messages"), [(40, 60), (1, 8)], ids=["halves", "bytes"])
def test_tls_record_split_across_reads(tls_files, piece, messages):
    """Each echoed record (a 64-byte message: 86 bytes on the wire in TLS 1.3) comes from
    the upstream in pieces with pauses; the device gets every byte in order, promptly."""
    with (
        SplitRecordEcho(tls_files, piece, gap_s=0.002) as up,
        relay_to(up.port, client_context(tls_files)) as relay,
        connect(relay.port, timeout=20) as sock,
    ):
        stream = RandomStream(messages * MESSAGE, seed=29)
        got = hashlib.sha256()
        for _ in range(messages):
            message = bytes(stream.peek(MESSAGE))
            stream.advance(len(message))
            sock.sendall(message)
            got.update(recv_exact(sock, len(message)))
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
        counters = relay.wait_idle()
    assert up.error is None, up.error
    assert got.hexdigest() == stream.hexdigest(), "records reassembled out of order"
    assert counters["bytes_out"] == messages * MESSAGE, counters
    assert tls_failures(counters) == 0, counters


def test_partial_record_writes_under_backpressure(tls_files):
    """16 MiB device -> TLS upstream that reads nothing for a while: the relay's SSL_write
    stops part-way through a record, the device is no longer read (it blocks), and when
    the upstream reads again every byte arrives, in order."""
    total = 16 * MiB
    gate = threading.Event()
    server_ctx = tls_server_context(tls_files.server.chain, tls_files.server.key)
    with (
        SinkServer(tls=server_ctx, gate=gate, bufsize=64 << 10) as up,
        relay_to(up.port, client_context(tls_files)) as relay,
        connect(relay.port, bufsize=64 << 10, timeout=30) as sock,
    ):
        stream = RandomStream(total, seed=31)
        sent = [0]

        def send_all() -> None:
            while not stream.done:
                chunk = stream.peek(256 << 10)
                sock.sendall(chunk)
                stream.advance(len(chunk))
                sent[0] = stream.consumed
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_all, name="device-send", daemon=True)
        sender.start()
        # The upstream reads nothing for a while (the test's workload, not a
        # synchronisation): the device must block well before the end of its stream.
        threading.Event().wait(1.0)
        stalled_at = sent[0]
        gate.set()
        sender.join(60)
        assert not sender.is_alive(), f"device stuck at {sent[0]} of {total} bytes"
        digest = recv_exact(sock, 32)
        [rec] = up.wait_connections(1)
        rec.wait(20)
        counters = relay.wait_idle()
    assert stalled_at < total // 2, f"the relay took {stalled_at} bytes from a blocked path"
    assert rec.received == total, rec
    assert rec.received_digest() == stream.hexdigest(), "stream corrupted across the stall"
    assert digest.hex() == stream.hexdigest(), digest.hex()
    assert counters["bytes_in"] == total, counters
    assert tls_failures(counters) == 0, counters


def calls_in(summary: str, names: tuple[str, ...]) -> int:
    """The calls to `names` in an `strace -c` summary."""
    calls = 0
    for line in summary.splitlines():
        words = line.split()
        if words and words[-1] in names:
            calls += int(words[3])
    return calls


@contextlib.contextmanager
def strace_counts(pid: int, calls: tuple[str, ...], summary: Path) -> Iterator[None]:
    """`strace -c -f` on pid, counting `calls`, for the block; its summary in `summary`."""
    tracer = subprocess.Popen(
        [
            "strace",
            "-c",
            "-f",
            "-o",
            str(summary),
            "-p",
            str(pid),
            "-e",
            "trace=" + ",".join(calls),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tracer.stderr is not None
        attached = tracer.stderr.readline()  # "strace: Process N attached"
        assert "attached" in attached, attached
        yield
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.communicate(timeout=30)


SENDS = ("write", "sendto", "sendmsg", "writev")
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


@needs_strace
@pytest.mark.epoll_only  # with io_uring the sends are the ring's, not syscalls of their own
def test_a_chunk_of_records_goes_out_in_one_send(tmp_path, tls_files):
    """8 MiB device -> TLS upstream through a real worker, its write-side syscalls counted
    by strace: the records of each 63 KiB chunk leave together (about 130 sends, a few
    more where the upstream's socket is full), where OpenSSL alone writes each 16 KiB
    record by itself (at least 512)."""
    total = 8 * MiB
    summary = tmp_path / "strace.txt"
    with one_worker_relay(tmp_path, tls_files, SinkServer) as (up, worker, sock):
        ping_sink = b"x"
        sock.sendall(ping_sink)  # the handshake happens before strace attaches
        [rec] = up.wait_connections(1)
        with strace_counts(worker, SENDS, summary):
            stream = RandomStream(total, seed=37)
            while not stream.done:
                chunk = stream.peek(256 << 10)
                sock.sendall(chunk)
                stream.advance(len(chunk))
            sock.shutdown(socket.SHUT_WR)
            digest = recv_exact(sock, 32)
    rec.wait(20)
    expected = hashlib.sha256(ping_sink)
    replay = RandomStream(total, seed=37)
    while not replay.done:
        piece = replay.peek(1 << 20)
        expected.update(piece)
        replay.advance(len(piece))
    assert digest == expected.digest(), "stream corrupted"
    assert rec.received == total + 1, rec
    sends = calls_in(summary.read_text(), SENDS)
    assert 0 < sends <= 2 * total // (63 * 1024) + 20, summary.read_text()


@needs_strace
@pytest.mark.epoll_only  # the epoll loop's interest changes and reads, counted by name
def test_echo_round_trips_make_no_epoll_ctl(tmp_path, tls_files):
    """A kept TLS connection's round trips change no epoll interest: each side is
    registered once, edge-triggered for both directions, so epoll_ctl is not called per
    message (nor per short read or full socket)."""
    summary = tmp_path / "strace.txt"
    with one_worker_relay(tmp_path, tls_files, EchoServer) as (_, worker, sock):
        ping(sock, b"handshake first")
        with strace_counts(worker, ("epoll_ctl", "epoll_wait", "recvfrom", "read"), summary):
            for k in range(ROUND_TRIPS):
                ping(sock, k.to_bytes(2, "big") * (MESSAGE // 2))
    trace = summary.read_text()
    assert calls_in(trace, ("epoll_wait",)) > 0, trace
    assert calls_in(trace, ("recvfrom", "read")) >= 2 * ROUND_TRIPS, trace
    # None per message; the worker's other threads (ZeroMQ's I/O thread) may make a few.
    assert calls_in(trace, ("epoll_ctl",)) < ROUND_TRIPS // 20, trace


@contextlib.contextmanager
def one_worker_relay(
    tmp_path: Path, files: TLSFiles, server: type[EchoServer] | type[SinkServer]
) -> Iterator[tuple[Any, int, socket.socket]]:
    """A relay process with one worker and one TLS connector to a new `server` (verified
    with the test PKI), and a device connected to it: (the server, the worker's pid, the
    device's socket)."""
    server_ctx = tls_server_context(files.server.chain, files.server.key)
    with server(tls=server_ctx) as up:
        listen_port = free_port()
        config = relay_config(
            run_dir=tmp_path / "run", listen_port=listen_port, upstream_port=up.port
        ).replace("tls = false", f'server_name = "{SERVER_NAME}"\nca = "{files.pki.ca_cert}"')
        with relay_process(config, tmp_path) as relay:
            [worker] = relay.worker_pids(expected=1)
            with connect(listen_port, timeout=30) as sock:
                yield up, worker, sock
