"""Helpers for the control-plane tests: the CLI as a subprocess, configs with a [stats]
table and more connectors, a wait for a log line, refused connects, a tagged echo upstream.

Everything talks to 127.0.0.1 only, and every wait has a deadline.
"""

from __future__ import annotations

import collections
import errno
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.servers import RECV_SIZE, ConnRecord, EchoServer
from support.tlsconn import TLSConn

from relaycore.lab.base import HOST
from relaycore.lab.relay import RelayProcess

CLI_TIMEOUT = 30.0


# -- the CLI -------------------------------------------------------------------------------


def relaycore(
    *args: str, timeout: float = CLI_TIMEOUT, wrapper: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`python -m relaycore ARGS` as a user runs it: its output and exit code. `wrapper`:
    a command that execs the rest of its arguments (see own_names)."""
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "relaycore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def own_names(directory: Path, hosts: str = "") -> list[str]:
    """A command prefix that runs the rest in a private mount namespace whose /etc/hosts
    is `hosts` and whose name service is that file alone: names resolve as the test says,
    a name not in it fails at once without a DNS query, and no other process sees it."""
    (directory / "hosts").write_text(hosts)
    (directory / "nsswitch.conf").write_text("hosts: files\n")
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/nsswitch.conf && shift'
        ' && exec "$@"',
        str(directory / "hosts"),
        str(directory / "nsswitch.conf"),
    ]


def cli_json(*args: str) -> Any:
    """The one JSON object a `--json` command printed (it must exit 0)."""
    out = relaycore(*args, "--json")
    assert out.returncode == 0, (args, out.returncode, out.stderr)
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout
    return json.loads(lines[0])


def cli_json_lines(*args: str) -> list[Any]:
    out = relaycore(*args, "--json")
    assert out.returncode == 0, (args, out.returncode, out.stderr)
    return [json.loads(line) for line in out.stdout.splitlines()]


def connector(report: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in report["connectors"] if c["name"] == name]
    assert len(found) == 1, report
    return found[0]


class LineReader:
    """The stdout of a long-running command (`stats --follow`, `logs --follow`), line by
    line, read by a thread so that the test can wait for a line with a deadline."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relaycore", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: collections.deque[str] = collections.deque()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, name="cli-follow", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def next_line(self, timeout: float) -> str | None:
        """The next line, or None if none came within `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._lines), timeout):
                return None
            return self._lines.popleft()

    def stop(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> tuple[int, str]:
        """Signal the command (SIGINT: what Ctrl-C sends), wait for it; its exit code and
        stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        finally:
            self._thread.join(5)
            assert self.proc.stdout is not None
            assert self.proc.stderr is not None
            stderr = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()
        return code, stderr


# -- configs -------------------------------------------------------------------------------


def with_stats(config: str, **keys: float | str) -> str:
    """`config` (relay_config's TOML) plus a [stats] table with these keys."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return config + "\n[stats]\n" + "\n".join(lines) + "\n"


def with_connector(config: str, name: str, listen_port: int, upstream_port: int) -> str:
    """`config` plus one more plain connector."""
    return (
        config
        + f"""
[[connector]]
name = "{name}"
listen = "{HOST}:{listen_port}"
upstream = "{HOST}:{upstream_port}"
tls = false
"""
    )


# -- waiting -------------------------------------------------------------------------------


def wait_line(relay: RelayProcess, pattern: str, timeout: float = 20.0) -> str:
    """The first output line of the relay matching `pattern` (a regex)."""
    return relay.wait_line(pattern, timeout)


# -- traffic -------------------------------------------------------------------------------


def round_trip(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """One connection through the relay: send payload, half-close, read to EOF."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    return bytes(got)


def refused_once(port: int, timeout: float = 10.0) -> str:
    """One device connection that the relay cannot forward (its upstream refuses): how it
    ended for the device ("reset" or "eof")."""
    try:
        # The RST can beat connect()'s own check of the handshake.
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            data = s.recv(1)
    except ConnectionResetError:
        return "reset"
    assert data == b"", data
    return "eof"


def flood(port: int, count: int, *, concurrency: int = 200, deadline_s: float = 60.0) -> Any:
    """`count` device connections to `port`, `concurrency` at a time, non-blocking from one
    thread; each waits for the relay to end it (RST or EOF) and is closed. Sends nothing.
    Bounded by `count` and `deadline_s`. Returns a Counter of outcomes."""
    outcomes: collections.Counter[str] = collections.Counter()
    sel = selectors.DefaultSelector()
    started = 0
    deadline = time.monotonic() + deadline_s

    def finish(sock: socket.socket, outcome: str, registered: bool = True) -> None:
        if registered:
            sel.unregister(sock)
        sock.close()
        outcomes[outcome] += 1

    try:
        while outcomes.total() < count:
            while started < count and len(sel.get_map()) < concurrency:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                err = sock.connect_ex((HOST, port))
                started += 1
                if err not in (0, errno.EINPROGRESS):
                    finish(sock, errno.errorcode.get(err, str(err)), registered=False)
                    continue
                sel.register(sock, selectors.EVENT_READ)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for key in list(sel.get_map().values()):
                    finish(key.fileobj, "timeout")  # type: ignore[arg-type]
                outcomes["never_started"] += count - started
                break
            for key, _ in sel.select(min(remaining, 0.5)):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    outcome = "eof" if sock.recv(1) == b"" else "data"
                except ConnectionResetError:
                    outcome = "reset"
                except ConnectionRefusedError:
                    outcome = "refused"
                except BlockingIOError:
                    continue
                finish(sock, outcome)
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return outcomes


class TaggedEchoServer(EchoServer):
    """Echo every chunk with `tag` in front, so that a test can tell which upstream
    answered a relayed connection."""

    def __init__(self, tag: bytes, *, host: str = HOST, port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.tag = tag

    def serve(self, conn: socket.socket | TLSConn, record: ConnRecord) -> None:
        while data := conn.recv(RECV_SIZE):
            record.received += len(data)
            self._send_all(conn, record, self.tag + data)
        record.eof = True
        conn.shutdown(socket.SHUT_WR)


class Session:
    """A device connection kept open across something (a reload): line by line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)

    def ask(self, line: bytes, expect_len: int) -> bytes:
        self.sock.sendall(line)
        got = bytearray()
        while len(got) < expect_len:
            chunk = self.sock.recv(65536)
            assert chunk, f"EOF after {bytes(got)!r}"
            got += chunk
        return bytes(got)

    def close(self) -> None:
        self.sock.close()
