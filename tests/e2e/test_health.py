"""/healthz and /readyz on the [stats] prometheus listener: /healthz is 200 whenever the
supervisor answers; /readyz is 200 only while the generation in force has every worker
accepting, and 503 before the first generation is up, while a reload brings its new
generation up, and once a stop has begun.

To hold the relay in those states without a test hook, the test gives the relay a
one-page pipe as its stdout and stderr and fills it: a TLS worker logs a line before it
reports ready (whether kernel TLS is available), so it blocks there, not ready, until
the test drains the pipe; the supervisor writes nothing while it waits for its workers,
and keeps answering HTTP. The notification socket (tests/support/notify.py) says when
a reload or a stop has begun.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Self

import pytest
from control import Session
from support.notify import NotifySocket
from support.relay import relay_config, relay_process, with_session_io
from support.servers import EchoServer, tls_server_context

from relaycore.lab.base import HOST, free_port, wait_for
from relaycore.lab.pki import make_server_pki

pytestmark = pytest.mark.slow

TIMEOUT = 20.0
F_SETPIPE_SZ = 1031  # linux/fcntl.h
PAGE = 4096


def get(port: int, path: str) -> tuple[int, str]:
    """GET path from 127.0.0.1:port: the status code and the body."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


class HeldOutput:
    """A one-page pipe for the relay's stdout and stderr. hold() fills it, so that the
    relay's next write blocks; release() reads what is there (and lets the relay go on)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        fcntl.fcntl(self.w, F_SETPIPE_SZ, PAGE)
        os.set_blocking(self.r, False)
        # The filler writes through its own open file description, non-blocking; the
        # relay's stays blocking (O_NONBLOCK belongs to the description, not the pipe).
        self.filler = os.open(f"/proc/self/fd/{self.w}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.text = bytearray()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self.r, self.w, self.filler):
            if fd >= 0:
                os.close(fd)

    def hold(self) -> None:
        size = PAGE
        while size:
            try:
                os.write(self.filler, b"\0" * size)
            except BlockingIOError:
                size //= 4  # fill the page to its last byte
        assert self._free() == 0

    def release(self) -> None:
        while True:
            try:
                chunk = os.read(self.r, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.text += chunk.replace(b"\0", b"")

    def lines(self) -> str:
        self.release()
        return self.text.decode(errors="replace")

    def _free(self) -> int:
        try:
            os.write(self.filler, b"\0")
        except BlockingIOError:
            return 0
        return 1


def until(systemd: NotifySocket, key: str, out: HeldOutput) -> dict[str, str]:
    """The next notification setting `key`, reading the relay's output meanwhile."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        out.release()
        try:
            message = systemd.next(0.05)
        except TimeoutError:
            continue
        if key in message:
            return message
    raise TimeoutError(f"no {key} notification; output:\n{out.lines()}")


def test_readyz_is_503_before_ready_during_a_reload_and_once_stopping(tmp_path, monkeypatch):
    pki = make_server_pki(tmp_path / "pki", "localhost")
    metrics, port = free_port(), free_port()
    upstream_tls = tls_server_context(pki.cert, pki.key)
    with (
        EchoServer(tls=upstream_tls) as upstream,
        NotifySocket(tmp_path / "notify.sock") as systemd,
        HeldOutput() as out,
    ):
        monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
        config = tmp_path / "relay.toml"
        config.write_text(
            with_session_io(
                f'[relay]\nworkers = 2\nrun_dir = "{tmp_path / "run"}"\n'
                f'[stats]\ninterval_s = 0.2\nprometheus = "{HOST}:{metrics}"\n'
                f'[[connector]]\nname = "api"\nlisten = "{HOST}:{port}"\n'
                f'upstream = "localhost:{upstream.port}"\nca = "{pki.ca}"\n'
            )
        )
        out.hold()
        proc = subprocess.Popen(
            [sys.executable, "-m", "relaycore", "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out.w,
            stderr=out.w,
            start_new_session=True,
        )
        try:
            # Starting: both workers are stuck on their first line, the supervisor answers.
            wait_for(lambda: _listening(metrics), TIMEOUT, "the metrics listener")
            assert get(metrics, "/healthz")[0] == 200
            assert get(metrics, "/readyz") == (503, "not ready: starting\n")
            assert systemd.messages == []
            until(systemd, "READY", out)
            assert get(metrics, "/readyz") == (200, "ready: generation 1, 2 workers\n")

            # Reloading: the new generation is stuck the same way; the old one serves.
            out.hold()
            proc.send_signal(signal.SIGHUP)
            systemd.wait_for("RELOADING", TIMEOUT)
            status, body = get(metrics, "/readyz")
            assert (status, body) == (
                503,
                "not ready: reloading: the new generation is not serving yet\n",
            )
            assert get(metrics, "/healthz")[0] == 200
            until(systemd, "READY", out)
            assert get(metrics, "/readyz") == (200, "ready: generation 2, 2 workers\n")

            # Stopping: a device keeps a worker draining; not ready, still alive.
            session = Session(port)
            try:
                assert session.ask(b"ping\n", 5) == b"ping\n"
                proc.send_signal(signal.SIGTERM)
                until(systemd, "STOPPING", out)
                assert get(metrics, "/readyz") == (503, "not ready: stopping\n")
                assert get(metrics, "/healthz")[0] == 200
            finally:
                session.close()
            deadline = time.monotonic() + TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                out.release()
                try:
                    proc.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass
            assert proc.returncode == 0, out.lines()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        assert "ready generation=2" in out.lines()


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def test_other_paths_are_404_and_name_the_health_pages(tmp_path):
    metrics, port = free_port(), free_port()
    with EchoServer() as echo:
        config = relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port)
        config += f'\n[stats]\nprometheus = "{HOST}:{metrics}"\n'
        with relay_process(config, tmp_path):
            assert get(metrics, "/nope") == (404, "try /metrics, /healthz, /readyz\n")
            assert get(metrics, "/readyz?verbose=1") == (200, "ready: generation 1, 1 workers\n")
            assert get(metrics, "/healthz")[1].startswith("alive: pid ")
