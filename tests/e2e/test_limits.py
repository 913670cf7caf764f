"""Running out of fds: the worker neither spins nor refuses; devices wait, then are served.

The test lowers a live worker's RLIMIT_NOFILE (prlimit on another process) so that it has
room for exactly ROOM relayed connections (two fds each), plus `extra` fds. With extra=0
the next accept4 fails with EMFILE; with extra=1 accept4 gets the last fd and the upstream
socket() fails, so the worker spends its reserve fd. Either way the remaining devices must
wait in the backlog, costing no CPU, and be served as fds free up.
"""

from __future__ import annotations

import socket
import threading

import psutil
import pytest
from storm import AsyncEchoServer, served_in_turn
from support.relay import relay_config, relay_process

from relaycore.lab.base import free_port

ROOM = 10


def steady_fds(worker: psutil.Process) -> int:
    """The worker's fd count once two readings 100 ms apart agree (at most 3 s): one it
    opens just after the count would leave the limit an fd short, and the last device
    unserved."""
    pacing = threading.Event()
    count = worker.num_fds()
    for _ in range(30):
        pacing.wait(0.1)
        again = worker.num_fds()
        if again == count:
            break
        count = again
    return count


DEVICES = 30


@pytest.mark.parametrize("extra", [0, 1], ids=["accept-emfile", "reserve-fd"])
def test_out_of_fds_waits_without_spinning_and_refuses_nothing(tmp_path, extra):
    port = free_port()
    with (
        AsyncEchoServer() as echo,
        relay_process(
            relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port),
            tmp_path,
        ) as relay,
    ):
        worker = psutil.Process(relay.worker_pids(1)[0])
        limit = steady_fds(worker) + 2 * ROOM + extra
        worker.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
        devices = []
        try:
            for k in range(DEVICES):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                devices.append(s)
                s.sendall(b"device %02d\n" % k)
            served = ROOM + extra
            for k, s in enumerate(devices[:served]):
                try:
                    echoed = s.recv(64)
                except TimeoutError:
                    raise AssertionError(
                        f"device {k} of the {served} that fit was not served; the worker"
                        f" holds {worker.num_fds()} fds of {limit}:\n{relay.output()}"
                    ) from None
                assert echoed == b"device %02d\n" % k

            cpu = worker.cpu_times()
            threading.Event().wait(1.0)  # a measurement window, not a synchronisation
            spent = sum(worker.cpu_times()[:2]) - sum(cpu[:2])
            assert spent < 0.25, f"worker used {spent:.2f} s of CPU in 1 s while out of fds"

            # Each device that gets its echo hangs up, which frees two fds for the next.
            for s in devices[:served]:
                s.close()
            waiting = {s.fileno(): (k, s) for k, s in enumerate(devices) if k >= served}
            served_in_turn(waiting, lambda k: b"device %02d\n" % k, relay.output)
        finally:
            for s in devices:
                s.close()
