"""What the benchmarks share: addresses, the peers, the relay's config, the client socket."""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from programs import Upstream

HOST = "127.0.0.1"
# direct: no relay; copy, splice: plain connectors; tls: TLS connectors to TLS peers.
PATHS = ("direct", "copy", "splice", "tls", "tunnel")
SPLICE = {"copy": "off", "splice": "always"}
# The name in the bench certificate: the TLS connectors' server_name (and SNI).
TLS_SERVER_NAME = "localhost"
# Kernel-level socket timeouts (SO_RCVTIMEO/SO_SNDTIMEO) bound every round without the
# extra poll() per call that a Python socket timeout costs.
IO_TIMEOUT_S = 30
TIMEVAL = IO_TIMEOUT_S.to_bytes(8, "little") + bytes(8)  # struct timeval {30 s, 0 us}
# Lines about the TLS runs (protocol, cipher, resumed handshakes), printed under the
# summary table by conftest.py.
TLS_NOTES: dict[str, str] = {}


@dataclass(frozen=True)
class PeerStats:
    """A TLS peer's counters since it started (all zero for a plain peer)."""

    handshakes: int
    resumed: int
    protocol: str
    cipher: str


class Peer(Upstream):
    """bench/peers/upstream.c (the same upstream as `make bench-peers`) as
    `upstream sink|echo [--tls CERT KEY] [--no-resume]`; it exits when its stdin closes.
    `stats()` gives its TLS handshake counters."""

    def __init__(
        self,
        binary: Path,
        mode: str,
        tls: tuple[Path, Path] | None = None,
        *,
        tickets: bool = True,
    ) -> None:
        super().__init__(binary, mode, tls, no_resume=not tickets, fail=pytest.fail)
        self.mode = mode
        self.tls = tls is not None

    def stats(self) -> PeerStats:  # type: ignore[override]
        got = super().stats()
        if not isinstance(got.get("handshakes"), int):
            pytest.fail(f"bench peer {self.mode}: bad answer to stats: {got!r}")
        return PeerStats(
            got["handshakes"], got["resumed"], str(got["protocol"]), str(got["cipher"])
        )


@dataclass(frozen=True)
class Endpoints:
    """Where a benchmark's client connects for one path, and the peers behind it."""

    path: str
    sink: tuple[str, int]
    echo: tuple[str, int]
    sink_peer: Peer
    echo_peer: Peer
    # tls path only: a connector to a TLS echo peer that issues no session tickets.
    echo_full: tuple[str, int] | None = None
    echo_full_peer: Peer | None = None


@dataclass(frozen=True)
class TunnelNodes:
    """tunnel path: both nodes' identities (cert, key, pin) and each route's exit port."""

    entry: tuple[Path, Path, str]
    exit: tuple[Path, Path, str]
    exit_ports: dict[str, int]


def relay_config(
    splice: str | None,
    run_dir: Path,
    routes: dict[str, tuple[int, tuple[str, int]]],
    ca: Path | None = None,
    tunnel: TunnelNodes | None = None,
) -> str:
    """workers = 1 and one connector per route (name -> (listen port, upstream)): plain,
    or TLS verified against `ca` and TLS_SERVER_NAME when `ca` is given. `splice` None
    leaves the default ("auto"). With `tunnel`, each route is an entry connector pinned
    to an [[exit]] of the same process, whose fixed target is the route's upstream: both
    TLS legs of a tunnel in one worker."""
    if tunnel is not None:
        return _tunnel_config(splice, run_dir, routes, tunnel)
    lines = [
        "[relay]",
        "workers = 1",
        f"run_dir = {json.dumps(str(run_dir))}",
        "drain_timeout_s = 5",
    ]
    if splice is not None:
        lines.append(f'splice = "{splice}"')
    for name, (port, upstream) in routes.items():
        lines += [
            "",
            "[[connector]]",
            f'name = "{name}"',
            f'listen = "{HOST}:{port}"',
            f'upstream = "{upstream[0]}:{upstream[1]}"',
        ]
        if ca is None:
            lines.append("tls = false")
        else:
            lines += [f'server_name = "{TLS_SERVER_NAME}"', f"ca = {json.dumps(str(ca))}"]
    return "\n".join(lines) + "\n"


def _tunnel_config(
    splice: str | None,
    run_dir: Path,
    routes: dict[str, tuple[int, tuple[str, int]]],
    nodes: TunnelNodes,
) -> str:
    (entry_cert, entry_key, entry_pin), (exit_cert, exit_key, exit_pin) = nodes.entry, nodes.exit
    plain = relay_config(splice, run_dir, {})
    lines = [plain.rstrip("\n")]
    for name, (port, upstream) in routes.items():
        exit_port = nodes.exit_ports[name]
        lines += [
            "",
            "[[connector]]",
            f'name = "{name}"',
            f'listen = "{HOST}:{port}"',
            f'upstream = "{HOST}:{exit_port}"',
            f"pin = [{json.dumps(exit_pin)}]",
            f"cert = {json.dumps(str(entry_cert))}",
            f"key = {json.dumps(str(entry_key))}",
            "verify = false",
            "",
            "[[exit]]",
            f'name = "{name}-exit"',
            f'listen = "{HOST}:{exit_port}"',
            f"cert = {json.dumps(str(exit_cert))}",
            f"key = {json.dumps(str(exit_key))}",
            f"allow = [{json.dumps(entry_pin)}]",
            f'target = "{upstream[0]}:{upstream[1]}"',
        ]
    return "\n".join(lines) + "\n"


def connect(address: tuple[str, int]) -> socket.socket:
    """A blocking client socket with kernel-level timeouts and TCP_NODELAY."""
    sock = socket.create_connection(address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, TIMEVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
