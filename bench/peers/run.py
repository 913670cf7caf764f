"""`make bench-peers`: relaycore side by side with stunnel, HAProxy, nginx and socat.

    .venv/bin/python bench/peers/run.py [--reps 3] [--only relaycore,haproxy] [--quick]
                                        [--suites tls,plain,idle] [--workloads echo32,bulk1]
                                        [--profile DIR]

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
  handshake  (g) churn against an upstream that resumes nothing: every connection a full
         handshake, relaycore with its groups forced to X25519 and to X25519MLKEM768, for
         the cost of the post-quantum key exchange.

The upstream peers and the load generator link relaycore's own OpenSSL (3.5): relaycore
negotiates the hybrid group X25519MLKEM768 with them by default (the "relaycore" column);
"relaycore, pq = off" in the tls suite is the same relay with classical groups only, and
'relaycore, io = "io_uring"' (tls) and "relaycore-copy-uring" (plain) the same relay on the
experimental io_uring data path.

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
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perf import summarize_profiles
from programs import Upstream, build
from relays import NGINX_STREAM_MODULE, Direct, HAProxy, Nginx, Relay, Relaycore, Socat, Stunnel
from report import REPO, environment, report, targets
from workloads import QUICK, WORKLOADS, Bench, Settings

from relaycore.lab.pki import make_server_pki


def relays_for(suite: str, workdir: Path, ca: Path, only: set[str] | None) -> list[Relay]:
    def d(name: str) -> Path:
        return workdir / f"{suite}-{name}"

    if suite == "tls":
        relays: list[Relay] = [
            Relaycore(d("relaycore"), ca),
            Relaycore(d("relaycore-classical"), ca, pq="off", name="relaycore-classical"),
            Relaycore(d("relaycore-uring"), ca, io="io_uring", name="relaycore-uring"),
            Stunnel(d("stunnel"), ca),
            HAProxy(d("haproxy"), ca),
            Nginx(d("nginx"), ca),
            Direct(d("direct"), ca),
            Direct(d("direct-tls"), ca, tls=True),
        ]
    elif suite == "handshake":
        relays = [
            Relaycore(
                d("relaycore-x25519"), ca, pq="off", groups="X25519", name="relaycore-x25519"
            ),
            Relaycore(
                d("relaycore-mlkem"),
                ca,
                pq="require",
                groups="X25519MLKEM768",
                name="relaycore-mlkem",
            ),
        ]
    elif suite == "plain":
        relays = [
            Relaycore(d("rc-copy"), None, splice="off", tls=False),
            Relaycore(d("rc-splice"), None, splice="always", tls=False),
            Relaycore(
                d("rc-copy-uring"),
                None,
                splice="off",
                tls=False,
                io="io_uring",
                name="relaycore-copy-uring",
            ),
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
        started["tls-echo-full"] = Upstream(binary, "echo", (pki.cert, pki.key), no_resume=True)
        yield started
    finally:
        for u in started.values():
            u.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    ap.add_argument("--suites", default="tls,plain,idle,handshake", help="tls,plain,idle,handshake")
    ap.add_argument(
        "--only",
        default="",
        help="relays to run, by name or family: relaycore (every variant), relaycore-uring,"
        " haproxy",
    )
    ap.add_argument(
        "--workloads",
        default="",
        help="workloads to measure in the tls and plain suites (default all): bulk1, bulk8,"
        " echo1, echo32, churn",
    )
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
    settings.workloads = [w for w in args.workloads.split(",") if w] or None
    unknown = set(settings.workloads or ()) - set(WORKLOADS)
    if unknown:
        ap.error(
            f"--workloads: unknown {', '.join(sorted(unknown))} (known: {', '.join(WORKLOADS)})"
        )
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
                            "handshake": bench.run_handshake,
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
