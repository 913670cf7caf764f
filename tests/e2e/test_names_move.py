"""Names that move: a connector's upstream name is resolved again every
`[relay] resolve_interval_s` by the supervisor, and the workers dial the new addresses,
without a connection refused across the change. A name that stops resolving keeps its
last good addresses, and says so.

The relay runs in a private mount namespace whose /etc/hosts is a file of the test's
(control.own_names), rewritten in place while the relay runs. The upstreams are tagged
echo servers on 127.0.0.2 and 127.0.0.3, on the same port; devices make round trips all
along and must always get an answer.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest
from control import TaggedEchoServer, cli_json_lines, own_names, round_trip
from support.relay import relay_process

from relaycore.lab.base import HOST, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NAME = "up.test"
WAIT = 20.0


def set_hosts(path: Path, text: str) -> None:
    """Rewrite the hosts file in place with one write of the same length: a lookup never
    sees it empty or half written (the bind mount follows the inode, so no rename)."""
    raw = text.encode()
    assert len(raw) == path.stat().st_size, "keep the hosts file's length"
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, raw, 0) == len(raw)
    finally:
        os.close(fd)


class Devices:
    """A device thread making round trips through the relay until stopped (at most
    `limit`), counting which upstream answered and every failure."""

    def __init__(self, port: int, limit: int = 5000) -> None:
        self.port = port
        self.limit = limit
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.last: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devices", daemon=True)

    def __enter__(self) -> Devices:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        for k in range(self.limit):
            if self._stop.is_set():
                return
            payload = f"ping {k}".encode()
            try:
                got = round_trip(self.port, payload, timeout=5.0)
            except OSError as e:
                self.failures.append(f"{k}: {e!r}")
                continue
            tag = got[:1].decode() if got.endswith(payload) else f"bad {got!r}"
            self.answers[tag] += 1
            self.last = [*self.last[-49:], tag]

    def streak(self, tag: str, n: int) -> bool:
        return len(self.last) >= n and all(t == tag for t in self.last[-n:])


def test_a_moved_name_is_followed_without_a_refused_connection(tmp_path):
    run_dir = tmp_path / "run"
    listen = free_port()
    hosts = tmp_path / "hosts"
    # The same port on another address: the name moves, the port stays.
    with (
        TaggedEchoServer(b"A", host="127.0.0.2") as a,
        TaggedEchoServer(b"B", host="127.0.0.3", port=a.port),
    ):
        config = (
            f'[relay]\nworkers = 2\nrun_dir = "{run_dir}"\nresolve_interval_s = 0.2\n'
            f"[stats]\ninterval_s = 0.2\n"
            f'[[connector]]\nname = "moving"\nlisten = "{HOST}:{listen}"\n'
            f'upstream = "{NAME}:{a.port}"\ntls = false\n'
        )
        wrapper = own_names(tmp_path, f"127.0.0.2 {NAME}\n")
        with relay_process(config, tmp_path, wrapper=wrapper) as relay, Devices(listen) as dev:
            wait_for(lambda: dev.answers["A"] >= 5, WAIT, "answers from A")
            mark = relay.line_count
            set_hosts(hosts, f"127.0.0.3 {NAME}\n")
            relay.wait_line(
                rf"moving: upstream {NAME}:{a.port} now resolves to 127\.0\.0\.3:{a.port}"
                rf" \(was 127\.0\.0\.2:{a.port}\)",
                WAIT,
                since=mark,
            )
            # Both workers follow (SO_REUSEPORT spreads 30 connections over both).
            wait_for(lambda: dev.streak("B", 30), WAIT, "30 answers from B in a row")
            a.stop()  # the old address is gone now: nothing may still dial it
            before = dev.answers["B"]
            wait_for(lambda: dev.answers["B"] >= before + 30, WAIT, "answers after A left")

            # The name stops resolving: the last good address stays, and it is said.
            mark = relay.line_count
            set_hosts(hosts, "127.0.0.3 zz.test\n")
            relay.wait_line(
                rf"moving: cannot resolve {NAME}: .*; keeping 127\.0\.0\.3:{a.port}",
                WAIT,
                since=mark,
            )
            before = dev.answers["B"]
            wait_for(lambda: dev.answers["B"] >= before + 10, WAIT, "answers, name gone")
        assert dev.failures == [], dev.failures[:5]
        assert set(dev.answers) == {"A", "B"}, dev.answers


def test_the_failed_lookup_is_in_the_error_log(tmp_path):
    run_dir = tmp_path / "run"
    listen = free_port()
    with TaggedEchoServer(b"A", host="127.0.0.2") as a:
        config = (
            f'[relay]\nworkers = 1\nrun_dir = "{run_dir}"\nresolve_interval_s = 0.2\n'
            f"[stats]\ninterval_s = 0.2\n"
            f'[[connector]]\nname = "moving"\nlisten = "{HOST}:{listen}"\n'
            f'upstream = "{NAME}:{a.port}"\ntls = false\n'
        )
        wrapper = own_names(tmp_path, f"127.0.0.2 {NAME}\n")
        with relay_process(config, tmp_path, wrapper=wrapper):
            set_hosts(tmp_path / "hosts", "127.0.0.2 zz.test\n")

            def logged() -> list[dict[str, object]]:
                records = cli_json_lines("logs", "--run-dir", str(run_dir))
                return [r for r in records if r["cause"] == "resolve_failed"]

            [record] = wait_for(logged, WAIT, "a resolve_failed record")
            assert record["connector"] == "moving"
            assert record["upstream"] == f"{NAME}:{a.port}"
            assert f"keeping 127.0.0.2:{a.port}" in str(record["reason"])
            assert round_trip(listen, b"still") == b"Astill"
