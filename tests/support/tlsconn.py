"""The server side of one TLS connection, for the test upstreams of support/servers.py."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .servers import ConnRecord

READ_SIZE = 256 * 1024
# One ssl write: at most this much plaintext sits in the outgoing BIO.
TLS_WRITE_CHUNK = 64 * 1024


def note_sni(obj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
    # The servername callback: called for every ClientHello, server_name None without SNI.
    obj.relay_test_sni = (server_name,)


class TLSConn:
    """The server side of one TLS connection over a blocking socket, for a handler that
    would otherwise use the socket: recv_into, recv, sendall, shutdown.

    It drives an ssl.SSLObject through memory BIOs so that the server decides what goes
    on the wire, which SSLSocket does not let it: close_notify alone with the read side
    still open (a TLS half-close: SSLSocket.unwrap waits for the peer's), or a FIN with no
    close_notify at all (truncation).

    One reader thread and one writer thread may use it at once (SourceServer does): the
    SSLObject is only touched under `_lock`, and the reader decrypts every whole record as
    soon as it arrives, so the incoming BIO never holds one when the writer sends
    close_notify (OpenSSL's SSL_shutdown would fail on it: "application data after close
    notify"). Bytes leave the outgoing BIO and reach the socket in order under `_send_lock`.
    """

    def __init__(
        self,
        raw: socket.socket,
        ctx: ssl.SSLContext,
        *,
        close_notify: bool = True,
        fin_after_close_notify: bool = True,
        coalesce: int = 0,
    ) -> None:
        self.raw = raw
        self.send_close_notify = close_notify
        self.fin_after_close_notify = fin_after_close_notify
        self.coalesce = coalesce
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._plain = bytearray()  # decrypted, not yet returned
        self._peer_closed = False  # the peer's close_notify was decrypted
        self._read_error: ssl.SSLError | None = None
        self._raw_eof = False
        self._shut_wr = False
        self.established = False

    # -- handshake ---------------------------------------------------------------------------

    def handshake(self, record: ConnRecord) -> None:
        """Complete the handshake (raising ssl.SSLError or OSError on failure, after
        sending the alert) and note what it was in `record`."""
        while True:
            failure: ssl.SSLError | None = None
            done = False
            with self._lock:
                try:
                    self._obj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    record.tls_error = str(exc)
                    failure = exc
                finally:
                    sni = getattr(self._obj, "relay_test_sni", None)
                    if sni is not None:
                        record.sni_checked = True
                        record.sni = sni[0]
            self._flush()  # the server's flight, or its alert
            if failure is not None:
                raise failure
            if done:
                break
            self._pull()
        with self._lock:
            self.established = True
            record.tls_version = self._obj.version()
            cipher = self._obj.cipher()
            record.cipher = cipher[0] if cipher else None
            record.session_reused = self._obj.session_reused
            record.peer_cert = self._obj.getpeercert() or None
            self._decrypt()  # data the client sent with its Finished

    # -- reading -----------------------------------------------------------------------------

    def _pull(self) -> None:
        """One blocking read of the socket, fed to OpenSSL; decrypt what it completes."""
        if self._raw_eof:
            raise ConnectionAbortedError("TLS wants more bytes after the peer's FIN")
        data = self.raw.recv(READ_SIZE)
        with self._lock:
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()
                self._raw_eof = True
            if self.established:
                self._decrypt()
        self._flush()

    def _decrypt(self) -> None:
        # Under _lock: every whole record in the incoming BIO, into _plain.
        while not self._peer_closed and self._read_error is None:
            try:
                chunk = self._obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError as exc:
                self._read_error = exc
                return
            if not chunk:
                self._peer_closed = True
                return
            self._plain += chunk

    def recv_into(self, buf: bytearray | memoryview, nbytes: int = 0) -> int:
        """Like socket.recv_into: 0 at the peer's close_notify; ssl.SSLEOFError when TCP
        ended without one (after every byte before it)."""
        want = nbytes or len(buf)
        while True:
            with self._lock:
                if self._plain:
                    n = min(want, len(self._plain))
                    buf[:n] = self._plain[:n]
                    del self._plain[:n]
                    return n
                if self._peer_closed:
                    return 0
                if self._read_error is not None:
                    raise self._read_error
            self._pull()

    def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        k = self.recv_into(buf)
        return bytes(buf[:k])

    def expect_tcp_eof(self, timeout: float) -> None:
        """After the peer's close_notify: its FIN must follow, with no byte in between."""
        with self._lock:
            stray = self._in.pending
        if stray:
            raise ConnectionError(f"{stray} bytes after the peer's close_notify")
        deadline = time.monotonic() + timeout
        while not self._raw_eof:
            # select, not settimeout: a writer thread may be blocked on this socket.
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.raw], [], [], left)[0]:
                raise TimeoutError(f"no TCP FIN {timeout}s after the peer's close_notify")
            data = self.raw.recv(READ_SIZE)
            if data:
                raise ConnectionError(f"{len(data)} bytes after the peer's close_notify")
            self._raw_eof = True

    # -- writing -----------------------------------------------------------------------------

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                data = self._out.read()
            if data:
                self.raw.sendall(data)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send: one ssl write (so one record, up to 16 KiB) per call, or per
        64 KiB of a bigger buffer. With `coalesce`, the records wait in the outgoing BIO
        until that many bytes of them are there, and leave in one socket write (so
        thousands of tiny records can reach the peer together); shutdown sends the rest."""
        view = memoryview(data)
        for off in range(0, len(view), TLS_WRITE_CHUNK):
            with self._lock:
                self._obj.write(view[off : off + TLS_WRITE_CHUNK])
                waiting = self._out.pending
            if waiting >= self.coalesce:
                self._flush()

    def close_notify(self) -> None:
        """Send close_notify (once), the read side staying open."""
        with self._lock:
            if self._shut_wr or not self.established:
                return
            self._shut_wr = True
            try:
                # The first SSL_shutdown sends close_notify; the second finds the peer's
                # not there yet (the incoming BIO is empty) and says so.
                self._obj.unwrap()
            except ssl.SSLWantReadError:
                pass
        self._flush()

    def shutdown(self, how: int) -> None:
        """SHUT_WR: close_notify (unless this server truncates), then the TCP FIN (unless
        it leaves that to the close)."""
        if how != socket.SHUT_RD:
            self._flush()  # coalesced records
            if self.send_close_notify:
                self.close_notify()
                if how == socket.SHUT_WR and not self.fin_after_close_notify:
                    return
        self.raw.shutdown(how)

    def finish(self) -> None:
        """Before a graceful close: coalesced records, then close_notify if the handler did
        not shut down itself and this server sends one. Best effort: the peer may be gone."""
        with contextlib.suppress(OSError):
            self._flush()
            if self.send_close_notify and not self._shut_wr:
                self.close_notify()
