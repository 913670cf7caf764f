"""`make bench-peers`: relaycore side by side with stunnel, HAProxy, nginx and socat.

    .venv/bin/python bench/peers/run.py [--reps 3] [--only relaycore,haproxy] [--quick]
                                        [--suites tls,plain,idle] [--profile DIR]

Builds bench/peers/upstream.c (epoll sink/echo, plain or TLS) and bench/peers/loadgen.c
(epoll load generator) with cc, makes a throwaway CA, starts the upstream peers once, and
then, for each repetition, runs every workload through each relay in turn (the order
rotates from one repetition to the next), one relay at a time:

  tls    (a) bulk plain->TLS MB/s, 1 and 8 connections; (b) 64-byte echo on one kept
         connection; (c) the same on 32; (d) churn: connect, TLS handshake upstream,
         64-byte echo, close, 16 at a time. Relays: relaycore, stunnel, HAProxy, nginx;
         references: direct (plain, to the plain peers) and direct TLS (the client
         speaks TLS itself).
  plain  (f) plain passthrough MB/s, 1 and 8 connections: relaycore copy and splice,
         socat, HAProxy (with and without splice-auto), nginx, direct.
  idle   (e) 10,000 idle TLS connections (each did one echo): the relay's memory per
         connection (PSS over its processes, /proc/PID/smaps_rollup) and the kernel's
         (/proc/meminfo Slab), against the direct TLS reference.

For every window the relay's CPU time (utime+stime over its process tree, from
/proc/PID/stat, reaped children included) gives the CPU per unit of work. Results: a
markdown table and the raw JSON in bench/results/peers-YYYY-MM-DD.{md,json} (or --out).
Loopback only; every loop is bounded in count and time. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relays import (
    HOST,
    NGINX_STREAM_MODULE,
    Direct,
    HAProxy,
    Nginx,
    Relay,
    Relaycore,
    Routes,
    Socat,
    Stunnel,
)

from relaycore.lab.base import free_port
from relaycore.lab.pki import make_server_pki

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20
PEER_NAMES = ("stunnel", "haproxy", "nginx")  # the TLS peers of relaycore, for the ratios


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


# ---------------------------------------------------------------------------------------
# /proc: CPU time and memory of process trees


@dataclass(frozen=True)
class Proc:
    ppid: int
    ticks: int  # utime + stime + cutime + cstime (reaped children included)
    comm: str


Table = dict[int, Proc]


def proc_table() -> Table:
    """Every process now, from /proc/PID/stat."""
    table: Table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        end = raw.rindex(b")")
        comm = raw[raw.index(b"(") + 1 : end].decode(errors="replace")
        fields = raw[end + 2 :].split()
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(entry.name)] = Proc(int(fields[1]), ticks, comm)
    return table


def tree(table: Table, roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    out: list[int] = []
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_s(table: Table, roots: list[int]) -> float:
    return sum(table[p].ticks for p in tree(table, roots)) / CLK_TCK


def cpu_by_process(a: Table, b: Table, roots: list[int]) -> dict[str, float]:
    """CPU seconds of each process of the tree between two tables ("comm pid" -> s)."""
    out = {}
    for pid in tree(b, roots):
        before = a[pid].ticks if pid in a else 0
        out[f"{b[pid].comm} {pid}"] = (b[pid].ticks - before) / CLK_TCK
    return out


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def fd_count(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def sockstat_tcp() -> dict[str, int]:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                words = line.split()[1:]
                return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
    return {}


# ---------------------------------------------------------------------------------------
# The C programs: the upstream peers and the load generator


def build(tmp: Path) -> dict[str, Path]:
    cc = shutil.which("cc")
    if cc is None:
        sys.exit("bench-peers: a C compiler is needed (apt-get install gcc libssl-dev)")
    out = {}
    for name in ("upstream", "loadgen"):
        binary = tmp / name
        res = subprocess.run(
            [cc, "-O2", "-Wall", "-o", str(binary), str(HERE / f"{name}.c"), "-lssl", "-lcrypto"],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            sys.exit(f"bench-peers: cc {name}.c failed (libssl-dev?):\n{res.stderr}")
        out[name] = binary
    return out


class Upstream:
    """bench/peers/upstream.c: `upstream sink|echo [--tls CERT KEY]`, 2 processes."""

    def __init__(self, binary: Path, mode: str, tls: tuple[Path, Path] | None) -> None:
        args = [str(binary), mode, "--procs", "2"]
        if tls is not None:
            args += ["--tls", str(tls[0]), str(tls[1])]
        self.name = ("tls-" if tls else "") + mode
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            sys.exit(f"bench-peers: upstream {self.name} did not start (got {line!r})")
        self.address = (HOST, int(line))

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        words = self.proc.stdout.readline().split()
        return {
            words[i]: (int(words[i + 1]) if words[i + 1].isdigit() else words[i + 1])
            for i in range(0, len(words) - 1, 2)
        }

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Loadgen:
    """One bench/peers/loadgen.c run: its "phase" lines go to a queue as they come."""

    def __init__(self, binary: Path, args: list[str], timeout_s: float) -> None:
        self.proc = subprocess.Popen(
            [str(binary), *args, "--timeout", str(timeout_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.result: dict[str, Any] | None = None
        self.deadline = time.monotonic() + timeout_s + 15
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next_line(self) -> str | None:
        """The next line, or None at EOF; the run is killed past its deadline."""
        try:
            return self.lines.get(timeout=max(0.1, self.deadline - time.monotonic()))
        except queue.Empty:
            self.proc.kill()
            return None

    def until(self, on_phase: Callable[[str], None] | None = None, stop_at: str = "") -> None:
        """Read lines, calling on_phase for each phase line, up to phase `stop_at` or the
        result (kept in self.result)."""
        while True:
            line = self.next_line()
            if line is None:
                return
            if line.startswith("phase "):
                name = line.split()[1]
                if on_phase is not None:
                    on_phase(name)
                if name == stop_at:
                    return
            elif line.startswith("result "):
                self.result = json.loads(line[len("result ") :])
                return

    def finish(self) -> dict[str, Any]:
        if self.result is None:
            self.until()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().strip()
        if self.result is None:
            return {"error": f"loadgen exited {self.proc.returncode} without a result: {err}"}
        if self.proc.returncode not in (0, None) and "error" not in self.result:
            self.result["error"] = f"loadgen exit code {self.proc.returncode}"
        return self.result


# ---------------------------------------------------------------------------------------
# The run


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

        window: dict[str, dict[str, Any]] = {}

        def on_phase(name: str) -> None:
            nonlocal perf
            marks[name] = (time.monotonic(), proc_table())
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
        if "measure" in marks and "done" in marks:
            (t0, a), (t1, b) = marks["measure"], marks["done"]
            wall = t1 - t0
            roots = relay.root_pids()
            result["window_s"] = wall
            result["relay_cpu_s"] = cpu_s(b, roots) - cpu_s(a, roots) if roots else None
            result["peer_cpu_s"] = cpu_s(b, self.peer_roots()) - cpu_s(a, self.peer_roots())
            result["loadgen_window_cpu_s"] = cpu_s(b, [lg.proc.pid]) - cpu_s(a, [lg.proc.pid])
            if roots:
                result["relay_cpu_by_process"] = cpu_by_process(a, b, roots)
        elif "error" not in result:
            result["error"] = "no measure/done phase lines"
        if peer is not None and before is not None:
            after = peer.stats()
            result["peer_handshakes"] = after["handshakes"] - before["handshakes"]
            result["peer_resumed"] = after["resumed"] - before["resumed"]
            result["peer_other_suite"] = after["other"] - before["other"]
            result["tls_negotiated"] = f"{after['protocol']} {after['cipher']}"
            if "measure" in window and "done" in window:
                w0, w1 = window["measure"], window["done"]
                result["window_peer_handshakes"] = w1["handshakes"] - w0["handshakes"]
                result["window_peer_resumed"] = w1["resumed"] - w0["resumed"]
        if isinstance(relay, Relaycore) and relay.problems:
            result["relay_problems"] = relay.problems[:5]
            relay.problems.clear()
        derive(result)
        return result

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
            # Warm-up, not recorded: first handshakes, session caches, allocators.
            warm = Loadgen(
                self.bins["loadgen"],
                ["bulk", addr["sink"], "--conns", "1", "--bytes", str(64 * MiB), *tls],
                s.loadgen_timeout_s,
            ).finish()
            if "error" in warm or warm.get("errors"):
                raise RuntimeError(f"warm-up failed through {relay.name}: {warm}")
            for conns in (1, 8):
                args = ["bulk", addr["sink"], "--conns", str(conns)]
                args += ["--bytes", str(s.bulk_bytes // conns), *tls]
                res = self.measure(relay, args, sink if tls_peers else None, f"bulk{conns}")
                self.add("tls", relay, f"bulk{conns}", res)
            for conns in (1, 32):
                args = ["echo", addr["echo"], "--conns", str(conns), "--size", "64"]
                args += ["--warmup", str(s.warmup_s), "--duration", str(s.echo_s), *tls]
                res = self.measure(relay, args, echo if tls_peers else None, f"echo{conns}")
                self.add("tls", relay, f"echo{conns}", res)
            args = ["churn", addr["echo"], "--conc", str(s.churn_conc), "--size", "64"]
            args += ["--warmup", str(s.warmup_s), "--duration", str(s.churn_s), *tls]
            res = self.measure(relay, args, echo if tls_peers else None, "churn")
            self.add("tls", relay, "churn", res)
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
            warm = Loadgen(
                self.bins["loadgen"],
                ["bulk", target, "--conns", "1", "--bytes", str(64 * MiB)],
                s.loadgen_timeout_s,
            ).finish()
            if "error" in warm or warm.get("errors"):
                raise RuntimeError(f"warm-up failed through {relay.name}: {warm}")
            for conns in (1, 8):
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
    "cpu_us_per_conn",
    "resumed_share",
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
        r["peer_cpu_us_per_MB"] = r["peer_cpu_s"] * 1e6 / mb
    elif mode == "echo":
        r["rt_s"] = r["rate"]
        if cpu is not None:
            r["cpu_us_per_rt"] = cpu * 1e6 / units
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
        if r.get("peer_handshakes"):
            r["resumed_share_whole_run"] = r["peer_resumed"] / r["peer_handshakes"]
    if r.get("window_s"):
        r["peer_cpu_util"] = r["peer_cpu_s"] / r["window_s"]
        r["loadgen_cpu_util"] = r["loadgen_window_cpu_s"] / r["window_s"]
        if cpu is not None:
            r["relay_cpu_util"] = cpu / r["window_s"]


# ---------------------------------------------------------------------------------------
# Profiling (optional): perf record on relaycore's workers during each measured window


def start_perf(
    out_dir: Path, relay: Relay, workload: str, table: Table
) -> subprocess.Popen[bytes] | None:
    if shutil.which("perf") is None:
        return None
    roots = relay.root_pids()
    workers = [p for p in tree(table, roots) if p not in roots]
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"{relay.name}-{workload}.data"
    return subprocess.Popen(
        [
            "perf",
            "record",
            "-q",
            "-F",
            "999",
            "-g",
            "-o",
            str(data),
            "-p",
            ",".join(map(str, workers)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profiles(out_dir: Path) -> None:
    """perf report of each window: by shared object, then by symbol (self time)."""
    for data in sorted(out_dir.glob("*.data")):
        text = []
        for sort in ("dso", "dso,sym"):
            res = subprocess.run(
                [
                    *("perf", "report", "-i", str(data), "--stdio", "--no-children"),
                    *("-g", "none", "--sort", sort, "--percent-limit", "0.5"),
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            text.append(res.stdout)
        data.with_suffix(".txt").write_text("\n".join(text))
        print(f"profile: {data.with_suffix('.txt')}")


def stop_perf(perf: subprocess.Popen[bytes]) -> None:
    perf.send_signal(signal.SIGINT)
    try:
        perf.wait(timeout=30)
    except subprocess.TimeoutExpired:
        perf.kill()
        perf.wait()


# ---------------------------------------------------------------------------------------
# Aggregation and the report


def stats_of(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def metric(
    bench: Bench, suite: str, relay: str, workload: str, key: str
) -> dict[str, float] | None:
    runs = bench.results.get(suite, {}).get(relay, {}).get(workload, [])
    return stats_of([r[key] for r in runs if key in r and "error" not in r])


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def cell(st: dict[str, float] | None, digits: int = 0, spread: bool = True) -> str:
    if st is None:
        return "-"
    if not spread or st["min"] == st["max"]:
        return fmt(st["median"], digits)
    return f"{fmt(st['median'], digits)} ({fmt(st['min'], digits)}-{fmt(st['max'], digits)})"


def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> str:
    if a is None or b is None or not b["median"]:
        return "-"
    return f"{a['median'] / b['median']:.2f}"


TLS_ROWS = [
    # workload, key, label, digits, higher is better
    ("bulk1", "MB_s", "(a) bulk plain→TLS, 1 connection: MB/s", 0, True),
    ("bulk1", "cpu_us_per_MB", "(a) … relay CPU µs per MB", 0, False),
    ("bulk8", "MB_s", "(a) bulk plain→TLS, 8 connections: MB/s", 0, True),
    ("bulk8", "cpu_us_per_MB", "(a) … relay CPU µs per MB", 0, False),
    ("echo1", "rt_s", "(b) 64 B echo, 1 connection: round trips/s", 0, True),
    ("echo1", "p50_us", "(b) … p50 latency µs", 0, False),
    ("echo1", "p99_us", "(b) … p99 latency µs", 0, False),
    ("echo1", "cpu_us_per_rt", "(b) … relay CPU µs per round trip", 1, False),
    ("echo32", "rt_s", "(c) 64 B echo, 32 connections: round trips/s", 0, True),
    ("echo32", "p50_us", "(c) … p50 latency µs", 0, False),
    ("echo32", "p99_us", "(c) … p99 latency µs", 0, False),
    ("echo32", "cpu_us_per_rt", "(c) … relay CPU µs per round trip", 1, False),
    ("churn", "conn_s", "(d) churn, 16 at a time: connections/s", 0, True),
    ("churn", "p50_us", "(d) … p50 connection latency µs", 0, False),
    ("churn", "cpu_us_per_conn", "(d) … relay CPU µs per connection", 0, False),
    ("churn", "resumed_share", "(d) … handshakes resumed (at the peer), %", 1, True),
    ("churn", "resumed_share_whole_run", "(d) … resumed, whole run with warm-up, %", 1, True),
]
TLS_COLS = ["relaycore", "stunnel", "haproxy", "nginx"]
TLS_REFS = ["direct", "direct-tls"]
PLAIN_COLS = [
    "relaycore-copy",
    "relaycore-splice",
    "socat",
    "haproxy",
    "haproxy-splice",
    "nginx",
    "direct",
]
IDLE_COLS = ["relaycore", "stunnel", "haproxy", "nginx", "direct-tls"]
HEAD = {
    "relaycore": "relaycore",
    "stunnel": "stunnel",
    "haproxy": "HAProxy",
    "nginx": "nginx",
    "direct": "direct, plain",
    "direct-tls": "direct, client TLS",
    "relaycore-copy": 'relaycore copy (`splice = "off"`)',
    "relaycore-splice": 'relaycore splice (`splice = "always"`)',
    "socat": "socat",
    "haproxy-splice": "HAProxy splice-auto",
}


def scaled(st: dict[str, float] | None, factor: float) -> dict[str, float] | None:
    return None if st is None else {k: v * factor for k, v in st.items()}


def tls_table(bench: Bench) -> list[str]:
    cols = [c for c in TLS_COLS if c in bench.results.get("tls", {})]
    refs = [c for c in TLS_REFS if c in bench.results.get("tls", {})]
    peers = [c for c in cols if c != "relaycore"]
    head = ["workload"] + [HEAD[c] for c in cols]
    head += [f"relaycore / {HEAD[p]}" for p in peers] + [HEAD[r] for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, key, label, digits, _ in TLS_ROWS:
        factor = 100.0 if key.startswith("resumed_share") else 1.0
        sts = {c: scaled(metric(bench, "tls", c, workload, key), factor) for c in cols + refs}
        row = [label] + [cell(sts[c], digits) for c in cols]
        row += [ratio(sts.get("relaycore"), sts[p]) for p in peers]
        row += [cell(sts[r], digits) for r in refs]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def plain_table(bench: Bench) -> list[str]:
    have = bench.results.get("plain", {})
    cols = [c for c in PLAIN_COLS if c in have]
    head = ["workload"] + [HEAD[c] for c in cols]
    rc = "relaycore-splice" if "relaycore-splice" in have else "relaycore-copy"
    others = [c for c in ("socat", "haproxy", "haproxy-splice", "nginx") if c in have]
    head += [f"relaycore splice / {HEAD[o]}" for o in others] if rc in have else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [
        ("bulk1", "MB_s", "(f) plain, 1 connection: MB/s", 0),
        ("bulk1", "cpu_us_per_MB", "(f) … relay CPU µs per MB", 0),
        ("bulk8", "MB_s", "(f) plain, 8 connections: MB/s", 0),
        ("bulk8", "cpu_us_per_MB", "(f) … relay CPU µs per MB", 0),
    ]
    for workload, key, label, digits in rows:
        sts = {c: metric(bench, "plain", c, workload, key) for c in cols}
        row = [label] + [cell(sts[c], digits) for c in cols]
        if rc in have:
            row += [ratio(sts[rc], sts[o]) for o in others]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def idle_table(bench: Bench) -> list[str]:
    have = bench.results.get("idle", {})
    cols = [c for c in IDLE_COLS if c in have]
    direct_slab = metric(bench, "idle", "direct-tls", "idle", "slab_kib_per_conn")
    base = direct_slab["median"] if direct_slab is not None else None

    def total(relay: str) -> dict[str, float] | None:
        if base is None:
            return None
        runs = bench.results["idle"].get(relay, {}).get("idle", [])
        return stats_of(
            [
                r["pss_kib_per_conn"] + r["slab_kib_per_conn"] - base
                for r in runs
                if "pss_kib_per_conn" in r and "error" not in r
            ]
        )

    lines = [
        "| relay | processes | user memory (PSS), KiB per connection | kernel Slab, KiB per"
        " connection | Slab beyond direct TLS | user + kernel beyond direct |"
        " relaycore / this, PSS | relaycore / this, user + kernel |"
        f" seconds to open {bench.settings.idle_conns:,} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rc_pss = metric(bench, "idle", "relaycore", "idle", "pss_kib_per_conn")
    rc_total = total("relaycore")
    for c in cols:
        pss = metric(bench, "idle", c, "idle", "pss_kib_per_conn")
        slab = metric(bench, "idle", c, "idle", "slab_kib_per_conn")
        beyond = None
        if slab is not None and base is not None and c != "direct-tls":
            beyond = {k: v - base for k, v in slab.items()}
        both = total(c) if c != "direct-tls" else None
        opened = metric(bench, "idle", c, "idle", "open_s")
        mine = c in ("relaycore", "direct-tls")
        lines.append(
            f"| {HEAD[c]} | {bench.labels['idle'].get(c, c)} | {cell(pss, 1)} | {cell(slab, 1)}"
            f" | {cell(beyond, 1)} | {cell(both, 1)} | {'-' if mine else ratio(rc_pss, pss)}"
            f" | {'-' if mine else ratio(rc_total, both)} | {cell(opened, 1)} |"
        )
    return lines


def summary_table(bench: Bench) -> list[str]:
    """One table of medians: every workload, relaycore and each peer, relaycore / best."""
    tls = bench.results.get("tls", {})
    peers = [p for p in PEER_NAMES if p in tls]
    head = ["workload", "relaycore", *[HEAD[p] for p in peers], "socat", "relaycore / best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def med(suite: str, relay: str, workload: str, key: str) -> float | None:
        st = metric(bench, suite, relay, workload, key)
        return None if st is None else st["median"]

    def row(label: str, values: dict[str, float | None], high: bool, digits: int = 0) -> None:
        rc = values.get("relaycore")
        others = [v for k, v in values.items() if k != "relaycore" and v is not None]
        best = (max(others) if high else min(others)) if others else None
        r = f"{rc / best:.2f}" if rc is not None and best else "-"
        cells = [fmt(values.get(c), digits) for c in ["relaycore", *peers, "socat"]]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r} |")

    for workload, key, label, digits, high in TLS_ROWS:
        if key == "resumed_share_whole_run":
            continue
        factor = 100.0 if key.startswith("resumed_share") else 1.0
        vals = {}
        for r in ["relaycore", *peers]:
            v = med("tls", r, workload, key)
            vals[r] = None if v is None else v * factor
        row(label, vals, high, digits)
    for conns in (1, 8):
        for key, what, high in (
            ("MB_s", "MB/s", True),
            ("cpu_us_per_MB", "relay CPU µs/MB", False),
        ):
            vals = {
                "relaycore": med("plain", "relaycore-splice", f"bulk{conns}", key),
                "haproxy": med("plain", "haproxy", f"bulk{conns}", key),
                "nginx": med("plain", "nginx", f"bulk{conns}", key),
                "socat": med("plain", "socat", f"bulk{conns}", key),
            }
            s = "" if conns == 1 else "s"
            row(f"(f) plain, {conns} connection{s}, relaycore splice: {what}", vals, high)
    idle = {r: med("idle", r, "idle", "pss_kib_per_conn") for r in ["relaycore", *peers]}
    if any(v is not None for v in idle.values()):
        row("(e) idle TLS connection: relay PSS, KiB", idle, False, 1)
    return lines


def headroom(bench: Bench) -> list[str]:
    """Is the load generator (or the peer) the limit? The direct rates, and the CPU share
    the load generator and the peers used while relaycore was measured."""
    rows = [
        ("bulk1", "MB_s", "(a) bulk, 1 connection, MB/s"),
        ("bulk8", "MB_s", "(a) bulk, 8 connections, MB/s"),
        ("echo1", "rt_s", "(b) echo, 1 connection, round trips/s"),
        ("echo32", "rt_s", "(c) echo, 32 connections, round trips/s"),
        ("churn", "conn_s", "(d) churn, connections/s"),
    ]
    lines = [
        "| workload | relaycore | direct, plain | direct, client TLS | load generator CPU"
        " while relaycore ran | upstream peer CPU while relaycore ran | relaycore CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, key, label in rows:
        rc = metric(bench, "tls", "relaycore", workload, key)
        util = [
            metric(bench, "tls", "relaycore", workload, k)
            for k in ("loadgen_cpu_util", "peer_cpu_util", "relay_cpu_util")
        ]
        cells = [
            cell(rc, spread=False),
            cell(metric(bench, "tls", "direct", workload, key), spread=False),
            cell(metric(bench, "tls", "direct-tls", workload, key), spread=False),
            *["-" if u is None else f"{u['median'] * 100:.0f}% of a core" for u in util],
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def targets(bench: Bench) -> tuple[list[str], list[dict[str, Any]]]:
    """The issue's targets against the best peer of the same run (reported, not asserted)."""
    peers = [p for p in PEER_NAMES if p in bench.results.get("tls", {})]
    out: list[dict[str, Any]] = []

    def best(workload: str, key: str, high: bool) -> tuple[str, float] | None:
        vals = [
            (p, st["median"])
            for p in peers
            if (st := metric(bench, "tls", p, workload, key)) is not None
        ]
        if not vals:
            return None
        return max(vals, key=lambda v: v[1]) if high else min(vals, key=lambda v: v[1])

    def check(name: str, workload: str, key: str, high: bool, limit: float, extra: str = ""):
        rc = metric(bench, "tls", "relaycore", workload, key)
        b = best(workload, key, high)
        if rc is None or b is None:
            return
        r = rc["median"] / b[1]
        ok = r >= limit if high else r <= limit
        out.append(
            {
                "target": name,
                "relaycore": rc["median"],
                "best_peer": b[0],
                "best_peer_value": b[1],
                "ratio": r,
                "limit": limit,
                "met": ok,
                "note": extra,
            }
        )

    check("bulk MB/s, 1 connection >= 1.5x best peer", "bulk1", "MB_s", True, 1.5)
    check("bulk MB/s, 8 connections >= 1.5x best peer", "bulk8", "MB_s", True, 1.5)
    check(
        "echo relay CPU per round trip, 1 connection <= 0.5x best",
        "echo1",
        "cpu_us_per_rt",
        False,
        0.5,
    )
    check(
        "echo relay CPU per round trip, 32 connections <= 0.5x best",
        "echo32",
        "cpu_us_per_rt",
        False,
        0.5,
    )
    share = metric(bench, "tls", "relaycore", "churn", "resumed_share")
    share_ok = share is not None and share["min"] >= 0.95
    check(
        "churn relay CPU per connection <= 0.66x best, >= 95% resumed",
        "churn",
        "cpu_us_per_conn",
        False,
        0.66,
        f"relaycore resumed {fmt(share and share['min'] * 100, 1)}% (lowest run)",
    )
    if out and out[-1]["target"].startswith("churn") and not share_ok:
        out[-1]["met"] = False
    rc = metric(bench, "idle", "relaycore", "idle", "pss_kib_per_conn")
    hap = metric(bench, "idle", "haproxy", "idle", "pss_kib_per_conn")
    if rc is not None and hap is not None:
        r = rc["median"] / hap["median"]
        out.append(
            {
                "target": "idle memory (PSS) per TLS connection <= 0.5x HAProxy's",
                "relaycore": rc["median"],
                "best_peer": "haproxy",
                "best_peer_value": hap["median"],
                "ratio": r,
                "limit": 0.5,
                "met": r <= 0.5,
                "note": "",
            }
        )
    lines = [
        "| target | relaycore | best peer | ratio | met? |",
        "|---|---|---|---|---|",
    ]
    for t in out:
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(
            f"| {t['target']} | {fmt(t['relaycore'], 1)} | {HEAD[t['best_peer']]}:"
            f" {fmt(t['best_peer_value'], 1)} | {t['ratio']:.2f} |"
            f" {'yes' if t['met'] else '**no**'}{note} |"
        )
    return lines, out


