"""Where relaycore's time and memory go, beside the peers: the checks behind docs/BENCHMARKS.md.

    .venv/bin/python bench/peers/diagnose.py syscalls [--relays relaycore,haproxy,nginx,stunnel]
        strace -c -f on each relay's processes: system calls per 64-byte echo round trip
        (1 connection) and per new connection (churn, 4 at a time).
    .venv/bin/python bench/peers/diagnose.py resumption [--workers 1,2]
        relaycore's share of resumed TLS handshakes (counted at the peer) in churn with
        1 to 32 connections at a time.
    .venv/bin/python bench/peers/diagnose.py tls-heap [--conns 1000]
        bench/peers/tlsheap.c on relaycore's OpenSSL (3.5): heap an idle client connection
        holds, before and after SSL_free_buffers(), with both key shares, the hybrid's
        alone and X25519's alone.

Same peers, load generator, CA and relay configs as run.py. Loopback only, bounded runs
(a few seconds each); strace slows the relays, so only counts are read from it.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procfs import proc_table, tree
from programs import Loadgen, Upstream, build, compile_programs
from relays import HAProxy, Nginx, Relay, Relaycore, Routes, Stunnel

from relaycore.lab.base import free_port
from relaycore.lab.pki import ServerPki, make_server_pki

RELAYS: dict[str, type[Relay]] = {
    "relaycore": Relaycore,
    "haproxy": HAProxy,
    "nginx": Nginx,
    "stunnel": Stunnel,
}


def parse_strace(text: str) -> dict[str, tuple[int, int]]:
    """strace -c table -> {syscall: (calls, errors)}."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 5 and words[0][0].isdigit() and words[-1] != "total":
            errors = int(words[4]) if len(words) == 6 else 0
            out[words[-1]] = (int(words[3]), errors)
    return out


def syscalls(tmp: Path, bins: dict[str, Path], pki: ServerPki, names: list[str]) -> None:
    if shutil.which("strace") is None:
        sys.exit("diagnose: strace is needed (apt-get install strace)")
    echo = Upstream(bins["upstream"], "echo", (pki.cert, pki.key))
    work = {
        "echo round trip": ["echo", "--conns", "1", "--warmup", "0", "--max", "3000"],
        "new connection": ["churn", "--conc", "4", "--warmup", "0", "--max", "400"],
    }
    try:
        for name in names:
            relay = RELAYS[name](tmp / name, pki.ca)
            routes: Routes = {"echo": (free_port(), echo.address)}
            relay.start(routes)
            try:
                # A warm relay (sessions cached) before strace attaches.
                target = f"127.0.0.1:{routes['echo'][0]}"
                Loadgen(bins["loadgen"], ["churn", target, "--duration", "0.5"], 60).finish()
                for what, args in work.items():
                    out = tmp / f"{name}-{args[0]}.strace"
                    cmd = ["strace", "-c", "-f", "-o", str(out)]
                    for pid in tree(proc_table(), relay.root_pids()):
                        cmd += ["-p", str(pid)]
                    tracer = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)  # attached
                    args = [args[0], target, *args[1:], "--duration", "60"]
                    res = Loadgen(bins["loadgen"], args, 120).finish()
                    time.sleep(0.5)  # the last closes reach the relay
                    tracer.send_signal(signal.SIGINT)
                    tracer.wait(timeout=30)
                    counts = parse_strace(out.read_text())
                    units = res.get("started", 0) if args[0] == "churn" else res.get("units", 0)
                    if not units:
                        print(f"{name}: {what}: no result: {res}")
                        continue
                    total = sum(c for c, _ in counts.values())
                    detail = ", ".join(
                        f"{k} {c / units:.1f}" + (f" ({e / units:.1f} failed)" if e else "")
                        for k, (c, e) in sorted(counts.items(), key=lambda kv: -kv[1][0])
                        if c / units >= 0.05
                    )
                    print(f"{name:9} per {what}: {total / units:.1f} syscalls: {detail}")
            finally:
                relay.stop()
    finally:
        echo.close()


def resumption(tmp: Path, bins: dict[str, Path], pki: ServerPki, workers: list[int]) -> None:
    echo = Upstream(bins["upstream"], "echo", (pki.cert, pki.key))
    try:
        for n in workers:

            class Sized(Relaycore):
                def config(self, routes: Routes, n: int = n) -> str:
                    return super().config(routes).replace("workers = 2", f"workers = {n}")

            relay = Sized(tmp / f"rc-{n}", pki.ca)
            routes: Routes = {"echo": (free_port(), echo.address)}
            relay.start(routes)
            try:
                for conc in (1, 2, 4, 8, 16, 32):
                    a = echo.stats()
                    args = ["churn", f"127.0.0.1:{routes['echo'][0]}", "--conc", str(conc)]
                    args += ["--warmup", "0.2", "--duration", "1.5"]
                    res = Loadgen(bins["loadgen"], args, 60).finish()
                    b = echo.stats()
                    hs = b["handshakes"] - a["handshakes"]
                    share = (b["resumed"] - a["resumed"]) / hs if hs else 0.0
                    print(
                        f"relaycore workers={n} connections at a time {conc:2}:"
                        f" {res.get('units', 0):5} connections, {hs:5} handshakes at the peer,"
                        f" {share * 100:5.1f}% resumed"
                    )
            finally:
                relay.stop()
    finally:
        echo.close()


# What tls-heap offers: both key shares (OpenSSL 3.5's default, relaycore's first
# handshake), the hybrid's alone (relaycore once its server chose the hybrid), classical
# X25519 alone (the heap of a connection whose key exchange made no ML-KEM key).
TLS_HEAP_GROUPS = ("*X25519MLKEM768:*X25519", "X25519MLKEM768", "X25519")


def tls_heap(tmp: Path, bins: dict[str, Path], pki: ServerPki, conns: int) -> None:
    binary = compile_programs(tmp, ("tlsheap",))["tlsheap"]  # relaycore's OpenSSL (3.5)
    echo = Upstream(bins["upstream"], "echo", (pki.cert, pki.key))
    try:
        for groups in TLS_HEAP_GROUPS:
            res = subprocess.run(
                [str(binary), str(echo.address[1]), str(pki.ca), str(conns), groups],
                capture_output=True,
                text=True,
                timeout=120,
            )
            print(f"groups {groups}: " + (res.stdout.strip() or res.stderr.strip()))
    finally:
        echo.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("check", choices=["syscalls", "resumption", "tls-heap"])
    ap.add_argument("--relays", default="relaycore,haproxy,nginx,stunnel")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--conns", type=int, default=1000)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="bench-diagnose-") as tmp_s:
        tmp = Path(tmp_s)
        bins = build(tmp)
        pki = make_server_pki(tmp / "pki", "localhost")
        if args.check == "syscalls":
            syscalls(tmp, bins, pki, [r for r in args.relays.split(",") if r])
        elif args.check == "resumption":
            resumption(tmp, bins, pki, [int(w) for w in args.workers.split(",")])
        else:
            tls_heap(tmp, bins, pki, args.conns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
