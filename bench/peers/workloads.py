"""The measured runs of bench-peers: the settings, one loadgen run with the CPU counters
read at its "measure" and "done" lines (Bench.measure), the three suites (tls, plain,
idle), and the figures derived from each result."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perf import start_perf, start_syscall_count, stop_perf, stop_syscall_count
from procfs import (
    Table,
    cpu_by_process,
    cpu_s,
    fd_count,
    meminfo_kib,
    proc_table,
    pss_kib,
    sockstat_tcp,
    tree,
)
from programs import Loadgen, Upstream
from relays import Direct, Relay, Relaycore, Routes, Stunnel

from relaycore.lab.base import free_port

MiB = 1 << 20


@dataclass
class Settings:
    reps: int = 3
    bulk_bytes: int = 1024 * MiB  # per run, split over the connections
    plain_bytes: int = 2048 * MiB
    warmup_s: float = 0.5
    echo_s: float = 3.0
    churn_s: float = 4.0
    churn_conc: int = 16
    idle_conns: int = 10_000
    idle_procs: int = 2
    idle_conc: int = 32
    loadgen_timeout_s: float = 120.0
    # The tls and plain suites' workloads to measure (WORKLOADS); None: all of them.
    workloads: list[str] | None = None


# What --workloads picks from, in the tls and plain suites.
WORKLOADS = ("bulk1", "bulk8", "echo1", "echo32", "churn")


QUICK = Settings(
    reps=1,
    bulk_bytes=256 * MiB,
    plain_bytes=256 * MiB,
    warmup_s=0.2,
    echo_s=1.0,
    churn_s=1.0,
    idle_conns=2_000,
    loadgen_timeout_s=60.0,
)


@dataclass
class Bench:
    settings: Settings
    bins: dict[str, Path]
    pki_dir: Path
    tmp: Path
    peers: dict[str, Upstream]
    profile_dir: Path | None = None
    # suite -> relay name -> workload -> list of per-repetition results
    results: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.pki_dir / "ca.pem"

    def wants(self, workload: str) -> bool:
        return self.settings.workloads is None or workload in self.settings.workloads

    def add(self, suite: str, relay: Relay, workload: str, result: dict[str, Any]) -> None:
        self.labels.setdefault(suite, {})[relay.name] = relay.describe()
        runs = self.results.setdefault(suite, {}).setdefault(relay.name, {})
        runs.setdefault(workload, []).append(result)
        shown = {
            k: (round(v, 1) if isinstance(v, float) else v)
            for k, v in result.items()
            if k in SHOW_KEYS and not (k.startswith("p") and result.get("mode") == "bulk")
        }
        print(f"  {suite:5} {relay.name:18} {workload:8} {shown}", flush=True)

    def peer_roots(self) -> list[int]:
        return [p.proc.pid for p in self.peers.values()]

    # -- one measured loadgen run
    def measure(
        self, relay: Relay, args: list[str], peer: Upstream | None, workload: str
    ) -> dict[str, Any]:
        before = peer.stats() if peer is not None else None
        lg = Loadgen(self.bins["loadgen"], args, self.settings.loadgen_timeout_s)
        marks: dict[str, tuple[float, Table]] = {}
        perf: subprocess.Popen[bytes] | None = None
        counting: subprocess.Popen[bytes] | None = None
        counted = self.tmp / f"syscalls-{relay.name}-{workload}.txt"
        syscalls: list[int | None] = []

        window: dict[str, dict[str, Any]] = {}

        def on_phase(name: str) -> None:
            nonlocal perf, counting
            if name == "done" and counting is not None:
                syscalls.append(stop_syscall_count(counting, counted))
                counting = None
            marks[name] = (time.monotonic(), proc_table())
            if name == "measure":
                counting = start_syscall_count(tree(marks[name][1], relay.root_pids()), counted)
            if peer is not None and name in ("measure", "done"):
                window[name] = peer.stats()
            if self.profile_dir is not None and isinstance(relay, Relaycore):
                if name == "measure":
                    perf = start_perf(self.profile_dir, relay, workload, marks[name][1])
                elif name == "done" and perf is not None:
                    stop_perf(perf)

        lg.until(on_phase)
        result = lg.finish()
        if perf is not None and perf.poll() is None:
            stop_perf(perf)
        if counting is not None:
            stop_perf(counting)
        if "measure" in marks and "done" in marks:
            (t0, a), (t1, b) = marks["measure"], marks["done"]
            wall = t1 - t0
            roots = relay.root_pids()
            result["window_s"] = wall
            result["relay_cpu_s"] = cpu_s(b, roots) - cpu_s(a, roots) if roots else None
            result["peer_cpu_s"] = cpu_s(b, self.peer_roots()) - cpu_s(a, self.peer_roots())
            result["loadgen_window_cpu_s"] = cpu_s(b, [lg.proc.pid]) - cpu_s(a, [lg.proc.pid])
            if syscalls and syscalls[0] is not None:
                result["relay_syscalls"] = syscalls[0]
            if roots:
                result["relay_cpu_by_process"] = cpu_by_process(a, b, roots)
        elif "error" not in result:
            result["error"] = "no measure/done phase lines"
        if peer is not None and before is not None:
            after = peer.stats()
            result["peer_handshakes"] = after["handshakes"] - before["handshakes"]
            result["peer_resumed"] = after["resumed"] - before["resumed"]
            result["peer_other_suite"] = after["other"] - before["other"]
            result["peer_pq"] = after.get("pq", 0) - before.get("pq", 0)
            result["tls_negotiated"] = (
                f"{after['protocol']} {after['cipher']} {after.get('group', '?')}"
            )
            if "measure" in window and "done" in window:
                w0, w1 = window["measure"], window["done"]
                result["window_peer_handshakes"] = w1["handshakes"] - w0["handshakes"]
                result["window_peer_resumed"] = w1["resumed"] - w0["resumed"]
                result["window_peer_pq"] = w1.get("pq", 0) - w0.get("pq", 0)
        if isinstance(relay, Relaycore) and relay.problems:
            result["relay_problems"] = relay.problems[:5]
            relay.problems.clear()
        derive(result)
        return result

    def warm_up(self, relay: Relay, target: str, tls: list[str]) -> None:
        """64 MiB to the sink, not recorded: first handshakes, session caches, allocators."""
        warm = Loadgen(
            self.bins["loadgen"],
            ["bulk", target, "--conns", "1", "--bytes", str(64 * MiB), *tls],
            self.settings.loadgen_timeout_s,
        ).finish()
        if "error" in warm or warm.get("errors"):
            raise RuntimeError(f"warm-up failed through {relay.name}: {warm}")

    # -- suites
    def run_tls(self, relay: Relay) -> None:
        s = self.settings
        tls_peers = relay.tls
        sink = self.peers["tls-sink" if tls_peers else "sink"]
        echo = self.peers["tls-echo" if tls_peers else "echo"]
        routes: Routes = {
            "sink": (free_port(), sink.address),
            "echo": (free_port(), echo.address),
        }
        relay.start(routes)
        try:
            addr = {k: f"{v[0][0]}:{v[0][1]}" for k, v in relay.addresses(routes).items()}
            tls = ["--tls", str(self.ca)] if isinstance(relay, Direct) and relay.tls else []
            self.warm_up(relay, addr["sink"], tls)
            for conns in (1, 8):
                if not self.wants(f"bulk{conns}"):
                    continue
                args = ["bulk", addr["sink"], "--conns", str(conns)]
                args += ["--bytes", str(s.bulk_bytes // conns), *tls]
                res = self.measure(relay, args, sink if tls_peers else None, f"bulk{conns}")
                self.add("tls", relay, f"bulk{conns}", res)
            for conns in (1, 32):
                if not self.wants(f"echo{conns}"):
                    continue
                args = ["echo", addr["echo"], "--conns", str(conns), "--size", "64"]
                args += ["--warmup", str(s.warmup_s), "--duration", str(s.echo_s), *tls]
                res = self.measure(relay, args, echo if tls_peers else None, f"echo{conns}")
                self.add("tls", relay, f"echo{conns}", res)
            if self.wants("churn"):
                args = ["churn", addr["echo"], "--conc", str(s.churn_conc), "--size", "64"]
                args += ["--warmup", str(s.warmup_s), "--duration", str(s.churn_s), *tls]
                res = self.measure(relay, args, echo if tls_peers else None, "churn")
                self.add("tls", relay, "churn", res)
        finally:
            relay.stop()

    def run_handshake(self, relay: Relay) -> None:
        """Churn against the echo peer that resumes nothing: each connection a full
        handshake with the relay's forced group (the peers' figures are in the tls suite)."""
        s = self.settings
        echo = self.peers["tls-echo-full"]
        routes: Routes = {"echo": (free_port(), echo.address)}
        relay.start(routes)
        try:
            addr = relay.addresses(routes)["echo"][0]
            args = ["churn", f"{addr[0]}:{addr[1]}", "--conc", str(s.churn_conc), "--size", "64"]
            args += ["--warmup", str(s.warmup_s), "--duration", str(s.churn_s)]
            res = self.measure(relay, args, echo, "churn-full")
            self.add("handshake", relay, "churn-full", res)
        finally:
            relay.stop()

    def run_plain(self, relay: Relay) -> None:
        s = self.settings
        sink = self.peers["sink"]
        routes: Routes = {"sink": (free_port(), sink.address)}
        relay.start(routes)
        try:
            addr = relay.addresses(routes)["sink"][0]
            target = f"{addr[0]}:{addr[1]}"
            self.warm_up(relay, target, [])
            for conns in (1, 8):
                if not self.wants(f"bulk{conns}"):
                    continue
                args = ["bulk", target, "--conns", str(conns)]
                args += ["--bytes", str(s.plain_bytes // conns)]
                res = self.measure(relay, args, None, f"bulk{conns}")
                self.add("plain", relay, f"bulk{conns}", res)
        finally:
            relay.stop()

    def run_idle(self, relay: Relay) -> None:
        s = self.settings
        echo = self.peers["tls-echo"]
        routes: Routes = {"echo": (free_port(), echo.address)}
        if isinstance(relay, Stunnel):
            relay.set_extra_ports({"echo": [free_port() for _ in range(s.idle_procs - 1)]})
        relay.start(routes)
        try:
            addrs = relay.addresses(routes)["echo"]
            tls = ["--tls", str(self.ca)] if isinstance(relay, Direct) else []
            for k in range(s.idle_procs):  # warm-up: a few connections through each address
                a = addrs[k % len(addrs)]
                warm = Loadgen(
                    self.bins["loadgen"],
                    ["idle", f"{a[0]}:{a[1]}", "--conns", "32", "--conc", "8", *tls],
                    s.loadgen_timeout_s,
                )
                if warm.proc.stdin is not None:
                    warm.proc.stdin.close()
                    warm.proc.stdin = None
                res = warm.finish()
                if "error" in res or res.get("errors"):
                    raise RuntimeError(f"idle warm-up failed through {relay.name}: {res}")
            time.sleep(1.0)
            before = self.idle_snapshot(relay)
            per_proc = s.idle_conns // s.idle_procs
            t0 = time.monotonic()
            gens = []
            for k in range(s.idle_procs):
                a = addrs[k % len(addrs)]
                args = ["idle", f"{a[0]}:{a[1]}", "--conns", str(per_proc)]
                args += ["--conc", str(s.idle_conc), "--hold-timeout", "120", *tls]
                gens.append(Loadgen(self.bins["loadgen"], args, s.loadgen_timeout_s))
            for g in gens:
                g.until(stop_at="held")
            open_s = time.monotonic() - t0
            time.sleep(2.0)  # let TLS tickets, timers and the kernel settle
            after = self.idle_snapshot(relay)
            for g in gens:
                assert g.proc.stdin is not None
                try:
                    g.proc.stdin.write("close\n")
                    g.proc.stdin.flush()
                except BrokenPipeError:
                    pass
            outs = [g.finish() for g in gens]
        finally:
            relay.stop()
        held = sum(o.get("held", 0) for o in outs)
        res: dict[str, Any] = {
            "conns": held,
            "open_s": open_s,
            "errors": sum(o.get("errors", 0) for o in outs),
            "lost": sum(o.get("lost", 0) for o in outs),
            "before": before,
            "after": after,
            "peer_open_delta": after["peer_open"] - before["peer_open"],
        }
        errs = [o["error"] for o in outs if "error" in o]
        if errs:
            res["error"] = "; ".join(errs)
        if held:
            if not isinstance(relay, Direct):
                res["pss_kib_per_conn"] = (after["relay_pss_kib"] - before["relay_pss_kib"]) / held
                res["relay_fds"] = after["relay_fds"]
            res["slab_kib_per_conn"] = (after["slab_kib"] - before["slab_kib"]) / held
            res["tcp_mem_pages"] = after["tcp"].get("mem", 0) - before["tcp"].get("mem", 0)
        self.add("idle", relay, "idle", res)

    def idle_snapshot(self, relay: Relay) -> dict[str, Any]:
        pids = tree(proc_table(), relay.root_pids())
        return {
            "relay_pss_kib": pss_kib(pids),
            "relay_fds": fd_count(pids),
            "relay_processes": len(pids),
            "slab_kib": meminfo_kib("Slab"),
            "slab_unreclaimable_kib": meminfo_kib("SUnreclaim"),
            "tcp": sockstat_tcp(),
            "peer_open": self.peers["tls-echo"].stats()["open"],
        }


SHOW_KEYS = (
    "MB_s",
    "rt_s",
    "conn_s",
    "p50_us",
    "p99_us",
    "cpu_us_per_MB",
    "cpu_us_per_rt",
    "syscalls_per_MB",
    "syscalls_per_rt",
    "cpu_us_per_conn",
    "resumed_share",
    "pq_share",
    "pss_kib_per_conn",
    "slab_kib_per_conn",
    "open_s",
    "errors",
    "error",
)


def derive(r: dict[str, Any]) -> None:
    """Rates and CPU per unit from a loadgen result and the CPU times of its window."""
    mode = r.get("mode")
    units = r.get("units", 0)
    if not units or "error" in r:
        return
    cpu = r.get("relay_cpu_s")
    if mode == "bulk":
        mb = units / 1e6
        r["MB_s"] = r["rate"] / 1e6
        if cpu is not None:
            r["cpu_us_per_MB"] = cpu * 1e6 / mb
        if "relay_syscalls" in r:
            r["syscalls_per_MB"] = r["relay_syscalls"] / mb
        r["peer_cpu_us_per_MB"] = r["peer_cpu_s"] * 1e6 / mb
    elif mode == "echo":
        r["rt_s"] = r["rate"]
        if cpu is not None:
            r["cpu_us_per_rt"] = cpu * 1e6 / units
        if "relay_syscalls" in r:
            r["syscalls_per_rt"] = r["relay_syscalls"] / units
    elif mode == "churn":
        r["conn_s"] = r["rate"]
        if cpu is not None:
            r["cpu_us_per_conn"] = cpu * 1e6 / units
        # Counted at the peer over the measured window (the warm-up's first handshakes,
        # with caches still cold, are not in it); the direct TLS client counts its own.
        hs = r.get("window_peer_handshakes") or r.get("tls_handshakes")
        res = (
            r.get("window_peer_resumed")
            if r.get("window_peer_handshakes")
            else r.get("tls_resumed")
        )
        if hs:
            r["resumed_share"] = res / hs
        if r.get("window_peer_handshakes"):
            r["pq_share"] = r.get("window_peer_pq", 0) / r["window_peer_handshakes"]
        if r.get("peer_handshakes"):
            r["resumed_share_whole_run"] = r["peer_resumed"] / r["peer_handshakes"]
    if r.get("window_s"):
        r["peer_cpu_util"] = r["peer_cpu_s"] / r["window_s"]
        r["loadgen_cpu_util"] = r["loadgen_window_cpu_s"] / r["window_s"]
        if cpu is not None:
            r["relay_cpu_util"] = cpu / r["window_s"]
