"""`relaycore demo`: the relay on its embedded default config, with devices to talk to.

Everything stays on 127.0.0.1. The demo starts an echo server that stands in for a
customer's server, writes a config whose one connector relays a free port to it, and runs
`relaycore run -c` on that config as a child process: the same foreground command an
operator runs. Once the relay logs `ready generation=1`, a few simulated devices push JSON
telemetry lines through it, each checking that every line comes back byte for byte. Then
the relay stays up for the user to try with nc, until Ctrl-C or `--duration` seconds.

The child runs in its own session so that a Ctrl-C reaches only the demo, which then stops
the relay the way an operator would (SIGTERM: drain, exit 0) and can tell a clean stop
from a failed one. On every way out (success, failure, Ctrl-C, SIGTERM, SIGHUP) the relay,
its workers and the temp dir go with the demo. `RelayProcess` is also what bench/ uses to
run the relay under measurement.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from relaycore.errors import EXIT_OK, RelayError, StartupError

HOST = "127.0.0.1"
READY_MARK = "ready generation="
START_TIMEOUT_S = 30.0
DEVICE_TIMEOUT_S = 10.0
# Short, so that Ctrl-C returns quickly even with a user's nc session still open.
DRAIN_TIMEOUT_S = 5
EXIT_INTERRUPTED = 130

# The embedded default: the documented example config, on free loopback ports.
DEFAULT_CONFIG = """\
# Written by `relaycore demo`; removed when the demo exits.
[relay]
workers = {workers}
run_dir = {run_dir}
splice = "auto"
max_connections = 10000
drain_timeout_s = {drain_timeout_s}

[timeouts]
connect_s = 10
idle_s = 900

[[connector]]
name = "demo"
listen = "{listen}"
upstream = "{upstream}"
tls = false
"""


def render_config(
    listen: tuple[str, int], upstream: tuple[str, int], run_dir: Path, workers: int = 2
) -> str:
    """The demo's config text: one plain connector from `listen` to `upstream`."""
    return DEFAULT_CONFIG.format(
        workers=workers,
        # A JSON string is a valid TOML basic string for any path.
        run_dir=json.dumps(str(run_dir)),
        drain_timeout_s=DRAIN_TIMEOUT_S,
        listen=f"{listen[0]}:{listen[1]}",
        upstream=f"{upstream[0]}:{upstream[1]}",
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


@dataclass(eq=False)
class _EchoConn:
    sock: socket.socket
    peer: str
    out: bytearray = field(default_factory=bytearray)
    echoed: int = 0
    eof: bool = False


class EchoServer:
    """The upstream stand-in: echoes every byte back. One selectors loop in a thread.

    It reads a connection only while it has nothing left to write back to it, so a client
    that stops reading holds at most one recv of memory here.
    """

    def __init__(self, host: str = HOST) -> None:
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._conns: set[_EchoConn] = set()
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="demo-echo", daemon=True)
        self.on_event: Callable[[str], None] | None = None

    def start(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join(timeout=5.0)
        for conn in list(self._conns):
            conn.sock.close()
        self._conns.clear()
        self._sel.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection is open; False if some still are after timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._conns, timeout)

    def _tell(self, message: str) -> None:
        callback = self.on_event
        if callback is not None:
            callback(message)

    def _serve(self) -> None:
        while True:
            for key, events in self._sel.select():
                if key.data == "wake":
                    return
                if key.data is None:
                    self._accept()
                else:
                    assert isinstance(key.data, _EchoConn)
                    self._service(key.data, events)

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _EchoConn(sock, f"{addr[0]}:{addr[1]}")
        with self._idle:
            self._conns.add(conn)
        self._sel.register(sock, selectors.EVENT_READ, conn)
        self._tell(f"connection from {conn.peer} (the relay's upstream leg)")

    def _service(self, conn: _EchoConn, events: int) -> None:
        try:
            if events & selectors.EVENT_READ and not conn.out:
                data = conn.sock.recv(65536)
                if data:
                    conn.out += data
                else:
                    conn.eof = True
            if conn.out:
                n = conn.sock.send(conn.out)
                del conn.out[:n]
                conn.echoed += n
        except BlockingIOError:
            pass
        except OSError as exc:
            self._drop(conn, f"ended ({exc.strerror or exc})")
            return
        if conn.eof and not conn.out:
            self._drop(conn, "closed")
            return
        self._sel.modify(
            conn.sock, selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ, conn
        )

    def _drop(self, conn: _EchoConn, why: str) -> None:
        self._sel.unregister(conn.sock)
        conn.sock.close()
        with self._idle:
            self._conns.discard(conn)
            self._idle.notify_all()
        self._tell(f"connection from {conn.peer} {why} after echoing {conn.echoed:,} bytes")


@dataclass
class DeviceReport:
    """What one simulated device saw."""

    name: str
    sent: int = 0
    echoed: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    error: str | None = None


def run_device(index: int, relay: tuple[str, int], messages: int) -> DeviceReport:
    """One device: a connection to the relay, `messages` telemetry lines, each echo checked."""
    report = DeviceReport(f"dev-{index}")
    temps = random.Random(index)
    temp = 19.0 + index
    try:
        with socket.create_connection(relay, timeout=DEVICE_TIMEOUT_S) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with sock.makefile("rb") as reader:
                for seq in range(messages):
                    temp = round(temp + temps.uniform(-0.3, 0.3), 1)
                    line = json.dumps({"device": report.name, "seq": seq, "temp_c": temp})
                    payload = line.encode() + b"\n"
                    t0 = time.perf_counter()
                    sock.sendall(payload)
                    report.sent += 1
                    report.bytes_out += len(payload)
                    echo = reader.readline()
                    report.rtts_ms.append((time.perf_counter() - t0) * 1000.0)
                    report.bytes_in += len(echo)
                    if echo != payload:
                        got = echo.decode(errors="replace").rstrip("\n") or "EOF"
                        report.error = f"seq {seq}: sent {line}, got back {got}"
                        break
                    report.echoed += 1
    except OSError as exc:
        report.error = f"after {report.sent} messages: {exc.strerror or exc}"
    return report


