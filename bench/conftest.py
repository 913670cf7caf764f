"""Shared set-up of the benchmarks: peers, the relay under test, and the summary table.

Every benchmark runs once per `path`:
  direct   the client talks to the upstream peer itself: the ceiling of this machine
  copy     through a real `relaycore run` subprocess, workers=1, plain connectors,
           splice = "off"
  splice   the same with splice = "always" (every direction through a pipe)
  tls      the same with TLS connectors (splice left at its default): the client still
           speaks plain TCP, the relay speaks TLS to TLS peers, verified against a bench
           CA made with the openssl command line and the name "localhost"
  tunnel   both legs of a tunnel in the one worker: an entry connector (TLS, pinned) to
           an [[exit]] of the same process, whose fixed target is the plain peer; every
           byte is encrypted and decrypted once by the relay

The upstream peers are bench/peers/upstream.c, the epoll sink and echo server of `make
bench-peers` (plain or TLS, built here as there, linked with relaycore's OpenSSL), so that
the far end is never what is measured. Everything
stays on 127.0.0.1. The relay runs the way an operator runs it, from a config file, and
must stop with exit code 0.

Benchmarks report their rate (median round) through `record_rate`; the table at the end of
the session puts each relayed path beside the direct one, and the TLS path beside the
plain relay (a direct TLS path would need a TLS client, and a Python one would measure
itself: see bench/README.md). TLS details (protocol, cipher, resumed handshakes) are noted
in `TLS_NOTES` and printed under the table.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from benchlib import (
    HOST,
    PATHS,
    SPLICE,
    TLS_NOTES,
    TLS_SERVER_NAME,
    Endpoints,
    Peer,
    TunnelNodes,
    relay_config,
)
from programs import BuildError, compile_programs

from relaycore import _core
from relaycore.errors import StartupError
from relaycore.lab.base import free_port
from relaycore.lab.pki import ServerPki, make_server_pki
from relaycore.lab.relay import RelayProcess

RELAY_START_TIMEOUT_S = 30.0
RELAY_STOP_TIMEOUT_S = 20.0

# (metric, path) -> rate; metric -> unit. Filled by record_rate, printed at the end.
RESULTS: dict[tuple[str, str], float] = {}
UNITS: dict[str, str] = {}


@pytest.fixture(scope="session")
def peer_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/peers/upstream.c, compiled as bench-peers does (relaycore's OpenSSL)."""
    try:
        return compile_programs(tmp_path_factory.mktemp("peer"), ("upstream",))["upstream"]
    except BuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def bench_pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    """A throwaway CA and a certificate for TLS_SERVER_NAME, made with the openssl CLI."""
    try:
        return make_server_pki(tmp_path_factory.mktemp("pki"), TLS_SERVER_NAME)
    except StartupError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def peers(peer_binary: Path, bench_pki: ServerPki) -> Iterator[dict[str, Peer]]:
    """sink, echo (plain); tls-sink, tls-echo (TLS 1.3, TLS_AES_128_GCM_SHA256, session
    tickets); tls-echo-full (the same without tickets: every handshake a full one)."""
    started: dict[str, Peer] = {}
    try:
        tls = (bench_pki.cert, bench_pki.key)
        for mode in ("sink", "echo"):
            started[mode] = Peer(peer_binary, mode)
            started[f"tls-{mode}"] = Peer(peer_binary, mode, tls=tls)
        started["tls-echo-full"] = Peer(peer_binary, "echo", tls=tls, tickets=False)
        yield started
    finally:
        for peer in started.values():
            peer.close()


