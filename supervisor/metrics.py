"""Prometheus text exposition of the relay's numbers, served from the supervisor's loop.

The HTTP side is deliberately tiny and non-blocking: one GET per connection (/metrics, and
the pages the supervisor adds: /healthz, /readyz),
requests over MAX_REQUEST bytes or slower than REQUEST_TIMEOUT_S are dropped, so a stuck
or hostile scraper cannot stall the supervisor (which also handles signals and crashes).

Nor can it take every slot: when MAX_CLIENTS connections wait for their requests, a new
one evicts the oldest. A real scraper sends its request as soon as it connects and is
answered within a turn or two, so it is never the oldest for long; a client that opens
connections and sends nothing only ever evicts its own (issue 16: 20 connections that
each sent one byte used to block every scrape for as long as they stayed).
"""

import errno
import socket
import time
from collections.abc import Callable, Mapping

from relaycore.addresses import HostPort
from relaycore.errors import StartupError
from relaycore.protocol import StatsReport

MAX_REQUEST = 8192
REQUEST_TIMEOUT_S = 2.0  # a scraper on a LAN sends its request in a millisecond
MAX_CLIENTS = 64
ACCEPTS_PER_WAKE = 16  # fewer than MAX_CLIENTS: what was accepted last wake stays a wake
_STATUS = {200: "200 OK", 503: "503 Service Unavailable"}

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


def render(
    report: StatsReport, reports_dropped: int, worker_totals: Mapping[str, int] | None = None
) -> str:
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
    family(
        "relaycore_notices_total", "counter", "News that is no failure (pq_classical), by cause."
    )
    for c in report.connectors:
        for cause, n in sorted(c.notices.items()):
            out.append(
                f'relaycore_notices_total{{connector="{_label(c.name)}",cause="{cause}"}} {n}'
            )
    family(
        "relaycore_upstream_cert_expiry_timestamp_seconds",
        "gauge",
        "notAfter of the certificate each connector's upstream presented (Unix time).",
    )
    out.extend(
        f'relaycore_upstream_cert_expiry_timestamp_seconds{{connector="{_label(c.name)}"}}'
        f" {c.cert.not_after:.0f}"
        for c in report.connectors
        if c.cert is not None
    )
    family("relaycore_tls_alpn_total", "counter", "TLS handshakes by the ALPN protocol agreed.")
    for c in report.connectors:
        for protocol, n in sorted(c.alpn.items()):
            out.append(
                f'relaycore_tls_alpn_total{{connector="{_label(c.name)}",'
                f'protocol="{_label(protocol)}"}} {n}'
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
    family(
        "relaycore_accept_paused_emfile_total",
        "counter",
        "Listener pauses because a worker was out of file descriptors (devices waited).",
    )
    paused = (worker_totals or {}).get("accept_paused_emfile", 0)
    out.append(f"relaycore_accept_paused_emfile_total {paused}")
    family("relaycore_worker_resident_bytes", "gauge", "Resident memory of each worker.")
    out.extend(
        f'relaycore_worker_resident_bytes{{slot="{w.slot}",generation="{w.generation}"}}'
        f" {w.rss_bytes}"
        for w in report.workers
    )
    return "\n".join(out) + "\n"


def render_config(sha256: str, last_reload_ok: bool, loaded: float) -> str:
    """The config in force, for a fleet: the same sha256 on every node means the same file
    everywhere; a 0 means the latest reload was rejected (the log says why)."""
    return (
        "# HELP relaycore_config_info The config file in force, by the SHA-256 of its bytes.\n"
        "# TYPE relaycore_config_info gauge\n"
        f'relaycore_config_info{{sha256="{sha256}"}} 1\n'
        "# HELP relaycore_config_last_reload_successful 1 if the latest reload took (or none"
        " was asked for), 0 if the file was rejected and the previous config stays.\n"
        "# TYPE relaycore_config_last_reload_successful gauge\n"
        f"relaycore_config_last_reload_successful {int(last_reload_ok)}\n"
        "# HELP relaycore_config_last_reload_success_timestamp_seconds When the config in"
        " force was loaded (Unix time).\n"
        "# TYPE relaycore_config_last_reload_success_timestamp_seconds gauge\n"
        f"relaycore_config_last_reload_success_timestamp_seconds {loaded:.3f}\n"
    )


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
        self._pages: dict[bytes, Callable[[], tuple[int, str]]] = {}

    def add_page(self, path: str, page: Callable[[], tuple[int, str]]) -> None:
        """GET `path` answers page()'s (HTTP status, plain text), 200 or 503 say."""
        self._pages[path.encode()] = page

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
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _ = self.listener.accept()
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                    return
                raise
            if len(self._clients) >= MAX_CLIENTS:
                self._drop(next(iter(self._clients)))  # the oldest: dicts keep their order
            sock.setblocking(False)
            self._clients[sock.fileno()] = (sock, bytearray(), time.monotonic())

    def _answer(self, fd: int, request: bytes) -> None:
        sock = self._clients[fd][0]
        line = request.split(b"\r\n", 1)[0].split()
        path = line[1].split(b"?")[0] if len(line) >= 2 and line[0] == b"GET" else b""
        if path == b"/metrics":
            status, body = "200 OK", self._body().encode()
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        elif path in self._pages:
            code, text = self._pages[path]()
            status, body, ctype = _STATUS[code], text.encode(), "text/plain; charset=utf-8"
        else:
            pages = ", ".join(["/metrics", *(p.decode() for p in self._pages)])
            status, body, ctype = "404 Not Found", f"try {pages}\n".encode(), "text/plain"
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
