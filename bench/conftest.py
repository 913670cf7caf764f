"""Shared set-up of the benchmarks: peers, the relay under test, and the summary table.

Every benchmark runs once per `path`:
  direct   the client talks to the upstream peer itself: the ceiling of this machine
  copy     through a real `relaycore run` subprocess, workers=1, splice = "off"
  splice   the same with splice = "always" (every direction through a pipe)

The upstream peers are bench/peer.c (a sink and an echo server, built here with `cc`), so
that the far end is never what is measured. Everything stays on 127.0.0.1. The relay runs
the way an operator runs it, from a config file, and must stop with exit code 0.

Benchmarks report their rate (median round) through `record_rate`; the table at the end of
the session puts each relayed path beside the direct one.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from benchlib import HOST, PATHS, SPLICE, Endpoints, Peer, relay_config

from relaycore.demo import RelayProcess, free_port
from relaycore.errors import StartupError

RELAY_START_TIMEOUT_S = 30.0
RELAY_STOP_TIMEOUT_S = 20.0

# (metric, path) -> rate; metric -> unit. Filled by record_rate, printed at the end.
RESULTS: dict[tuple[str, str], float] = {}
UNITS: dict[str, str] = {}


@pytest.fixture(scope="session")
def peer_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("the benchmarks build bench/peer.c and need a C compiler: apt-get install gcc")
    source = Path(__file__).with_name("peer.c")
    if not source.exists():
        pytest.fail(f"{source} is missing (a `*.c` rule in .gitignore needs `!bench/peer.c`)")
    out = tmp_path_factory.mktemp("peer") / "peer"
    build = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(out), str(source)], capture_output=True, text=True
    )
    if build.returncode != 0:
        pytest.fail(f"cc {source.name} failed:\n{build.stderr}")
    return out


@pytest.fixture(scope="session")
def peers(peer_binary: Path) -> Iterator[dict[str, Peer]]:
    started: dict[str, Peer] = {}
    try:
        for mode in ("sink", "echo"):
            started[mode] = Peer(peer_binary, mode)
        yield started
    finally:
        for peer in started.values():
            peer.close()


# Session scope groups the tests by path, so at most one relay runs at a time.
@pytest.fixture(scope="session", params=PATHS)
def endpoints(
    request: pytest.FixtureRequest,
    peers: dict[str, Peer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Endpoints]:
    path: str = request.param
    if path == "direct":
        yield Endpoints(path, peers["sink"].address, peers["echo"].address)
        return
    tmp = tmp_path_factory.mktemp(f"relay-{path}")
    ports = {"sink": free_port(), "echo": free_port()}
    config = tmp / "relay.toml"
    config.write_text(
        relay_config(
            SPLICE[path],
            tmp / "run",
            {name: (ports[name], peers[name].address) for name in ("sink", "echo")},
        )
    )
    relay = RelayProcess(config)
    relay.start()
    try:
        try:
            relay.wait_ready(RELAY_START_TIMEOUT_S)
        except StartupError as exc:
            tail = "\n".join(relay.tail())
            pytest.fail(f"relay ({path}) did not start: {exc}\n{tail}")
        yield Endpoints(path, (HOST, ports["sink"]), (HOST, ports["echo"]))
    finally:
        code = relay.stop(RELAY_STOP_TIMEOUT_S)
    if code != 0:
        tail = "\n".join(relay.tail())
        pytest.fail(f"relay ({path}) exited with code {code} on SIGTERM, not 0:\n{tail}")


@pytest.fixture
def record_rate(request: pytest.FixtureRequest) -> Callable[[Any, str, str, float], None]:
    """record_rate(benchmark, metric, unit, units_per_round): rate of the median round."""
    path: str = request.getfixturevalue("endpoints").path

    def record(benchmark: Any, metric: str, unit: str, per_round: float) -> None:
        benchmark.extra_info["path"] = path
        if path in SPLICE:
            benchmark.extra_info["splice"] = SPLICE[path]
        if benchmark.stats is None:  # --benchmark-disable: one unmeasured run
            return
        rate = per_round / benchmark.stats.stats.median
        benchmark.extra_info[unit] = round(rate, 1)
        RESULTS[(metric, path)] = rate
        UNITS[metric] = unit

    return record


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    metrics = list(dict.fromkeys(metric for metric, _ in RESULTS))
    write = terminalreporter.write_line
    terminalreporter.section("relay vs direct (median round, loopback)")
    write(
        f"{'benchmark':<42}{'direct':>12}{'relay copy':>12}{'relay splice':>14}"
        f"{'copy/direct':>13}{'splice/direct':>15}"
    )
    for metric in metrics:
        rates = {path: RESULTS.get((metric, path)) for path in PATHS}
        cells = "".join(
            f"{rate:>{w},.0f}" if rate is not None else f"{'-':>{w}}"
            for rate, w in zip(rates.values(), (12, 12, 14), strict=True)
        )
        direct = rates["direct"]
        ratios = "".join(
            f"{rate / direct:>{w}.2f}" if rate is not None and direct else f"{'-':>{w}}"
            for rate, w in ((rates["copy"], 13), (rates["splice"], 15))
        )
        write(f"{metric + ' (' + UNITS[metric] + ')':<42}{cells}{ratios}")