def negotiated(bench: Bench) -> list[str]:
    lines = []
    for relay, runs in bench.results.get("tls", {}).items():
        seen = {r["tls_negotiated"] for rs in runs.values() for r in rs if "tls_negotiated" in r}
        other = sum(r.get("peer_other_suite", 0) for rs in runs.values() for r in rs)
        hs = sum(r.get("peer_handshakes", 0) for rs in runs.values() for r in rs)
        if seen:
            lines.append(
                f"* {HEAD.get(relay, relay)}: {', '.join(sorted(seen))}"
                f" ({hs:,} handshakes counted at the peer, {other} with anything else)"
            )
    return lines


def environment() -> dict[str, str]:
    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else "?"

    def git(*args: str) -> str:
        return version(["git", "-C", str(REPO), *args])

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory_gib": f"{meminfo_kib('MemTotal') / MiB:.0f}",
        "python": platform.python_version(),
        "openssl": version(["openssl", "version"]),
        "haproxy": version(["haproxy", "-v"]),
        "nginx": version(["nginx", "-v"]),
        "stunnel": next(
            (
                line
                for line in version(
                    ["sh", "-c", "stunnel -version 2>&1 | grep -m1 '^stunnel'"]
                ).splitlines()
            ),
            "?",
        ),
        "socat": version(["sh", "-c", "socat -V | grep -m1 'socat version'"]),
        "git": git("rev-parse", "--short", "HEAD"),
        "git_dirty": "yes" if git("status", "--porcelain", "--untracked-files=no") else "no",
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def report(bench: Bench, env: dict[str, str], started: float, argv: list[str]) -> str:
    s = bench.settings
    lines = [
        f"# relaycore beside stunnel, HAProxy, nginx and socat ({env['date']})",
        "",
        f"`{env['command']}`: {s.reps} repetitions, relays alternating; each cell is the"
        " median of the repetitions with the lowest and highest in brackets; ratios are"
        " relaycore / peer of the medians. Relay CPU is utime+stime of the relay's"
        " processes over the measured window, per unit of work. Loopback, 2 relay workers"
        ' (see bench/README.md, "Side by side").',
        "",
        f"Machine: {env['cpus']} vCPUs ({env['cpu']}), {env['memory_gib']} GiB, Linux"
        f" {env['kernel']}, {env['openssl']}, Python {env['python']}; {env['haproxy']};"
        f" {env['nginx']}; {env['stunnel']}; {env['socat']}. Tree {env['git']}"
        f"{' with uncommitted changes' if env['git_dirty'] == 'yes' else ''}. Load average"
        f" at start {env['load_average_start']}, at end {env['load_average']}. Run time"
        f" {env['run_time_s']} s.",
        "",
    ]
    if "tls" in bench.results:
        lines += ["## Summary (medians)", "", *summary_table(bench), ""]
        lines += ["## Targets (against the best peer of this run; reported, not asserted)", ""]
        tl, _ = targets(bench)
        lines += [*tl, ""]
        lines += ["## Plain device → relay → TLS upstream (a)-(d)", ""]
        lines += [*tls_table(bench), ""]
        lines += [
            "Relays: "
            + "; ".join(v for k, v in bench.labels["tls"].items() if not k.startswith("direct"))
            + "."
        ]
        lines += ["", "Negotiated with the TLS peers:", "", *negotiated(bench), ""]
        lines += [
            "Headroom (medians). Without a relay, the load generator and the peers go several"
            " times faster (plain) or as fast as the relayed path (TLS, where the client then"
            " encrypts itself); with one, the 2 cores are shared by all three, so the"
            " relay's CPU per unit of work is the figure to compare:",
            "",
        ]
        lines += [*headroom(bench), ""]
        lines += [
            f"Bulk: {s.bulk_bytes // MiB} MiB per run (split over the connections), to a"
            " TLS sink. Echo: 64-byte ping-pong, "
            f"{s.echo_s:g} s measured after {s.warmup_s:g} s. Churn: {s.churn_conc}"
            f" connections at a time, {s.churn_s:g} s measured after {s.warmup_s:g} s. The"
            " direct columns are no relay at all: the load generator against the plain"
            " peers, or speaking TLS itself to the TLS peers (proof that neither end is"
            " the limit).",
            "",
        ]
    if "plain" in bench.results:
        lines += ["## Plain passthrough (f)", "", *plain_table(bench), ""]
        lines += [
            f"{s.plain_bytes // MiB} MiB per run to the plain sink; relaycore with `tls ="
            " false` connectors.",
            "",
        ]
    if "idle" in bench.results:
        lines += [f"## {s.idle_conns:,} idle TLS connections (e)", "", *idle_table(bench)]
        lines += [
            "",
            f"Each connection did one 64-byte echo, then stayed idle; the figures are the"
            f" deltas between a warmed-up relay and the same relay holding {s.idle_conns:,}"
            f" connections, divided by {s.idle_conns:,}. Slab is system-wide (both ends'"
            " sockets included; other work on the machine shows up in it): the direct TLS"
            " row is the client and peer alone, so the column beyond it is what the relay"
            " adds in the kernel (two more sockets a connection). The client is"
            f" {s.idle_procs} processes (the fd limit is 20,000 a process), and so are"
            " HAProxy and stunnel here.",
            "",
        ]
    if bench.notes:
        lines += ["## Notes", ""] + [f"* {n}" for n in bench.notes] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------


