"""Running out of fds is visible (issue 16): under `prlimit --nofile=256`, devices that wait
in the backlog get the relay a warning (one per episode), a counter in `status --json` and
a Prometheus metric, and every one of them is served once fds free up.

tests/e2e/test_limits.py proves the waiting itself (no spin, nothing refused); this file
proves that an operator can see it.
"""

from __future__ import annotations

import socket

from control import HOST, cli_json, with_stats
from plane_checks import metric_samples, scrape
from storm import AsyncEchoServer, served_in_turn
from support.relay import relay_config, relay_process

from relaycore.lab.base import free_port, wait_for

NOFILE = 256
DEVICES = 400  # more than a worker with 256 fds can hold (two each)
OUT_OF_FDS = "WARNING out of file descriptors"


def test_fd_exhaustion_is_warned_counted_and_exported_then_everyone_is_served(tmp_path):
    port, prom = free_port(), free_port()
    run_dir = tmp_path / "run"
    with AsyncEchoServer() as echo:
        config = with_stats(
            relay_config(run_dir=run_dir, listen_port=port, upstream_port=echo.port),
            prometheus=f"{HOST}:{prom}",
            interval_s=0.2,
        )
        with relay_process(config, tmp_path, wrapper=["prlimit", f"--nofile={NOFILE}"]) as relay:
            # At start: the limit cannot be raised (hard = soft = 256), and it is too low.
            relay.wait_line(r"WARNING open files: the limit is 256 but max_connections = 1000", 5)
            devices: dict[int, tuple[int, socket.socket]] = {}
            try:
                for k in range(DEVICES):
                    s = socket.create_connection((HOST, port), timeout=10)
                    s.sendall(b"device %03d\n" % k)
                    devices[s.fileno()] = (k, s)
                relay.wait_line(OUT_OF_FDS, 10)

                def paused() -> int:
                    [worker] = cli_json("status", "--run-dir", str(run_dir))["workers"]
                    return int(worker["counters"].get("accept_paused_emfile", 0))

                wait_for(paused, 10, "accept_paused_emfile in status --json")
                samples = metric_samples(scrape(prom)[2])
                assert samples[("relaycore_accept_paused_emfile_total", frozenset())] > 0
                served_in_turn(devices, lambda k: b"device %03d\n" % k, relay.output)
            finally:
                for _, s in devices.values():
                    s.close()
            relay.wait_line(r"INFO file descriptors available again", 10)
            # One episode, one warning, however many times the listener paused in it.
            assert sum(OUT_OF_FDS in line for line in relay.lines) == 1, relay.output()
            assert paused() > 1
