"""`make bench-scale`: tens of thousands of idle TLS device connections on one machine.

    .venv/bin/python bench/peers/scale.py [--conns 50000] [--active 1000] [--workers 8]
        [--per-group 10000] [--active-s 90] [--sweep-conc 4]
        [--active-interval-ms 0] [--json FILE]

Devices speak plain TCP to relaycore, which holds a verified TLS connection to the
upstream for each. The connections are opened in groups of at most --per-group, each
group its own connector (a listen port) to its own TLS echo upstream (bench/peers/
upstream.c, two processes): a process may open at most 20,000 files here, and one
(address, port) pair has 28,232 ephemeral ports, so no process and no port pair holds
more than 10,000. The relay runs --workers workers with max_connections sized to the
fd limit. Clients are bench/peers/loadgen.c processes, one per group.

  1. warm-up: 32 connections through each group, closed; then the relay's PSS (all its
     processes, /proc/PID/smaps_rollup), its workers' RSS and the kernel's slab.
  2. open: conns - active idle connections (each does one 64-byte echo, then is held),
     at most 64 connecting per group at a time; the time until every one is held.
  3. memory: PSS and slab again; per connection = the growth / the connections held.
  4. active: --active more connections do strict 64-byte ping-pong, as fast as they can
     (or one round trip every --active-interval-ms each), for --active-s seconds, while
     every idle connection is pinged once (a sweep with --sweep-conc pings in flight per
     group: a probe, not a load of its own): the latency of each (p50, p99 of the worst
     group, max), and of the active ones.
  5. close: everything closes; once the workers are quiet, their RSS again (malloc_trim
     gives back what closed connections freed).

Prints a summary and (--json) the raw figures. Loopback only; every step has a deadline.
`make bench-scale` runs the full size; tests/e2e/test_scale.py runs 5,000 as a test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from procfs import fd_count, meminfo_kib, proc_table, pss_kib, tree
from programs import Loadgen, Upstream, build
from relays import HOST, Relaycore

from relaycore.lab.base import free_port, wait_for
from relaycore.lab.pki import make_server_pki

FD_LIMIT = 20_000  # per process on the machine this was written for
WORKER_FDS = 64  # a worker's own fds besides its connections (relaycore.hostcheck: 32)
OPEN_CONC = 64  # connections in progress per loadgen while opening, and pings in flight
STEP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Settings:
    conns: int = 50_000
    active: int = 1_000
    workers: int = 8
    per_group: int = 10_000
    active_s: float = 90.0  # covers the sweep of 49,000 at a few ms each, 20 at a time
    sweep_conc: int = 4  # pings in flight per group: a probe, not a load of its own
    active_interval_s: float = 0.0  # 0: the busy connections ping-pong flat out

    @property
    def groups(self) -> int:
        return max(1, math.ceil((self.conns - self.active) / self.per_group))

    @property
    def max_connections(self) -> int:
        # What one worker may hold under the fd limit, two fds each.
        return (FD_LIMIT - WORKER_FDS) // 2


def group_sizes(s: Settings) -> list[int]:
    idle = s.conns - s.active
    base, extra = divmod(idle, s.groups)
    return [base + (1 if k < extra else 0) for k in range(s.groups)]


def worker_rss_kib(relay: Relaycore) -> list[int]:
    pids = [p for p in tree(proc_table(), relay.root_pids()) if p not in relay.root_pids()]
    out = []
    for pid in sorted(pids):
        with open(f"/proc/{pid}/status") as f:
            out += [int(line.split()[1]) for line in f if line.startswith("VmRSS:")]
    return out


def snapshot(relay: Relaycore) -> dict[str, Any]:
    pids = tree(proc_table(), relay.root_pids())
    return {
        "relay_pss_kib": pss_kib(pids),
        "relay_fds": fd_count(pids),
        "worker_rss_kib": worker_rss_kib(relay),
        "slab_kib": meminfo_kib("Slab"),
    }


def read_until(gen: Loadgen, prefix: str) -> dict[str, Any]:
    """The JSON after the next line of `gen` that starts with `prefix` ("sweep ")."""
    while (line := gen.next_line()) is not None:
        if line.startswith(prefix):
            result: dict[str, Any] = json.loads(line[len(prefix) :])
            return result
    raise RuntimeError(f"loadgen ended before a {prefix.strip()!r} line")


def tell(gen: Loadgen, command: str) -> None:
    assert gen.proc.stdin is not None
    gen.proc.stdin.write(command + "\n")
    gen.proc.stdin.flush()


def run(s: Settings, work: Path) -> dict[str, Any]:
    bins = build(work)
    pki = make_server_pki(work / "pki")
    upstreams = [Upstream(bins["upstream"], "echo", (pki.cert, pki.key)) for _ in range(s.groups)]
    relay = Relaycore(
        work / "relay",
        pki.ca,
        workers=s.workers,
        max_connections=s.max_connections,
        idle_s=3600,
    )
    routes = {f"g{k}": (free_port(), u.address) for k, u in enumerate(upstreams)}
    ports = [port for port, _ in routes.values()]
    result: dict[str, Any] = {"settings": asdict(s)}
    relay.start(routes)
    gens: list[Loadgen] = []
    try:
        for port in ports:  # warm-up: sessions cached, the code paged in
            warm = Loadgen(bins["loadgen"], ["idle", f"{HOST}:{port}", "--conns", "32"], 60)
            tell(warm, "close")
            if (res := warm.finish()).get("errors") or "error" in res:
                raise RuntimeError(f"warm-up failed: {res}")
        time.sleep(2.0)  # the workers go quiet and trim; a window, not a synchronisation
        result["before"] = snapshot(relay)

        t0 = time.monotonic()
        for port, n in zip(ports, group_sizes(s), strict=True):
            args = ["idle", f"{HOST}:{port}", "--conns", str(n), "--conc", str(OPEN_CONC)]
            args += ["--hold-timeout", str(STEP_TIMEOUT_S)]
            gens.append(Loadgen(bins["loadgen"], args, STEP_TIMEOUT_S))
        for g in gens:
            g.until(stop_at="held")
        result["open_s"] = time.monotonic() - t0
        time.sleep(2.0)  # tickets, timers and the kernel settle
        result["held"] = snapshot(relay)

        active = None
        if s.active:
            args = ["echo", f"{HOST}:{ports[0]}", "--conns", str(s.active), "--size", "64"]
            args += ["--warmup", "1", "--duration", str(s.active_s)]
            args += ["--interval", str(s.active_interval_s)]
            active = Loadgen(bins["loadgen"], args, STEP_TIMEOUT_S)
            active.until(stop_at="measure")
        t_sweep = time.monotonic()
        for g in gens:
            tell(g, f"ping {s.sweep_conc}")
        result["sweeps"] = [read_until(g, "sweep ") for g in gens]
        result["sweep_s"] = time.monotonic() - t_sweep
        if active is not None:
            result["active_covered_sweep"] = active.result is None and active.proc.poll() is None
            result["active"] = active.finish()
        for g in gens:
            tell(g, "close")
        result["idle"] = [g.finish() for g in gens]
        gens = []

        def quiet() -> bool:
            pids = tree(proc_table(), relay.root_pids())
            return fd_count(pids) <= result["before"]["relay_fds"]

        wait_for(quiet, 60, "the relay's fds back to where they were")
        time.sleep(3.0)  # quiet for QUIET_S, then a report: the trim shows
        result["closed"] = snapshot(relay)
    finally:
        for g in gens:
            g.proc.kill()
            g.finish()
        relay.stop()
        for u in upstreams:
            u.close()
    result["relay_problems"] = relay.problems
    return summarize(result)


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    held = sum(i.get("held", 0) for i in r["idle"])
    opened = held + r.get("active", {}).get("started", 0)
    before, after = r["before"], r["held"]
    sweeps = r["sweeps"]
    r["summary"] = {
        "connections": opened,
        "idle_held": held,
        "open_s": round(r["open_s"], 2),
        "pss_kib_per_conn": round((after["relay_pss_kib"] - before["relay_pss_kib"]) / held, 2),
        "slab_kib_per_conn": round((after["slab_kib"] - before["slab_kib"]) / held, 2),
        "sweep_pinged": sum(x["pinged"] for x in sweeps),
        "sweep_p50_ms": round(max(x["p50_us"] for x in sweeps) / 1000, 2),
        "sweep_p99_ms": round(max(x["p99_us"] for x in sweeps) / 1000, 2),
        "sweep_max_ms": round(max(x["max_us"] for x in sweeps) / 1000, 2),
        "active_p99_ms": round(r.get("active", {}).get("p99_us", 0) / 1000, 2),
        "active_rt_s": round(r.get("active", {}).get("rate", 0), 1),
        "errors": sum(x["errors"] for x in sweeps)
        + sum(i.get("errors", 0) for i in r["idle"])
        + r.get("active", {}).get("errors", 0),
        "lost": sum(i.get("lost", 0) for i in r["idle"]),
        "worker_rss_mib": {
            k: [round(v / 1024, 1) for v in r[k]["worker_rss_kib"]]
            for k in ("before", "held", "closed")
        },
    }
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Settings()
    p.add_argument("--conns", type=int, default=d.conns, help="connections in all")
    p.add_argument("--active", type=int, default=d.active, help="of those, busy ones")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--per-group", type=int, default=d.per_group, help="connections per port")
    p.add_argument("--active-s", type=float, default=d.active_s, help="seconds of activity")
    p.add_argument("--sweep-conc", type=int, default=d.sweep_conc, help="pings in flight per group")
    p.add_argument(
        "--active-interval-ms",
        type=float,
        default=d.active_interval_s * 1000,
        help="a busy connection's round trip every this often (default 0: flat out)",
    )
    p.add_argument("--json", type=Path, help="write every figure here")
    a = p.parse_args()
    s = Settings(
        a.conns,
        a.active,
        a.workers,
        a.per_group,
        a.active_s,
        a.sweep_conc,
        a.active_interval_ms / 1000,
    )
    if s.conns > s.workers * s.max_connections:
        sys.exit(f"bench-scale: {s.workers} workers hold at most {s.workers * s.max_connections}")
    with tempfile.TemporaryDirectory(prefix="relaycore-scale-") as tmp:
        r = run(s, Path(tmp))
    if a.json is not None:
        a.json.write_text(json.dumps(r, indent=1) + "\n")
    for k, v in r["summary"].items():
        print(f"{k:>20}: {v}")
    if r["relay_problems"]:
        print("relay warnings:", *r["relay_problems"], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
