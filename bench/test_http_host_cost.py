"""What the Host rewrite costs: relay CPU per request on one kept-alive connection, with
http_host = "rewrite" and without, side by side.

Two relays run for the whole module, each with one TLS connector to the same TLS echo
peer, one with the rewrite and one without; the metrics alternate between them, so that a
noisy moment hits both alike. A round is REQUESTS strict ping-pongs of a device's small
GET (send it, read back exactly what reached the peer: the rewritten head, or the head as
sent). Reported per mode: requests/s of the median round, and the worker's CPU time per
request over all rounds (utime + stime from /proc/<worker>/stat), which is the figure the
rewrite is judged by: it parses every head and writes it anew.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchlib import HOST, TLS_SERVER_NAME, Peer, connect

from relaycore import _core
from relaycore.lab.base import free_port
from relaycore.lab.pki import ServerPki
from relaycore.lab.relay import RelayProcess

REQUESTS = 5_000
MODES = ("rewrite", "as sent")
REQUEST = (
    b"GET /v1/devices/42/telemetry?since=1700000000 HTTP/1.1\r\nHost: 10.0.0.1\r\n"
    b"User-Agent: device-fw/1.2\r\nAccept: application/json\r\n\r\n"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def cpu_s(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@pytest.fixture(scope="module")
def relays(
    peers: dict[str, Peer], bench_pki: ServerPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[tuple[str, int], int, int]]]:
    """mode -> (the connector's address, the worker's pid, the peer's port), both relays
    running."""
    running: list[RelayProcess] = []
    out: dict[str, tuple[tuple[str, int], int, int]] = {}
    try:
        for mode in MODES:
            tmp: Path = tmp_path_factory.mktemp(mode.replace(" ", "-"))
            port = free_port()
            echo = peers["tls-echo"].address
            rewrite = 'http_host = "rewrite"\n' if mode == "rewrite" else ""
            (tmp / "relay.toml").write_text(
                f"[relay]\nworkers = 1\nrun_dir = {json.dumps(str(tmp / 'run'))}\n"
                f'[[connector]]\nname = "web"\nlisten = "{HOST}:{port}"\n'
                f'upstream = "{echo[0]}:{echo[1]}"\nserver_name = "{TLS_SERVER_NAME}"\n'
                f"ca = {json.dumps(str(bench_pki.ca))}\n{rewrite}"
            )
            relay = RelayProcess(tmp / "relay.toml")
            relay.start()
            running.append(relay)
            relay.wait_ready(START_TIMEOUT_S)
            [worker] = relay.worker_pids(1)
            out[mode] = ((HOST, port), worker, echo[1])
        yield out
    finally:
        for relay in running:
            relay.stop(STOP_TIMEOUT_S)


def requests(sock: socket.socket, answer: bytes) -> None:
    buf = bytearray(len(answer))
    view = memoryview(buf)
    for _ in range(REQUESTS):
        sock.sendall(REQUEST)
        got = 0
        while got < len(buf):
            n = sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("echo connection closed")
            got += n
    assert buf == answer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.benchmark(group="http_host: small GETs on one connection, TLS")
def test_relay_cpu_per_request(
    benchmark: Any, relays: dict[str, tuple[tuple[str, int], int, int]], mode: str
) -> None:
    address, worker, peer_port = relays[mode]
    # What reaches the peer, and so comes back: the Host names the upstream (not 443).
    answer = REQUEST
    if mode == "rewrite":
        answer = _core.http_rewrite(REQUEST, f"{TLS_SERVER_NAME}:{peer_port}")[0]
    calls = 0

    def round_(sock: socket.socket) -> None:
        nonlocal calls
        calls += 1
        requests(sock, answer)

    sock: socket.socket
    with connect(address) as sock:
        before = cpu_s(worker)
        benchmark.pedantic(round_, args=(sock,), rounds=5, warmup_rounds=1)
        spent = cpu_s(worker) - before
    per_request_us = spent / (REQUESTS * calls) * 1e6
    benchmark.extra_info["relay CPU us/request"] = round(per_request_us, 2)
    if benchmark.stats is not None:
        benchmark.extra_info["requests/s"] = round(REQUESTS / benchmark.stats.stats.median)
    print(f"\n{mode}: relay CPU {per_request_us:.2f} us per request ({calls * REQUESTS} requests)")
