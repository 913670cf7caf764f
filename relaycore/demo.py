"""`relaycore demo`: the TLS connector at work, between simulated devices and an HTTPS server.

Everything stays on 127.0.0.1. The demo makes a throwaway CA and a certificate for
`localhost` with the openssl command line, starts an HTTPS server with that certificate
(it stands in for a customer's server and records what it receives), and writes a config
whose one connector accepts plain TCP and speaks verified TLS to that server
(`server_name = "localhost"`, `ca` = the throwaway CA). It runs `relaycore run -c` on that
config as a child process: the same foreground command an operator runs. Once the relay
logs `ready generation=1`, a few simulated devices send plain-HTTP telemetry through it,
some requests on kept-alive connections and some on new connections (whose TLS legs the
relay resumes with the server's session tickets). The demo prints what each device saw
and what the server received: SNI, TLS version and cipher, resumed handshakes, a request.
Then the relay stays up for the user to try with curl, until Ctrl-C or `--duration`.

The child runs in its own session so that a Ctrl-C reaches only the demo, which then stops
the relay the way an operator would (SIGTERM: drain, exit 0) and can tell a clean stop
from a failed one. On every way out (success, failure, Ctrl-C, SIGTERM, SIGHUP) the relay,
its workers, the HTTPS server and the temp dir go with the demo. `RelayProcess` is also
what bench/ uses to run the relay under measurement.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import IO, Any

from relaycore._demo_pki import DemoPki, make_demo_pki
from relaycore.errors import EXIT_OK, RelayError, StartupError

HOST = "127.0.0.1"
SERVER_NAME = "localhost"
READY_MARK = "ready generation="
START_TIMEOUT_S = 30.0
DEVICE_TIMEOUT_S = 10.0
# Short, so that Ctrl-C returns quickly even with a user's keep-alive connection open.
DRAIN_TIMEOUT_S = 2
EXIT_INTERRUPTED = 130
MAX_BODY = 1 << 20

# The embedded default: one TLS connector, on free loopback ports, trusting the demo's CA.
DEFAULT_CONFIG = """\
# Written by `relaycore demo`; removed when the demo exits.
[relay]
workers = {workers}
run_dir = {run_dir}
drain_timeout_s = {drain_timeout_s}

[timeouts]
connect_s = 10
handshake_s = 10
idle_s = 900

