"""What the control plane costs the data path: the copy path with worker reports every
second (the default) against the same relay with reporting off ([stats] interval_s = 0).

Both relays run side by side for the whole module, on the same peers, and each metric
alternates between them, so a noisy moment hits both alike. The reports themselves are
small (a few hundred bytes a second per worker); what this measures is whether the tick
that takes them (Python every 200 ms, a counters snapshot, a non-blocking send) shows in
throughput or in the latency of a 64-byte round trip.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchlib import Peer, connect, relay_config
from test_bulk_throughput import BULK_BYTES, send_all_to_sink
from test_echo_round_trips import ROUND_TRIPS, ping_pong

from relaycore.lab.base import free_port
from relaycore.lab.relay import RelayProcess

MODES = {"reports on": 1.0, "reports off": 0.0}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def relays(
    peers: dict[str, Peer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, tuple[str, int]]]]:
    """mode -> {"sink": address, "echo": address}, both relays running."""
    running: list[RelayProcess] = []
    addresses: dict[str, dict[str, tuple[str, int]]] = {}
    try:
        for mode, interval_s in MODES.items():
            tmp: Path = tmp_path_factory.mktemp(mode.replace(" ", "-"))
            ports = {name: free_port() for name in ("sink", "echo")}
            config = relay_config(
                "off",
                tmp / "run",
                {name: (ports[name], peers[name].address) for name in ports},
            )
            (tmp / "relay.toml").write_text(f"{config}\n[stats]\ninterval_s = {interval_s}\n")
            relay = RelayProcess(tmp / "relay.toml")
            relay.start()
            running.append(relay)
            relay.wait_ready(START_TIMEOUT_S)
            addresses[mode] = {name: ("127.0.0.1", port) for name, port in ports.items()}
        yield addresses
    finally:
        for relay in running:
            relay.stop(STOP_TIMEOUT_S)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.benchmark(group="control plane cost: bulk 1 GiB, copy path")
def test_bulk_with_and_without_reports(
    benchmark: Any, relays: dict[str, dict[str, tuple[str, int]]], mode: str
) -> None:
    benchmark.pedantic(
        send_all_to_sink,
        setup=lambda: ((connect(relays[mode]["sink"]),), {}),
        rounds=7,
        warmup_rounds=1,
    )
    if benchmark.stats is not None:
        benchmark.extra_info["MB/s"] = round(BULK_BYTES / 1e6 / benchmark.stats.stats.median)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.benchmark(group="control plane cost: echo 64 B, copy path")
def test_echo_with_and_without_reports(
    benchmark: Any, relays: dict[str, dict[str, tuple[str, int]]], mode: str
) -> None:
    sock: socket.socket
    with connect(relays[mode]["echo"]) as sock:
        benchmark.pedantic(ping_pong, args=(sock,), rounds=7, warmup_rounds=1)
    if benchmark.stats is not None:
        benchmark.extra_info["round trips/s"] = round(ROUND_TRIPS / benchmark.stats.stats.median)
