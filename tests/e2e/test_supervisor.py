"""The whole relay as a user runs it: supervisor + SO_REUSEPORT workers, real signals.

What these prove is about connections that are *queued* or *in flight in a surviving
process*: a worker that is SIGKILLed loses the connections it had already accepted (their
state died with it), which is why the crash test kills the worker before the storm and
holds the supervisor still, so that the storm's connections provably wait in the dead
worker's backlog and are then served by its replacement.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest
from control import wait_line
from storm import AsyncEchoServer, StormResult, storm
from support.relay import relay_config, relay_process

from relaycore.lab.base import free_port, wait_for

pytestmark = pytest.mark.slow


def listen_queues(port: int) -> list[int]:
    """Recv-Q of each listening socket on the port: connections waiting for accept()."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[1]) for line in out.splitlines() if line.strip()]


def start_storm(port: int, count: int, **kw) -> tuple[threading.Thread, StormResult]:  # type: ignore[no-untyped-def]
    result = StormResult()
    thread = threading.Thread(
        target=storm, args=(port, count), kwargs={**kw, "progress": result}, daemon=True
    )
    thread.start()
    return thread, result


class Transfer:
    """One relayed connection carrying a byte stream in two halves, so that a test can
    do something (reload, stop) between them and check the whole echo afterwards."""

    HALF = 1 << 20

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.data = os.urandom(2 * self.HALF)
        self.echo = bytearray()

    def first_half(self) -> None:
        self.sock.sendall(self.data[: self.HALF])
        self._read(self.HALF)

    def second_half(self) -> None:
        self.sock.sendall(self.data[self.HALF :])
        self.sock.shutdown(socket.SHUT_WR)
        while chunk := self.sock.recv(1 << 16):
            self.echo += chunk
        self.sock.close()

    def _read(self, n: int) -> None:
        while len(self.echo) < n:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "EOF in the middle of the transfer"
            self.echo += chunk

    def assert_exact(self) -> None:
        assert len(self.echo) == len(self.data)
        assert hashlib.sha256(self.echo).digest() == hashlib.sha256(self.data).digest()


def test_killed_worker_is_respawned_and_its_queue_served(tmp_path):
    port = free_port()
    with (
        AsyncEchoServer() as echo,
        relay_process(
            relay_config(
                run_dir=tmp_path / "run",
                listen_port=port,
                upstream_port=echo.port,
                workers=2,
                max_connections=5000,
            ),
            tmp_path,
        ) as relay,
    ):
        supervisor = psutil.Process(relay.proc.pid)
        victim = relay.worker_pids(2)[0]
        supervisor.suspend()  # the respawn waits until connections queue on the dead socket
        try:
            os.kill(victim, signal.SIGKILL)
            wait_for(
                lambda: psutil.Process(victim).status() == psutil.STATUS_ZOMBIE, 10, "the kill"
            )
            thread, result = start_storm(port, 2000, concurrency=2000, deadline_s=90)
            wait_for(lambda: max(listen_queues(port)) >= 100, 30, "connections to queue")
            queued = max(listen_queues(port))
        finally:
            supervisor.resume()
        thread.join(90)
        assert not thread.is_alive()
        assert result.outcomes == {"ok": 2000}, (result.outcomes, relay.output())
        assert queued >= 100
        assert victim not in relay.worker_pids(2)
        wait_line(relay, rf"worker \d g1 \(pid {victim}\) killed by SIGKILL; respawning")


def test_reload_during_storm_refuses_nothing_and_inflight_completes(tmp_path):
    port = free_port()
    with (
        AsyncEchoServer() as echo,
        relay_process(
            relay_config(
                run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port, workers=2
            ),
            tmp_path,
        ) as relay,
    ):
        transfer = Transfer(port)
        transfer.first_half()
        thread, result = start_storm(port, 6000, concurrency=100, deadline_s=120)
        wait_for(lambda: result.done >= 500, 30, "the storm to get going")
        relay.proc.send_signal(signal.SIGHUP)
        wait_line(relay, r"ready generation=2")
        done_at_reload = result.done
        # Both old workers have stopped accepting; one of them is draining the transfer.
        wait_for(
            lambda: sum(bool(re.search(r"g1\] INFO draining", x)) for x in relay.lines) == 2,
            20,
            "both old workers to drain",
        )
        transfer.second_half()
        thread.join(120)
        assert not thread.is_alive()
        assert result.outcomes == {"ok": 6000}, (result.outcomes, relay.output())
        assert 500 <= done_at_reload < 6000, "the reload did not happen during the storm"
        transfer.assert_exact()
        wait_for(
            lambda: (
                len([x for x in relay.lines if re.search(r"g1 \(pid \d+\) exited with code 0", x)])
                == 2
            ),
            20,
            "both old workers to finish draining",
        )


def test_sigterm_drains_inflight_then_exits_zero(tmp_path):
    port = free_port()
    with (
        AsyncEchoServer() as echo,
        relay_process(
            relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port),
            tmp_path,
        ) as relay,
    ):
        transfer = Transfer(port)
        transfer.first_half()
        relay.proc.send_signal(signal.SIGTERM)
        wait_line(relay, r"draining 1 connections")

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, 10, "new connections to be refused while draining")
        transfer.second_half()
        transfer.assert_exact()
        assert relay.proc.wait(20) == 0
        assert any("stopped" in line for line in relay.lines)


def test_drain_timeout_aborts_what_is_left(tmp_path):
    port = free_port()
    with AsyncEchoServer() as echo:
        config = relay_config(
            run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port
        ).replace("[relay]\n", "[relay]\ndrain_timeout_s = 1\n")
        with relay_process(config, tmp_path) as relay:
            idle = socket.create_connection(("127.0.0.1", port), timeout=20)
            idle.sendall(b"x")
            assert idle.recv(1) == b"x"
            started = time.monotonic()
            relay.proc.send_signal(signal.SIGTERM)
            assert relay.proc.wait(20) == 0
            assert time.monotonic() - started < 10
            wait_line(relay, r"drain timeout: aborting 1 connections")
            try:
                assert idle.recv(1) == b""
            except ConnectionResetError:
                pass
            idle.close()


def test_worker_that_keeps_crashing_makes_the_supervisor_give_up(tmp_path):
    port = free_port()
    with (
        AsyncEchoServer() as echo,
        relay_process(
            relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port),
            tmp_path,
        ) as relay,
    ):
        supervisor = psutil.Process(relay.proc.pid)
        deadline = time.monotonic() + 60
        kills = 0
        while relay.proc.poll() is None and time.monotonic() < deadline:
            for child in supervisor.children():
                try:
                    child.kill()
                    kills += 1
                except psutil.NoSuchProcess:
                    pass
            relay.ended.wait(0.01)
        assert relay.proc.wait(10) == 5
        assert kills >= 5
        line = wait_line(relay, r"relaycore: error: worker 0 died 5 times")
        assert "giving up" in line


def test_bad_config_on_reload_keeps_the_running_generation(tmp_path):
    port = free_port()
    with (
        AsyncEchoServer() as echo,
        relay_process(
            relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port),
            tmp_path,
        ) as relay,
    ):
        relay.write_config(relay.config_path.read_text().replace("workers = 1", "workers = 0"))
        relay.proc.send_signal(signal.SIGHUP)
        line = wait_line(relay, r"reload rejected")
        assert "generation 1 stays: relay.workers: expected an integer >= 1, got 0" in line
        result = storm(port, 50, concurrency=10, deadline_s=30)
        assert result.outcomes == {"ok": 50}
        assert not any("generation=2" in x for x in relay.lines)
