"""`make soak`: mixed traffic through one relay for a long time, with reloads and worker
kills, every byte checked (issue 16).

    .venv/bin/python bench/soak.py [--duration 600] [--reload-every 30] [--kill-every 60]
                                   [--json FILE]

The relay (2 workers) has a plain connector and a TLS one, each to an echo upstream
(bench/peers/upstream.c). Devices (one asyncio process) run, against both connectors:

  churn  connect, send 1 B..16 KiB, read it back, close; 12 at a time
  echo   a connection of 2..15 s doing ping-pong of 1 B..4 KiB; 12 at a time
  bulk   send 1..8 MiB while reading it back; 2 at a time

Every byte that comes back is compared with the byte sent (a slice of a random pool: byte
for byte, stronger than a checksum). Every reload-every seconds the relay reloads (SIGHUP,
the config alternating splice "auto" and "always"); every kill-every seconds a worker of
the current generation is killed (SIGKILL). Connections live at most 15 s (bulk ones are
bounded by their size), under drain_timeout_s = 30, so no reload cuts one short.

Which failures does a kill explain? Just before a kill the worker is stopped (SIGSTOP: it
accepts nothing more) and the sockets it holds are read from /proc (its fds' inodes,
/proc/net/tcp{,6}): the device-side ones name the ports of the devices whose connections
are in flight on it. A failed connection is explained when its local port is in that set
of a kill that came after it opened. Every other failure is a defect.

Passes (exit 0) when: no unexplained failure, no corrupted byte, the supervisor's RSS and
each generation's workers' RSS no more than 5% above what they were after warm-up (the
first fifth of the run, at most 60 s), and at the end, traffic stopped, the supervisor's
fds and each worker's (less its pooled pipes) back to what a fresh worker holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from programs import Upstream, build

from relaycore import client, protocol
from relaycore.lab.base import HOST, free_port, wait_for
from relaycore.lab.pki import make_server_pki
from relaycore.lab.relay import RelayProcess

POOL = os.urandom(1 << 20)
IO_TIMEOUT_S = 30.0
GROWTH_LIMIT = 0.05
CONCURRENCY = {"churn": 12, "echo": 12, "bulk": 2}


@dataclass
class Conn:
    kind: str
    connector: str
    port: int = 0  # the device's local port
    start: float = 0.0
    end: float = 0.0
    verified: int = 0  # bytes that came back equal to what was sent
    error: str = ""
    corrupt: bool = False


@dataclass
class Kill:
    time: float
    pid: int
    generation: int
    ports: set[int] = field(default_factory=set)


Ports = dict[str, tuple[int, int, Path | None]]  # connector: (listen, upstream, ca or None)


@dataclass
class Soak:
    duration: float
    reload_every: float
    kill_every: float
    ports: Ports
    conns: list[Conn] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    reloads: int = 0
    rss: dict[int, list[tuple[float, int, int]]] = field(default_factory=dict)  # pid: (t, gen, kib)
    stop: bool = False


# -- devices ---------------------------------------------------------------------------------


def expected(offset: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        k = (offset + len(out)) % len(POOL)
        out += POOL[k : k + n - len(out)]
    return bytes(out)


async def checked_read(reader: asyncio.StreamReader, c: Conn, offset: int, n: int) -> None:
    data = await asyncio.wait_for(reader.readexactly(n), IO_TIMEOUT_S)
    if data != expected(offset, n):
        c.corrupt = True
        raise ValueError("corrupted")
    c.verified += n


async def one(soak: Soak, kind: str, connector: str, port: int, rng: random.Random) -> Conn:
    c = Conn(kind, connector, start=time.monotonic())
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), IO_TIMEOUT_S)
        c.port = writer.get_extra_info("sockname")[1]
        offset = rng.randrange(len(POOL))
        if kind == "churn":
            n = rng.randint(1, 16 << 10)
            writer.write(expected(offset, n))
            await checked_read(reader, c, offset, n)
        elif kind == "echo":
            until = time.monotonic() + rng.uniform(2, 15)
            while time.monotonic() < until and not soak.stop:
                n = rng.randint(1, 4096)
                writer.write(expected(offset, n))
                await checked_read(reader, c, offset, n)
                offset += n
                await asyncio.sleep(rng.uniform(0, 0.05))
        else:
            total = rng.randint(1 << 20, 8 << 20)

            async def send() -> None:
                for k in range(0, total, 65536):
                    writer.write(expected(offset + k, min(65536, total - k)))
                    await asyncio.wait_for(writer.drain(), IO_TIMEOUT_S)

            sender = asyncio.ensure_future(send())
            try:
                for k in range(0, total, 65536):
                    await checked_read(reader, c, offset + k, min(65536, total - k))
            finally:
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender
        writer.write_eof()
        if await asyncio.wait_for(reader.read(1), IO_TIMEOUT_S) != b"":
            raise ValueError("bytes after the echo")
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
        c.error = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        c.end = time.monotonic()
    return c


async def device_loop(soak: Soak, kind: str, ports: dict[str, int], seed: int) -> None:
    rng = random.Random(seed)
    while not soak.stop:
        connector = rng.choice(sorted(ports))
        soak.conns.append(await one(soak, kind, connector, ports[connector], rng))


# -- faults and measurements ----------------------------------------------------------------


def status(run_dir: Path) -> protocol.StatusReply:
    reply = client.admin(str(run_dir), protocol.StatusRequest())
    assert isinstance(reply, protocol.StatusReply)
    return reply


def device_ports(pid: int, listen_ports: set[int]) -> set[int]:
    """The remote ports of the sockets `pid` holds whose local port is a listen port:
    the devices whose connections it serves."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes and int(fields[1].rsplit(":", 1)[1], 16) in listen_ports:
                    ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def kill_a_worker(soak: Soak, run_dir: Path, listen_ports: set[int]) -> None:
    current = status(run_dir)
    live = [w for w in current.workers if w.generation == current.generation and not w.draining]
    if not live:
        return
    w = random.choice(live)
    try:
        os.kill(w.pid, signal.SIGSTOP)  # it accepts nothing more: the set below is complete
        kill = Kill(time.monotonic(), w.pid, w.generation, device_ports(w.pid, listen_ports))
        os.kill(w.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    soak.kills.append(kill)


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def sample_rss(soak: Soak, relay: RelayProcess, run_dir: Path, t0: float) -> None:
    now = time.monotonic() - t0
    soak.rss.setdefault(relay.pid, []).append((now, 0, rss_kib(relay.pid) or 0))
    for w in status(run_dir).workers:
        if (kib := rss_kib(w.pid)) is not None:
            soak.rss.setdefault(w.pid, []).append((now, w.generation, kib))


async def faults(
    soak: Soak, relay: RelayProcess, config: Path, run_dir: Path, listen_ports: set[int], t0: float
) -> None:
    loop = asyncio.get_running_loop()
    next_reload, next_kill, next_rss = soak.reload_every, soak.kill_every, 0.0
    splice = ["always", "auto"]
    while (now := time.monotonic() - t0) < soak.duration:
        if now >= next_rss:
            await loop.run_in_executor(None, sample_rss, soak, relay, run_dir, t0)
            next_rss += 1.0
        if now >= next_kill:
            await loop.run_in_executor(None, kill_a_worker, soak, run_dir, listen_ports)
            next_kill += soak.kill_every
        if now >= next_reload:
            config.write_text(relay_config(run_dir, splice[soak.reloads % 2], soak.ports))
            os.kill(relay.pid, signal.SIGHUP)
            soak.reloads += 1
            next_reload += soak.reload_every
        await asyncio.sleep(0.1)
    soak.stop = True


# -- the relay --------------------------------------------------------------------------------


def relay_config(run_dir: Path, splice: str, ports: Ports) -> str:
    text = (
        f'[relay]\nworkers = 2\nrun_dir = "{run_dir}"\nsplice = "{splice}"\n'
        "max_connections = 2000\ndrain_timeout_s = 30\n[timeouts]\nidle_s = 60\n"
    )
    for name, (listen, upstream, ca) in ports.items():
        text += (
            f'\n[[connector]]\nname = "{name}"\nlisten = "{HOST}:{listen}"\n'
            f'upstream = "{HOST}:{upstream}"\n'
        )
        text += "tls = false\n" if ca is None else f'server_name = "localhost"\nca = "{ca}"\n'
    return text


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def worker_fds(run_dir: Path) -> list[int]:
    """Each live worker's fds less its pooled pipes (two each)."""
    return [fds(w.pid) - 2 * w.counters.get("pipes_open", 0) for w in status(run_dir).workers]


async def traffic(soak: Soak, relay: RelayProcess, config: Path, run_dir: Path, t0: float) -> None:
    ports = {name: listen for name, (listen, _, _) in soak.ports.items()}
    loops = [
        device_loop(soak, kind, ports, seed=1000 * k + j)
        for k, (kind, n) in enumerate(CONCURRENCY.items())
        for j in range(n)
    ]
    await asyncio.gather(faults(soak, relay, config, run_dir, set(ports.values()), t0), *loops)


def run(duration: float, reload_every: float, kill_every: float, work: Path) -> dict[str, Any]:
    bins = build(work)
    pki = make_server_pki(work / "pki")
    plain = Upstream(bins["upstream"], "echo", None)
    tls = Upstream(bins["upstream"], "echo", (pki.cert, pki.key))
    ports: Ports = {
        "plain": (free_port(), plain.address[1], None),
        "tls": (free_port(), tls.address[1], pki.ca),
    }
    run_dir = work / "run"
    config = work / "relay.toml"
    config.write_text(relay_config(run_dir, "auto", ports))
    soak = Soak(duration, reload_every, kill_every, ports)
    relay = RelayProcess(config, cwd=work)
    problems: list[str] = []
    relay.on_line = lambda line: problems.append(line) if " ERROR " in line else None
    relay.start()
    try:
        relay.wait_ready(30)
        wait_for(lambda: len(status(run_dir).workers) == 2, 10, "two workers")
        fresh_workers = max(worker_fds(run_dir))
        # The supervisor holds an fd for each admin client until it has gone: ours too.
        time.sleep(1.0)
        fresh = {"supervisor": fds(relay.pid), "worker": fresh_workers}
        t0 = time.monotonic()
        asyncio.run(traffic(soak, relay, config, run_dir, t0))
        ended = time.monotonic() - t0

        def settled() -> bool:
            s = status(run_dir)
            return all(not w.draining and w.active == 0 for w in s.workers) and len(s.workers) == 2

        wait_for(settled, 60, "the old generations gone and no connection open")
        time.sleep(2.0)  # a report after the last close: pipes_open is current
        final = {"supervisor": fds(relay.pid), "workers": worker_fds(run_dir)}
    finally:
        code = relay.stop()
        plain.close()
        tls.close()
    return judge(soak, fresh, final, ended, code, problems)


def judge(
    soak: Soak,
    fresh: dict[str, int],
    final: dict[str, Any],
    ended: float,
    code: int,
    problems: list[str],
) -> dict[str, Any]:
    failed = [c for c in soak.conns if c.error]
    in_flight = set()  # (kill index, port) of every connection a kill took
    explained = []
    for c in failed:
        for k, kill in enumerate(soak.kills):
            if c.start <= kill.time <= c.end and c.port in kill.ports:
                explained.append(c)
                in_flight.add((k, c.port))
                break
    unexplained = [c for c in failed if c not in explained]
    warm = min(60.0, soak.duration / 5)
    sup = [kib for t, _, kib in soak.rss[min(soak.rss)] if t >= warm] if soak.rss else []
    by_gen: dict[int, list[int]] = {}
    for samples in soak.rss.values():
        for t, gen, kib in samples:
            if gen and t >= warm:
                by_gen.setdefault(gen, []).append(kib)
    gens = sorted(by_gen)
    steady = {g: statistics.median(by_gen[g]) for g in gens}
    sup_growth = (max(sup) - sup[0]) / sup[0] if sup else 0.0
    worker_growth = (max(steady.values()) - steady[gens[0]]) / steady[gens[0]] if gens else 0.0
    r = {
        "duration_s": round(ended, 1),
        "connections": len(soak.conns),
        "by_kind": {k: sum(c.kind == k for c in soak.conns) for k in CONCURRENCY},
        "bytes_verified": sum(c.verified for c in soak.conns),
        "corrupted": sum(c.corrupt for c in soak.conns),
        "reloads": soak.reloads,
        "kills": len(soak.kills),
        "in_flight_on_killed": sum(len(k.ports) for k in soak.kills),
        "failed": len(failed),
        "failed_in_flight_on_killed": len(explained),
        "failed_unexplained": len(unexplained),
        "unexplained": [asdict(c) for c in unexplained[:20]],
        "supervisor_rss_growth": round(sup_growth, 4),
        "worker_rss_kib_by_generation": {g: round(v) for g, v in steady.items()},
        "worker_rss_growth": round(worker_growth, 4),
        "fds_fresh": fresh,
        "fds_final": final,
        "relay_exit": code,
        "relay_errors": problems[:20],
    }
    r["passed"] = (
        not unexplained
        and r["corrupted"] == 0
        and sup_growth <= GROWTH_LIMIT
        and worker_growth <= GROWTH_LIMIT
        and final["supervisor"] == fresh["supervisor"]
        and all(n <= fresh["worker"] for n in final["workers"])
        and code == 0
        and not problems
    )
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    p.add_argument("--reload-every", type=float, default=30.0, help="seconds between reloads")
    p.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaycore-soak-") as tmp:
        r = run(a.duration, a.reload_every, a.kill_every, Path(tmp))
    if a.json is not None:
        a.json.write_text(json.dumps(r, indent=1) + "\n")
    for k, v in r.items():
        if k != "unexplained" or v:
            print(f"{k:>28}: {v}")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
