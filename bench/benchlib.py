"""What the benchmarks share: addresses, the peers, the relay's config, the client socket."""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
PATHS = ("direct", "copy", "splice")
SPLICE = {"copy": "off", "splice": "always"}
# Kernel-level socket timeouts (SO_RCVTIMEO/SO_SNDTIMEO) bound every round without the
# extra poll() per call that a Python socket timeout costs.
IO_TIMEOUT_S = 30


@dataclass(frozen=True)
class Endpoints:
    """Where a benchmark's client connects for one path."""

    path: str
    sink: tuple[str, int]
    echo: tuple[str, int]


class Peer:
    """bench/peer.c running as `peer sink` or `peer echo`; it exits when its stdin closes."""

    def __init__(self, binary: Path, mode: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            pytest.fail(f"bench peer {mode} did not print its port (got {line!r})")
        self.address = (HOST, int(line))

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def relay_config(splice: str, run_dir: Path, routes: dict[str, tuple[int, tuple[str, int]]]) -> str:
    lines = [
        "[relay]",
        "workers = 1",
        f"run_dir = {json.dumps(str(run_dir))}",
        f'splice = "{splice}"',
        "drain_timeout_s = 5",
    ]
    for name, (port, upstream) in routes.items():
        lines += [
            "",
            "[[connector]]",
            f'name = "{name}"',
            f'listen = "{HOST}:{port}"',
            f'upstream = "{upstream[0]}:{upstream[1]}"',
            "tls = false",
        ]
    return "\n".join(lines) + "\n"


def connect(address: tuple[str, int]) -> socket.socket:
    """A blocking client socket with kernel-level timeouts and TCP_NODELAY."""
    sock = socket.create_connection(address)
    timeval = IO_TIMEOUT_S.to_bytes(8, "little") + bytes(8)  # struct timeval {30 s, 0 us}
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