# Devices speak plain TCP (here HTTP) to `listen`. The relay speaks TLS to `upstream` and
# checks the server's certificate against `ca` and the name `server_name` (also the SNI).
[[connector]]
name = "demo-api"
listen = "{listen}"
upstream = "{upstream}"
server_name = {server_name}
ca = {ca}
"""


def render_config(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    ca: Path,
    run_dir: Path,
    *,
    server_name: str = SERVER_NAME,
    workers: int = 2,
) -> str:
    """The demo's config text: one TLS connector from `listen` to `upstream`."""
    return DEFAULT_CONFIG.format(
        workers=workers,
        # A JSON string is a valid TOML basic string for any path.
        run_dir=json.dumps(str(run_dir)),
        drain_timeout_s=DRAIN_TIMEOUT_S,
        listen=f"{listen[0]}:{listen[1]}",
        upstream=f"{upstream[0]}:{upstream[1]}",
        server_name=json.dumps(server_name),
        ca=json.dumps(str(ca)),
    )


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the relay binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class RelayProcess:
    """One `relaycore run -c CONFIG` child, in its own session and process group.

    A thread reads its stderr (log lines) so the pipe never fills, keeps the last lines
    for error messages, passes each line to `on_line` when set, and notes the ready line.
    """

    def __init__(self, config: Path, *, log_level: str = "info") -> None:
        self.config = config
        self.log_level = log_level
        self.on_line: Callable[[str], None] | None = None
        self.ready_line = ""
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self._cond = threading.Condition()
        self._eof = False
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def command(self) -> list[str]:
        # --log-level is an option of `relaycore` itself, so it comes before `run`.
        return [
            sys.executable,
            "-m",
            "relaycore",
            "--log-level",
            self.log_level,
            "run",
            "-c",
            str(self.config),
        ]

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def tail(self, n: int = 10) -> list[str]:
        """The relay's last n log lines."""
        with self._cond:
            return list(self._tail)[-n:]

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )
        assert self._proc.stderr is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stderr,), name="relay-log", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            with self._cond:
                self._tail.append(line)
                if not self.ready_line and READY_MARK in line:
                    self.ready_line = line
                    self._cond.notify_all()
            callback = self.on_line
            if callback is not None:
                callback(line)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_ready(self, timeout: float) -> float:
        """Block until the relay logs its ready line; return the seconds it took.

        Raises StartupError if the relay exits (or closes its stderr) first, or if the
        deadline passes.
        """
        t0 = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: bool(self.ready_line) or self._eof, timeout)
            ready = bool(self.ready_line)
        if ready:
            return time.monotonic() - t0
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=2.0 if self._eof else 0.0)
        except subprocess.TimeoutExpired:
            code = None
        last = self.tail(1)
        detail = f": {last[0].strip()}" if last else ""
        if code is None:
            raise StartupError(
                f"the relay did not log {READY_MARK!r} within {timeout:.0f} s{detail}"
            )
        raise StartupError(f"the relay exited with code {code} before it was ready{detail}")

    def wait(self, timeout: float | None = None) -> int | None:
        """The relay's exit code once it exits, or None if still running after timeout."""
        assert self._proc is not None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float) -> int:
        """SIGTERM (drain), then SIGKILL to the whole group if the relay outlives timeout.

        Returns the supervisor's exit code (negative: killed by that signal). Idempotent.
        """
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            with _suppress_lookup():
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with _suppress_lookup():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except KeyboardInterrupt:
                # A second Ctrl-C while draining: do not make the user wait for it.
                with _suppress_lookup():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        # Workers outliving their supervisor would still be in its group; the group id
        # cannot be reused while any of them lives, so this reaches only ours.
        with _suppress_lookup():
            os.killpg(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        if proc.stderr is not None and (self._reader is None or not self._reader.is_alive()):
            proc.stderr.close()
        return proc.returncode


@contextmanager
def _suppress_lookup() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------
# The HTTPS server: the customer's server stand-in, recording what reaches it.


@dataclass(frozen=True)
class TlsLeg:
    """One TLS connection the server accepted: one upstream leg the relay opened."""

    number: int
    peer: str
    sni: str | None
    version: str
    cipher: str
    resumed: bool


@dataclass(frozen=True)
class Received:
    """One HTTP request as the server read it, on the TLS connection `leg`."""

    leg: TlsLeg
    request_line: str
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "relaycore-demo-upstream/1"
    sys_version = ""
    # Headers and body leave in one write; no Nagle wait between TLS records.
    wbufsize = -1
    disable_nagle_algorithm = True
    timeout = 300
    server: _HttpsServer

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _answer(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "bad Content-Length")
            return
        if length > MAX_BODY:
            self.send_error(413, f"the demo server takes bodies up to {MAX_BODY} bytes")
            return
        body = self.rfile.read(length) if length > 0 else b""
        leg = self.server.upstream.leg_of(self.connection)
        got = Received(
            leg=leg,
            request_line=self.requestline,
            method=self.command,
            path=self.path,
            headers=list(self.headers.items()),
            body=body,
        )
        self.server.upstream.record(got)
        reply = {
            "ok": True,
            "server": "relaycore demo HTTPS server",
            "got": {"method": got.method, "path": got.path, "body_bytes": len(body)},
            "tls": {
                "sni": leg.sni,
                "version": leg.version,
                "cipher": leg.cipher,
                "resumed": leg.resumed,
            },
        }
        data = json.dumps(reply).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo prints what it wants to show itself


class _HttpsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], upstream: HttpsUpstream) -> None:
        self.upstream = upstream
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's would look up the host's FQDN, which can stall on a broken resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        # In the connection's own thread, so a slow handshake never holds up accept().
        self.upstream.serve_connection(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        self.upstream.tell(f"connection from {client_address[0]}:{client_address[1]}: {exc}")


class HttpsUpstream:
    """An HTTPS server on 127.0.0.1 with the demo's certificate, in threads.

    For each TLS connection it notes the SNI (sni_callback), the version, the cipher and
    whether the session was resumed; for each request, the request line, the headers and
    the body. It answers every request with a small JSON body that says what it got.
    """

    def __init__(self, pki: DemoPki, host: str = HOST) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(pki.cert, pki.key)
        self.context.sni_callback = self._on_sni
        self._sni: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
        self._legs_by_sock: weakref.WeakKeyDictionary[Any, TlsLeg] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.legs: list[TlsLeg] = []
        self.requests: list[Received] = []
        self.on_request: Callable[[Received], None] | None = None
        self.on_event: Callable[[str], None] | None = None
        self._open: set[ssl.SSLSocket] = set()
        self._server = _HttpsServer((host, 0), self)
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.2,), name="demo-https", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5.0)
        self._server.server_close()
        with self._lock:
            still_open = list(self._open)
        for sock in still_open:
            sock.close()

    def tell(self, message: str) -> None:
        callback = self.on_event
        if callback is not None:
            callback(message)

    def snapshot(self) -> tuple[list[TlsLeg], list[Received]]:
        with self._lock:
            return list(self.legs), list(self.requests)

    def record(self, got: Received) -> None:
        with self._lock:
            self.requests.append(got)
        callback = self.on_request
        if callback is not None:
            callback(got)

    def leg_of(self, sock: Any) -> TlsLeg:
        return self._legs_by_sock[sock]

    def _on_sni(self, sock: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        self._sni[sock] = server_name

    def serve_connection(self, raw: socket.socket, client_address: Any) -> None:
        peer = f"{client_address[0]}:{client_address[1]}"
        raw.settimeout(DEVICE_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.tell(f"TLS handshake with {peer} failed: {exc}")
            return
        with self._lock:
            cipher = tls.cipher()
            leg = TlsLeg(
                number=len(self.legs) + 1,
                peer=peer,
                sni=self._sni.get(tls),
                version=tls.version() or "?",
                cipher=cipher[0] if cipher else "?",
                resumed=bool(tls.session_reused),
            )
            self.legs.append(leg)
            self._legs_by_sock[tls] = leg
            self._open.add(tls)
        try:
            tls.settimeout(None)  # the handler sets its own
            _Handler(tls, client_address, self._server)
            # The relay sent close_notify when its device closed: answer with ours (the
            # relay would otherwise report a response that may be truncated).
            tls.settimeout(2.0)
            tls.unwrap()
        except (ssl.SSLError, OSError):
            pass
        finally:
            with self._lock:
                self._open.discard(tls)
            tls.close()


# ---------------------------------------------------------------------------------------
# The devices: plain HTTP through the relay.


@dataclass
class DeviceReport:
    """What one simulated device saw."""

    name: str
    connections: int = 0
    requests: int = 0
    ok: int = 0
    resumed: int = 0
    first_full_ms: list[float] = field(default_factory=list)
    first_resumed_ms: list[float] = field(default_factory=list)
    kept_ms: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def first_ms(self) -> list[float]:
        return self.first_full_ms + self.first_resumed_ms


def telemetry(name: str, seq: int, temp_c: float) -> bytes:
    return json.dumps({"device": name, "seq": seq, "temp_c": temp_c}).encode()


def _check_answer(status: int, data: bytes, sent: int) -> dict[str, Any]:
    """The server's JSON answer, or ValueError saying what is wrong with it."""
    text = data.decode(errors="replace").strip()
    if status != 200:
        raise ValueError(f"HTTP {status} from the server: {text[:200]}")
    try:
        answer = json.loads(text)
        got = answer["got"]["body_bytes"]
        tls = answer["tls"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not the demo server's JSON answer: {text[:200]!r}") from exc
    if got != sent:
        raise ValueError(f"sent {sent} body bytes, the server got {got}")
    if not isinstance(tls, dict):
        raise ValueError(f"not the demo server's JSON answer: {text[:200]!r}")
    return tls


def run_device(index: int, relay: tuple[str, int], connections: int, requests: int) -> DeviceReport:
    """One device: `connections` connections to the relay, one after the other, each
    with `requests` POST /telemetry on it (HTTP/1.1 keep-alive), each answer checked."""
    report = DeviceReport(f"dev-{index}")
    temps = random.Random(index)
    temp = 19.0 + index
    seq = 0
    try:
        for _ in range(connections):
            conn = http.client.HTTPConnection(relay[0], relay[1], timeout=DEVICE_TIMEOUT_S)
            report.connections += 1
            try:
                for r in range(requests):
                    temp = round(temp + temps.uniform(-0.3, 0.3), 1)
                    body = telemetry(report.name, seq, temp)
                    seq += 1
                    t0 = time.perf_counter()
                    # The first request also connects: relay connect + TLS handshake.
                    conn.request("POST", "/telemetry", body, {"Content-Type": "application/json"})
                    report.requests += 1
                    response = conn.getresponse()
                    data = response.read()
                    ms = (time.perf_counter() - t0) * 1000.0
                    tls = _check_answer(response.status, data, len(body))
                    if r > 0:
                        report.kept_ms.append(ms)
                    elif tls.get("resumed"):
                        report.resumed += 1
                        report.first_resumed_ms.append(ms)
                    else:
                        report.first_full_ms.append(ms)
                    report.ok += 1
            finally:
                conn.close()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        report.error = f"request {report.requests}: {what or type(exc).__name__}"
    return report


def _avg(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "-"


def _format_reports(reports: list[DeviceReport]) -> list[str]:
    widths = (8, 7, 10, 5, 10, 17, 17)
    head = ("device", "conns", "requests", "ok", "resumed", "1st request ms", "kept-alive ms")

    def line(cells: tuple[str, ...]) -> str:
        first = f"  {cells[0]:<{widths[0]}}"
        return first + "".join(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))

    def row(r: DeviceReport) -> str:
        resumed = f"{r.resumed}/{len(r.first_ms)}"
        cells = (r.name, str(r.connections), str(r.requests), str(r.ok), resumed)
        return line((*cells, _avg(r.first_ms), _avg(r.kept_ms)))

    total = DeviceReport(
        "total",
        connections=sum(r.connections for r in reports),
        requests=sum(r.requests for r in reports),
        ok=sum(r.ok for r in reports),
        resumed=sum(r.resumed for r in reports),
        first_full_ms=[t for r in reports for t in r.first_full_ms],
        first_resumed_ms=[t for r in reports for t in r.first_resumed_ms],
        kept_ms=[t for r in reports for t in r.kept_ms],
    )
    return [line(head), *(row(r) for r in reports), row(total)]


def drive_devices(
    relay: tuple[str, int], devices: int, connections: int, requests: int
) -> list[DeviceReport]:
    """All devices at once, one thread each; raises RelayError if any answer was wrong."""
    reports: list[DeviceReport | None] = [None] * devices

    def one(i: int) -> None:
        reports[i] = run_device(i + 1, relay, connections, requests)

    threads = [
        threading.Thread(target=one, args=(i,), name=f"dev-{i + 1}", daemon=True)
        for i in range(devices)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEVICE_TIMEOUT_S + connections * requests * 0.1
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    done = [r for r in reports if r is not None]
    if len(done) < devices:
        raise RelayError(f"{devices - len(done)} device(s) still waiting for answers at deadline")
    for line in _format_reports(done):
        _say(line)
    failed = [r for r in done if r.error]
    if failed:
        raise RelayError(f"{failed[0].name}: {failed[0].error}")
    return done


def _explain_columns() -> None:
    _say("  resumed         connections whose TLS leg, relay to server, resumed a session")
    _say("  1st request ms  the relay first connects to the server and does the TLS handshake")
    _say("  kept-alive ms   later requests on the same connection: they only cross the relay")
    _say("  (times include this demo's own Python devices and server, in one process)")


def _describe_received(upstream: HttpsUpstream) -> None:
    legs, got = upstream.snapshot()
    resumed = sum(1 for leg in legs if leg.resumed)
    peers = sorted({leg.peer.rsplit(":", 1)[0] for leg in legs})
    host, port = upstream.address
    _say(f"What the HTTPS server on {host}:{port} received (from the relay, not the devices):")
    _say(
        f"  TLS connections  {len(legs)} from {', '.join(peers) or '-'},"
        f" {resumed} of them resumed with a session ticket"
    )
    snis = collections.Counter(leg.sni or "(none)" for leg in legs)
    _say("  SNI              " + ", ".join(f"{n} on {c}" for n, c in snis.most_common()))
    suites = collections.Counter(f"{leg.version} {leg.cipher}" for leg in legs)
    _say("  TLS              " + ", ".join(f"{s} on {c}" for s, c in suites.most_common()))
    lines = collections.Counter(f"{r.method} {r.path}" for r in got)
    _say(
        f"  requests         {len(got)}: "
        + ", ".join(f"{c} x {what}" for what, c in lines.most_common())
    )
    if got:
        sample = got[0]
        _say(f"  a request as the server read it (TLS connection {sample.leg.number}):")
        _say(f"    {sample.request_line}")
        for name, value in sample.headers:
            _say(f"    {name}: {value}")
        _say("    ")
        _say(f"    {sample.body.decode(errors='replace')}")
    _say("  The bytes are the device's own (its Host header names the relay); the TLS,")
    _say("  the SNI and the check of the server's certificate are the relay's.")
    full = len(legs) - resumed
    if full and resumed:
        _say(f"  The {full} full handshakes are the relay's first connections: each worker")
        _say("  keeps its own sessions, and had none from the server yet.")


def _relay_explains(relay: RelayProcess, wait_s: float = 1.5) -> str:
    """The relay's latest warning, as '; the relay logged: ...', or ''. The relay logs a
    failed connection within a tick of it, so this waits up to `wait_s` for one."""
    deadline = time.monotonic() + wait_s
    while True:
        for line in reversed(relay.tail(20)):
            for level in (" ERROR ", " WARNING "):
                if level in line:
                    return f"; the relay logged: {line.split(level, 1)[1].strip()}"
        if time.monotonic() >= deadline:
            return ""
        time.sleep(0.1)


def _show_request(got: Received) -> None:
    leg = got.leg
    body = got.body.decode(errors="replace")
    if len(body) > 60:
        body = body[:57] + "..."
    host = dict((k.lower(), v) for k, v in got.headers).get("host", "-")
    resumed = "resumed" if leg.resumed else "full handshake"
    _say(
        f"  server | {got.request_line} (Host {host}) on TLS connection {leg.number}:"
        f" SNI {leg.sni or '(none)'}, {leg.version} {leg.cipher}, {resumed}"
        + (f", body {body}" if body else "")
    )


_say_lock = threading.Lock()


def _say(line: str = "") -> None:
    # Device, server and relay-log threads print too: one whole line at a time.
    with _say_lock:
        print(line, flush=True)


# The signal that is stopping the demo, when it is not Ctrl-C.
_stop_signal: list[str] = []


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # SIGTERM or SIGHUP: stop exactly as on Ctrl-C.
    _stop_signal.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


DESCRIPTION = (
    "Run the relay on its embedded default config: one TLS connector from a local port to a"
    " local HTTPS server whose certificate comes from a throwaway CA. Simulated devices send"
    " plain HTTP through it; the demo shows what they got back and what the server"
    " received (SNI, TLS version and cipher, resumed sessions, the requests)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `relaycore demo`."""
    parser.description = DESCRIPTION
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="keep the relay up this long after the device traffic, then exit 0 "
        "(default: until Ctrl-C; 0 exits right after the traffic)",
    )
    parser.add_argument(
        "--devices", type=int, default=5, metavar="N", help="simulated devices (default 5)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=3,
        metavar="N",
        help="connections each device opens to the relay, one after the other (default 3)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=2,
        metavar="N",
        help="POST /telemetry requests on each connection, kept alive (default 2)",
    )
    parser.add_argument(
        "--relay-log",
        action="store_true",
        help="show every relay log line (default: only after the device traffic)",
    )


def run(args: argparse.Namespace) -> int:
    """`relaycore demo`: returns the exit code."""
    duration: float | None = args.duration
    if duration is not None and not 0 <= duration < float("inf"):
        print("relaycore: error: --duration must be a number >= 0", file=sys.stderr)
        return 2
    for name, most in (("devices", 200), ("connections", 1000), ("requests", 1000)):
        if not 1 <= getattr(args, name) <= most:
            print(f"relaycore: error: --{name} must be 1..{most}", file=sys.stderr)
            return 2
    _stop_signal.clear()
    in_main = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, Any] = {}
    if in_main:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _raise_stop)
    try:
        with ExitStack() as stack:
            return _run(args, duration, stack)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(args: argparse.Namespace, duration: float | None, stack: ExitStack) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="relaycore-demo-"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    config = tmp / "relay.toml"
    relay = RelayProcess(config)
    waiting = False

    def stop_relay() -> None:
        _say(
            f"stopping the relay (SIGTERM: stop accepting, drain open connections"
            f" for up to {DRAIN_TIMEOUT_S} s, exit) ..."
        )
        code = relay.stop(timeout=DRAIN_TIMEOUT_S + 10)
        if code != 0:
            raise RelayError(f"the relay exited with code {code} on SIGTERM, not 0")
        _say("relay stopped cleanly (exit code 0).")

    def log_line(line: str) -> None:
        _say(f"  relay  | {line}")

    try:
        _say("relaycore demo: simulated devices speak plain HTTP to the relay, and the relay")
        _say("speaks verified TLS to an HTTPS server. Everything runs on 127.0.0.1.")
        _say()
        pki = make_demo_pki(tmp / "pki", SERVER_NAME)
        _say(f"CA        a throwaway CA, made with openssl: {pki.ca}")
        upstream = HttpsUpstream(pki)
        stack.callback(upstream.close)
        upstream.start()
        host, port = upstream.address
        _say(
            f"upstream  HTTPS server on {host}:{port} (your server's stand-in), certificate"
            f" for {SERVER_NAME!r} from that CA"
        )
        listen = (HOST, free_port())
        config.write_text(render_config(listen, upstream.address, pki.ca, tmp / "run"))
        _say(f"config    {config}:")
        for line in config.read_text().splitlines():
            _say(f"            {line}")
        _say(f"relay     python -m {' '.join(relay.command[2:])}")
        if args.relay_log:
            relay.on_line = log_line
        relay.start()
        stack.callback(relay.stop, DRAIN_TIMEOUT_S + 10)
        took = relay.wait_ready(START_TIMEOUT_S)
        ready = relay.ready_line[relay.ready_line.index(READY_MARK) :].strip()
        _say(f"          ready after {took:.2f} s: {ready}")
        _say()
        _say(
            f"{args.devices} devices, each opening {args.connections} connection(s) to the relay"
            f" on {listen[0]}:{listen[1]},"
        )
        _say(f"one after the other, and sending {args.requests} request(s) on each:")
        _say(f"  POST /telemetry  {telemetry('dev-1', 0, 20.1).decode()}")
        _say()
        try:
            reports = drive_devices(listen, args.devices, args.connections, args.requests)
        except RelayError as err:
            raise RelayError(f"{err}{_relay_explains(relay)}") from err
        total = sum(r.ok for r in reports)
        _say()
        _explain_columns()
        _say()
        _say(f"All {total} requests were answered 200 by the HTTPS server through the relay.")
        _say()
        _describe_received(upstream)
        _say()
        relay.on_line = log_line
        upstream.on_request = _show_request
        upstream.on_event = lambda message: _say(f"  server | {message}")
        _say("The relay keeps running. Try it yourself (plain HTTP to the relay; it speaks")
        _say("HTTPS to the server, which answers with what it got, in JSON):")
        _say(f"  curl http://{listen[0]}:{listen[1]}/hello")
        _say(f"  curl -d '{{\"temp_c\": 21.5}}' http://{listen[0]}:{listen[1]}/telemetry")
        if shutil.which("curl") is None:
            _say("  (curl is in the Debian package curl)")
        _say('Each request that reaches the server is shown as "server |".')
        waiting = True
        if duration is None:
            _say("Press Ctrl-C to stop.")
            code = relay.wait()
        else:
            _say(f"Stopping in {duration:g} s (--duration); Ctrl-C stops sooner.")
            code = relay.wait(timeout=duration)
        if code is not None:
            raise RelayError(f"the relay exited on its own with code {code}")
        stop_relay()
        return EXIT_OK
    except KeyboardInterrupt:
        how = _stop_signal[-1] if _stop_signal else "Ctrl-C"
        _say()
        _say(f"{how} received.")
        try:
            stop_relay()
        except RelayError as err:
            return _fail(err, relay)
        return EXIT_OK if waiting else EXIT_INTERRUPTED
    except RelayError as err:
        return _fail(err, relay)


def _fail(err: RelayError, relay: RelayProcess) -> int:
    tail = relay.tail()
    if tail and relay.on_line is None:
        print("last relay log lines:", file=sys.stderr)
        for line in tail:
            print(f"  relay | {line}", file=sys.stderr)
    print(f"relaycore: error: {err}", file=sys.stderr)
    return err.exit_code