def _format_reports(reports: list[DeviceReport]) -> list[str]:
    head = (
        f"  {'device':<8}{'sent':>6}{'echoed':>8}{'bytes out':>11}{'bytes in':>10}"
        f"{'round trip ms: min':>21}{'avg':>7}{'max':>7}"
    )
    rows = [head]

    def row(name: str, sent: int, echoed: int, out: int, inn: int, rtts: list[float]) -> str:
        if rtts:
            lo, avg, hi = min(rtts), sum(rtts) / len(rtts), max(rtts)
            times = f"{lo:>21.2f}{avg:>7.2f}{hi:>7.2f}"
        else:
            times = f"{'-':>21}{'-':>7}{'-':>7}"
        return f"  {name:<8}{sent:>6}{echoed:>8}{out:>11,}{inn:>10,}{times}"

    rows.extend(row(r.name, r.sent, r.echoed, r.bytes_out, r.bytes_in, r.rtts_ms) for r in reports)
    rows.append(
        row(
            "total",
            sum(r.sent for r in reports),
            sum(r.echoed for r in reports),
            sum(r.bytes_out for r in reports),
            sum(r.bytes_in for r in reports),
            [t for r in reports for t in r.rtts_ms],
        )
    )
    return rows


def drive_devices(relay: tuple[str, int], devices: int, messages: int) -> list[DeviceReport]:
    """All devices at once, one thread each; raises RelayError if any echo was wrong."""
    reports: list[DeviceReport | None] = [None] * devices

    def one(i: int) -> None:
        reports[i] = run_device(i + 1, relay, messages)

    threads = [
        threading.Thread(target=one, args=(i,), name=f"dev-{i + 1}", daemon=True)
        for i in range(devices)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEVICE_TIMEOUT_S + messages * 0.1
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    done = [r for r in reports if r is not None]
    if len(done) < devices:
        raise RelayError(f"{devices - len(done)} device(s) still waiting for echoes at deadline")
    for line in _format_reports(done):
        _say(line)
    failed = [r for r in done if r.error]
    if failed:
        raise RelayError(f"{failed[0].name}: {failed[0].error}")
    return done


_say_lock = threading.Lock()


def _say(line: str = "") -> None:
    # Device, echo and relay-log threads print too: one whole line at a time.
    with _say_lock:
        print(line, flush=True)


# The signal that is stopping the demo, when it is not Ctrl-C.
_stop_signal: list[str] = []


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # SIGTERM or SIGHUP: stop exactly as on Ctrl-C.
    _stop_signal.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `relaycore demo`."""
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
        "--messages",
        type=int,
        default=20,
        metavar="N",
        help="telemetry lines each device sends (default 20)",
    )
    parser.add_argument(
        "--relay-log",
        action="store_true",
        help="show every relay log line (default: only after the device traffic)",
    )


def run(args: argparse.Namespace) -> int:
    """`relaycore demo`: returns the exit code."""
    duration: float | None = args.duration
    if duration is not None and duration < 0:
        print("relaycore: error: --duration must be >= 0", file=sys.stderr)
        return 2
    if args.devices < 1 or args.messages < 1:
        print("relaycore: error: --devices and --messages must be >= 1", file=sys.stderr)
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
    echo = EchoServer()
    stack.callback(echo.close)
    echo.start()
    listen = (HOST, free_port())
    config = tmp / "relay.toml"
    config.write_text(render_config(listen, echo.address, tmp / "run"))
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
        _say(f"  relay | {line}")

    _say("relaycore demo: a relay between simulated devices and an echo server, on 127.0.0.1")
    _say()
    _say(f"upstream  echo server on {echo.address[0]}:{echo.address[1]} (your server's stand-in)")
    _say(f"config    {config}:")
    for line in config.read_text().splitlines():
        _say(f"            {line}")
    _say(f"relay     python -m {' '.join(relay.command[2:])}")
    try:
        if args.relay_log:
            relay.on_line = log_line
        relay.start()
        stack.callback(relay.stop, DRAIN_TIMEOUT_S + 10)
        took = relay.wait_ready(START_TIMEOUT_S)
        ready = relay.ready_line[relay.ready_line.index(READY_MARK) :].strip()
        _say(f"          ready after {took:.2f} s: {ready}")
        _say()
        _say(
            f"{args.devices} devices, each sending {args.messages} JSON telemetry lines "
            f"to {listen[0]}:{listen[1]} and reading each echo:"
        )
        sample = json.dumps({"device": "dev-1", "seq": 0, "temp_c": 21.4})
        _say(f"  e.g. {sample}")
        _say()
        reports = drive_devices(listen, args.devices, args.messages)
        total = sum(r.echoed for r in reports)
        _say()
        _say(f"All {total} messages came back byte for byte through the relay.")
        _say()
        # The upstream legs close a moment after the devices' legs; let them, so that
        # what is printed from now on is about the user's own connections.
        echo.wait_idle(timeout=5.0)
        relay.on_line = log_line
        echo.on_event = lambda message: _say(f"  echo  | {message}")
        _say(f"The relay keeps running. Try it yourself: nc {listen[0]} {listen[1]}")
        _say("  (type a line and press Enter: it comes back through the relay)")
        if shutil.which("nc") is None:
            _say("  (nc is in the Debian package netcat-openbsd)")
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