def relays_for(suite: str, workdir: Path, ca: Path, only: set[str] | None) -> list[Relay]:
    def d(name: str) -> Path:
        return workdir / f"{suite}-{name}"

    if suite == "tls":
        relays: list[Relay] = [
            Relaycore(d("relaycore"), ca),
            Stunnel(d("stunnel"), ca),
            HAProxy(d("haproxy"), ca),
            Nginx(d("nginx"), ca),
            Direct(d("direct"), ca),
            Direct(d("direct-tls"), ca, tls=True),
        ]
    elif suite == "plain":
        relays = [
            Relaycore(d("rc-copy"), None, splice="off", tls=False),
            Relaycore(d("rc-splice"), None, splice="always", tls=False),
            Socat(d("socat"), None),
            HAProxy(d("haproxy"), None, tls=False),
            HAProxy(d("haproxy-splice"), None, tls=False, splice=True),
            Nginx(d("nginx"), None, tls=False),
            Direct(d("direct"), None),
        ]
    else:
        relays = [
            Relaycore(d("relaycore"), ca),
            HAProxy(d("haproxy"), ca, procs=2),
            Nginx(d("nginx"), ca),
            Stunnel(d("stunnel"), ca, procs=2),
            Direct(d("direct-tls"), ca, tls=True),
        ]
    if only:
        relays = [r for r in relays if r.name in only or r.name.split("-")[0] in only]
    return relays


