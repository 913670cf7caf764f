"""Prometheus text exposition of the relay's numbers, served from the supervisor's loop.

The HTTP side is deliberately tiny and non-blocking: one GET /metrics per connection,
requests over MAX_REQUEST bytes or slower than REQUEST_TIMEOUT_S are dropped, so a stuck
or hostile scraper cannot stall the supervisor (which also handles signals and crashes).
"""

import errno
import socket
import time
from collections.abc import Callable

from relaycore.addresses import HostPort
from relaycore.errors import StartupError
from relaycore.protocol import StatsReport

MAX_REQUEST = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_CLIENTS = 16

_COUNTERS = (
    # (metric, help, ConnectorStats field)
    ("relaycore_connections_opened_total", "Connections accepted from devices.", "opened"),
    ("relaycore_connections_closed_total", "Connections closed.", "closed"),
    (
        "relaycore_tls_handshakes_total",
        "TLS handshakes with upstreams (full + resumed).",
        "handshakes",
    ),
    (
        "relaycore_tls_handshakes_resumed_total",
        "TLS handshakes that resumed a session.",
        "handshakes_resumed",
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(report: StatsReport, reports_dropped: int) -> str:
    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    family("relaycore_connections_active", "gauge", "Connections open now.")
    out.extend(
        f'relaycore_connections_active{{connector="{_label(c.name)}"}} {c.active}'
        for c in report.connectors
    )
    for metric, text, attr in _COUNTERS:
        family(metric, "counter", text)
        out.extend(
            f'{metric}{{connector="{_label(c.name)}"}} {getattr(c, attr)}'
            for c in report.connectors
        )
    family(
        "relaycore_tls_handshake_groups_total",
        "counter",
        "TLS handshakes by key-exchange group (X25519MLKEM768: post-quantum hybrid).",
    )
    for c in report.connectors:
        for group, n in sorted(c.groups.items()):
            out.append(
                f'relaycore_tls_handshake_groups_total{{connector="{_label(c.name)}",'
                f'group="{_label(group)}"}} {n}'
            )
    family("relaycore_bytes_total", "counter", "Bytes relayed, in = device to server.")
    for c in report.connectors:
        name = _label(c.name)
        out.append(f'relaycore_bytes_total{{connector="{name}",direction="in"}} {c.bytes_in}')
        out.append(f'relaycore_bytes_total{{connector="{name}",direction="out"}} {c.bytes_out}')
    family("relaycore_errors_total", "counter", "Failures towards upstreams, by cause.")
    for c in report.connectors:
        for cause, n in sorted(c.errors.items()):
            out.append(
                f'relaycore_errors_total{{connector="{_label(c.name)}",cause="{cause}"}} {n}'
            )
    family("relaycore_workers", "gauge", "Worker processes running.")
    out.append(f"relaycore_workers {len(report.workers)}")
    family("relaycore_config_generation", "gauge", "Config generation in force.")
    out.append(f"relaycore_config_generation {report.generation}")
    family(
        "relaycore_reports_dropped_total",
        "counter",
        "Worker reports dropped because the supervisor was not reading.",
    )
    out.append(f"relaycore_reports_dropped_total {reports_dropped}")
    return "\n".join(out) + "\n"


class MetricsServer:
    """A listening socket plus its clients, driven by the supervisor's poller."""

    def __init__(self, addr: HostPort, body: Callable[[], str]) -> None:
        self._body = body
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((addr.host, addr.port))
            self.listener.listen(64)
        except OSError as e:
            self.listener.close()
            raise StartupError(f"stats.prometheus: cannot listen on {addr}: {e.strerror}") from e
        self.listener.setblocking(False)
        self._clients: dict[int, tuple[socket.socket, bytearray, float]] = {}

    def fds(self) -> list[int]:
        return [self.listener.fileno(), *self._clients]

    def on_readable(self, fd: int) -> None:
        if fd == self.listener.fileno():
            self._accept()
            return
        sock, buf, _ = self._clients[fd]
        try:
            data = sock.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf += data
        if not data or len(buf) > MAX_REQUEST:
            self._drop(fd)
        elif b"\r\n\r\n" in buf:
            self._answer(fd, bytes(buf))

    def expire(self, now: float) -> None:
        for fd, (_, _, since) in list(self._clients.items()):
            if now - since > REQUEST_TIMEOUT_S:
                self._drop(fd)

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        self.listener.close()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                return
            raise
        if len(self._clients) >= MAX_CLIENTS:
            sock.close()
            return
        sock.setblocking(False)
        self._clients[sock.fileno()] = (sock, bytearray(), time.monotonic())

    def _answer(self, fd: int, request: bytes) -> None:
        sock = self._clients[fd][0]
        line = request.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
            status, body = "200 OK", self._body().encode()
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        else:
            status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            # The body is a few KiB: it fits a loopback socket buffer; a client that does
            # not read it loses the tail, not the supervisor's time.
            sock.send(head + body)
        except OSError:
            pass
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        sock = self._clients.pop(fd)[0]
        sock.close()