# Session scope groups the tests by path, so at most one relay runs at a time.
@pytest.fixture(scope="session", params=PATHS)
def endpoints(
    request: pytest.FixtureRequest,
    peers: dict[str, Peer],
    bench_pki: ServerPki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Endpoints]:
    path: str = request.param
    if path == "direct":
        yield Endpoints(
            path, peers["sink"].address, peers["echo"].address, peers["sink"], peers["echo"]
        )
        return
    tls = path == "tls"
    upstream = {name: peers[f"tls-{name}" if tls else name] for name in ("sink", "echo")}
    if tls:
        upstream["echo-full"] = peers["tls-echo-full"]
    tmp = tmp_path_factory.mktemp(f"relay-{path}")
    ports = {name: free_port() for name in upstream}
    config = tmp / "relay.toml"
    config.write_text(
        relay_config(
            SPLICE.get(path),
            tmp / "run",
            {name: (ports[name], peer.address) for name, peer in upstream.items()},
            ca=bench_pki.ca if tls else None,
            tunnel=tunnel_nodes(tmp, upstream) if path == "tunnel" else None,
        )
    )
    relay = RelayProcess(config)
    problems: list[str] = []
    relay.on_line = lambda line: (
        problems.append(line) if " WARNING " in line or " ERROR " in line else None
    )
    relay.start()
    try:
        try:
            relay.wait_ready(RELAY_START_TIMEOUT_S)
        except StartupError as exc:
            tail = "\n".join(relay.tail())
            pytest.fail(f"relay ({path}) did not start: {exc}\n{tail}")
        yield Endpoints(
            path,
            (HOST, ports["sink"]),
            (HOST, ports["echo"]),
            upstream["sink"],
            upstream["echo"],
            echo_full=(HOST, ports["echo-full"]) if tls else None,
            echo_full_peer=upstream.get("echo-full"),
        )
    finally:
        code = relay.stop(RELAY_STOP_TIMEOUT_S)
    if code != 0:
        tail = "\n".join(relay.tail())
        pytest.fail(f"relay ({path}) exited with code {code} on SIGTERM, not 0:\n{tail}")
    if problems:
        pytest.fail(f"relay ({path}) logged problems:\n" + "\n".join(problems[:10]))


def tunnel_nodes(tmp: Path, routes: dict[str, Peer]) -> TunnelNodes:
    """Two node identities (relaycore identity's own key generation) and an exit port per
    route."""

    def identity(name: str) -> tuple[Path, Path, str]:
        cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
        pin = _core.make_identity(str(key), str(cert), name)
        return cert, key, "sha256/" + base64.b64encode(pin).decode()

    return TunnelNodes(
        entry=identity("entry"),
        exit=identity("exit"),
        exit_ports={name: free_port() for name in routes},
    )


@pytest.fixture
def record_rate(request: pytest.FixtureRequest) -> Callable[..., None]:
    """record_rate(benchmark, metric, unit, units_per_round, peer=None): rate of the
    median round. On the tls path, `peer` (the TLS peer the round talked to) adds the
    negotiated protocol and cipher to extra_info."""
    path: str = request.getfixturevalue("endpoints").path

    def record(
        benchmark: Any, metric: str, unit: str, per_round: float, peer: Peer | None = None
    ) -> None:
        benchmark.extra_info["path"] = path
        if path in SPLICE:
            benchmark.extra_info["splice"] = SPLICE[path]
        if peer is not None and peer.tls:
            stats = peer.stats()
            benchmark.extra_info["tls_protocol"] = stats.protocol
            benchmark.extra_info["tls_cipher"] = stats.cipher
            TLS_NOTES["negotiated"] = (
                f"relay TLS: the relay's TLS legs negotiated {stats.protocol}"
                f" {stats.cipher} with the peer (user-space TLS: relaycore uses kTLS for"
                " TLS 1.2 only)"
            )
        if benchmark.stats is None:  # --benchmark-disable: one unmeasured run
            return
        rate = per_round / benchmark.stats.stats.median
        benchmark.extra_info[unit] = round(rate, 1)
        RESULTS[(metric, path)] = rate
        UNITS[metric] = unit

    return record


def _cell(rate: float | None, width: int, fmt: str = ",.0f") -> str:
    return f"{rate:>{width}{fmt}}" if rate is not None else f"{'-':>{width}}"


def _ratio(a: float | None, b: float | None, width: int) -> str:
    return f"{a / b:>{width}.2f}" if a is not None and b else f"{'-':>{width}}"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS and not TLS_NOTES:
        return
    metrics = list(dict.fromkeys(metric for metric, _ in RESULTS))
    write = terminalreporter.write_line
    terminalreporter.section("relay vs direct (median round, loopback)")
    widths = (12, 12, 14, 12, 12)
    write(
        f"{'benchmark':<48}{'direct':>12}{'relay copy':>12}{'relay splice':>14}"
        f"{'relay TLS':>12}{'tunnel':>12}{'copy/direct':>13}{'splice/direct':>15}"
        f"{'TLS/copy':>10}{'tunnel/TLS':>12}"
    )
    for metric in metrics:
        rates = {path: RESULTS.get((metric, path)) for path in PATHS}
        cells = "".join(_cell(rate, w) for rate, w in zip(rates.values(), widths, strict=True))
        ratios = (
            _ratio(rates["copy"], rates["direct"], 13)
            + _ratio(rates["splice"], rates["direct"], 15)
            + _ratio(rates["tls"], rates["copy"], 10)
            + _ratio(rates["tunnel"], rates["tls"], 12)
        )
        write(f"{metric + ' (' + UNITS[metric] + ')':<48}{cells}{ratios}")
    for note in TLS_NOTES.values():
        write(note)