TOOLS = {
    "stunnel": ("stunnel", "stunnel4"),
    "haproxy": ("haproxy", "haproxy"),
    "nginx": ("nginx", "nginx-light"),
    "socat": ("socat", "socat"),
}


def check_tools(relays: list[Relay]) -> None:
    """Exit with what to install when a relay's program is missing."""
    missing = set()
    for relay in relays:
        tool, package = TOOLS.get(relay.name.split("-")[0], ("", ""))
        if tool and shutil.which(tool) is None:
            missing.add(package)
        if tool == "nginx" and not NGINX_STREAM_MODULE.exists():
            missing.add("libnginx-mod-stream")
    if missing:
        sys.exit(
            "bench-peers: missing " + " ".join(sorted(missing)) + ": run `make bench-peers`"
            " (it installs them) or `sh bench/peers/deps.sh` as root"
        )


@contextmanager
def upstreams(binary: Path, pki: Any) -> Iterator[dict[str, Upstream]]:
    started: dict[str, Upstream] = {}
    try:
        for mode in ("sink", "echo"):
            started[mode] = Upstream(binary, mode, None)
            started[f"tls-{mode}"] = Upstream(binary, mode, (pki.cert, pki.key))
        yield started
    finally:
        for u in started.values():
            u.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    ap.add_argument("--suites", default="tls,plain,idle", help="tls,plain,idle")
    ap.add_argument("--only", default="", help="relays to run, e.g. relaycore,haproxy")
    ap.add_argument("--quick", action="store_true", help="short smoke run (1 repetition)")
    ap.add_argument("--idle-conns", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--name", default=None, help="file name stem (default peers-YYYY-MM-DD)")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="perf record relaycore's workers in each window, data in DIR",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="only rewrite the markdown of an earlier run's JSON",
    )
    args = ap.parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        bench = Bench(Settings(**payload["settings"]), {}, Path(), Path(), {})
        bench.results, bench.labels = payload["results"], payload["labels"]
        bench.notes = payload["notes"]
        md = report(bench, payload["environment"], 0.0, [])
        args.from_json.with_suffix(".md").write_text(md)
        print(md)
        return 0
    settings = QUICK if args.quick else Settings()
    if args.reps is not None:
        settings.reps = args.reps
    if args.idle_conns is not None:
        settings.idle_conns = args.idle_conns
    suites = [s for s in args.suites.split(",") if s]
    only = {o for o in args.only.split(",") if o} or None
    # A SIGTERM or SIGHUP unwinds like Ctrl-C, so that every relay started is stopped
    # (they run in their own sessions and would outlive us).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    check_tools([r for s in suites for r in relays_for(s, Path("/nonexistent"), Path(), only)])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the relays inherit it
    started = time.monotonic()
    now = datetime.datetime.now(datetime.UTC)
    env = environment()
    env["load_average_start"] = env["load_average"]
    env["date"] = now.strftime("%Y-%m-%d %H:%M UTC")
    env["command"] = (
        "make bench-peers"
        if os.environ.get("MAKELEVEL")
        else " ".join(
            ["python", "bench/peers/run.py", *(argv if argv is not None else sys.argv[1:])]
        )
    )
    if hard < 2 * settings.idle_conns // settings.idle_procs + 100 and "idle" in suites:
        print(f"note: RLIMIT_NOFILE hard limit {hard}: fewer idle connections may fit")
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp_s:
        tmp = Path(tmp_s)
        os.chmod(tmp, 0o755)  # nginx workers run as nobody
        bins = build(tmp)
        pki = make_server_pki(tmp / "pki", "localhost")
        for p in (tmp / "pki").iterdir():
            p.chmod(0o644)
        with upstreams(bins["upstream"], pki) as peers:
            bench = Bench(settings, bins, tmp / "pki", tmp, peers, args.profile)
            for rep in range(settings.reps):
                for suite in suites:
                    relays = relays_for(suite, tmp / f"rep{rep}", pki.ca, only)
                    k = rep % len(relays) if relays else 0
                    for relay in relays[k:] + relays[:k]:
                        print(f"rep {rep + 1}/{settings.reps} {suite} {relay.name}", flush=True)
                        runner = {
                            "tls": bench.run_tls,
                            "plain": bench.run_plain,
                            "idle": bench.run_idle,
                        }[suite]
                        try:
                            runner(relay)
                        except RuntimeError as exc:
                            msg = f"rep {rep + 1} {suite} {relay.name}: {exc}"
                            print("  FAILED: " + msg, flush=True)
                            bench.notes.append(msg.splitlines()[0])
    env["run_time_s"] = f"{time.monotonic() - started:.0f}"
    if args.profile is not None:
        summarize_profiles(args.profile)
    env["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    md = report(bench, env, started, sys.argv)
    stem = args.name or f"peers-{now.strftime('%Y-%m-%d')}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(md)
    _, target_list = targets(bench) if "tls" in bench.results else ([], [])
    payload = {
        "environment": env,
        "settings": settings.__dict__,
        "labels": bench.labels,
        "targets": target_list,
        "notes": bench.notes,
        "results": bench.results,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print()
    print(md)
    print(f"written: {args.out / (stem + '.md')}, {args.out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
