"""The report of a bench-peers run: medians and ranges over the repetitions, the tables
(summary, targets, per suite, headroom), the machine, and the markdown that holds them."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from procfs import meminfo_kib
from workloads import Bench, MiB

REPO = Path(__file__).resolve().parents[2]
PEER_NAMES = ("stunnel", "haproxy", "nginx")  # the TLS peers of relaycore, for the ratios


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
    ("bulk1", "syscalls_per_MB", "(a) … relay syscalls per MB", 0, False),
    ("bulk8", "MB_s", "(a) bulk plain→TLS, 8 connections: MB/s", 0, True),
    ("bulk8", "cpu_us_per_MB", "(a) … relay CPU µs per MB", 0, False),
    ("echo1", "rt_s", "(b) 64 B echo, 1 connection: round trips/s", 0, True),
    ("echo1", "p50_us", "(b) … p50 latency µs", 0, False),
    ("echo1", "p99_us", "(b) … p99 latency µs", 0, False),
    ("echo1", "cpu_us_per_rt", "(b) … relay CPU µs per round trip", 1, False),
    ("echo1", "syscalls_per_rt", "(b) … relay syscalls per round trip", 1, False),
    ("echo32", "rt_s", "(c) 64 B echo, 32 connections: round trips/s", 0, True),
    ("echo32", "p50_us", "(c) … p50 latency µs", 0, False),
    ("echo32", "p99_us", "(c) … p99 latency µs", 0, False),
    ("echo32", "cpu_us_per_rt", "(c) … relay CPU µs per round trip", 1, False),
    ("echo32", "syscalls_per_rt", "(c) … relay syscalls per round trip", 1, False),
    ("churn", "conn_s", "(d) churn, 16 at a time: connections/s", 0, True),
    ("churn", "p50_us", "(d) … p50 connection latency µs", 0, False),
    ("churn", "cpu_us_per_conn", "(d) … relay CPU µs per connection", 0, False),
    ("churn", "resumed_share", "(d) … handshakes resumed (at the peer), %", 1, True),
    ("churn", "resumed_share_whole_run", "(d) … resumed, whole run with warm-up, %", 1, True),
    ("churn", "pq_share", "(d) … post-quantum key exchanges (at the peer), %", 1, True),
]
TLS_COLS = ["relaycore", "stunnel", "haproxy", "nginx"]
# Not peers: the same relay with classical groups only (before the switch to the hybrid
# group), on the experimental io_uring data path, and no relay at all.
TLS_REFS = ["relaycore-classical", "relaycore-uring", "direct", "direct-tls"]
PLAIN_COLS = [
    "relaycore-copy",
    "relaycore-copy-uring",
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
    "relaycore-classical": 'relaycore, `pq = "off"`',
    "relaycore-uring": 'relaycore, `io = "io_uring"`',
    "relaycore-copy-uring": 'relaycore copy (`splice = "off"`, `io = "io_uring"`)',
    "relaycore-x25519": "relaycore, X25519",
    "relaycore-mlkem": "relaycore, X25519MLKEM768",
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
        factor = 100.0 if key.endswith("_share") or "_share_" in key else 1.0
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
        ("bulk1", "syscalls_per_MB", "(f) … relay syscalls per MB", 0),
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
        if key in ("resumed_share_whole_run", "pq_share"):
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


def handshake_table(bench: Bench) -> list[str]:
    """(g) Full handshakes only, relaycore with each group forced: what the post-quantum
    key exchange costs per connection."""
    have = bench.results.get("handshake", {})
    cols = [c for c in ("relaycore-x25519", "relaycore-mlkem") if c in have]
    head = ["churn, no resumption", *[HEAD[c] for c in cols]]
    both = len(cols) == 2
    if both:
        head += ["X25519MLKEM768 minus X25519", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [
        ("conn_s", "connections/s", 0, 1.0),
        ("p50_us", "p50 connection latency µs", 0, 1.0),
        ("cpu_us_per_conn", "relay CPU µs per connection (a full handshake)", 0, 1.0),
        ("resumed_share", "handshakes resumed (at the peer), %", 1, 100.0),
        ("pq_share", "post-quantum key exchanges (at the peer), %", 1, 100.0),
    ]
    for key, label, digits, factor in rows:
        sts = {c: scaled(metric(bench, "handshake", c, "churn-full", key), factor) for c in cols}
        row = [label, *[cell(sts[c], digits) for c in cols]]
        if both:
            a, b = sts["relaycore-x25519"], sts["relaycore-mlkem"]
            diff = "-" if a is None or b is None else fmt(b["median"] - a["median"], digits)
            row += [diff, ratio(b, a)]
        lines.append("| " + " | ".join(row) + " |")
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
    # Issue 13 (the lean data path): CPU against the best peer, syscalls absolute.
    check(
        "echo relay CPU per round trip, 32 connections <= 0.66x best",
        "echo32",
        "cpu_us_per_rt",
        False,
        0.66,
    )
    check(
        "bulk relay CPU per MB, 1 connection <= 0.75x best", "bulk1", "cpu_us_per_MB", False, 0.75
    )
    sys_rt = metric(bench, "tls", "relaycore", "echo32", "syscalls_per_rt")
    sys_best = best("echo32", "syscalls_per_rt", False)
    if sys_rt is not None and sys_best is not None:
        out.append(
            {
                "target": "echo syscalls per round trip, 32 connections <= 4.5",
                "relaycore": sys_rt["median"],
                "best_peer": sys_best[0],
                "best_peer_value": sys_best[1],
                "ratio": sys_rt["median"] / sys_best[1],
                "limit": 4.5,
                "met": sys_rt["median"] <= 4.5,
                "note": "the limit is absolute; the ratio is against the best peer",
            }
        )
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
            pq = sum(r.get("peer_pq", 0) for rs in runs.values() for r in rs)
            lines.append(
                f"* {HEAD.get(relay, relay)}: {', '.join(sorted(seen))}"
                f" ({hs:,} handshakes counted at the peer, {other} with another protocol or"
                f" cipher, {pq:,} post-quantum)"
            )
    return lines


def relaycore_openssl() -> str:
    """The OpenSSL relaycore's extension links (also the upstream's and the load
    generator's: programs.build)."""
    from relaycore import _core

    return f"{_core.OPENSSL_VERSION} ({_core.OPENSSL_ORIGIN})"


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
        "relaycore_openssl": relaycore_openssl(),
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
        f" {env['kernel']}, {env['openssl']} (the peers'), relaycore and the upstream on"
        f" {env.get('relaycore_openssl', '?')}, Python {env['python']}; {env['haproxy']};"
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
    if "handshake" in bench.results:
        lines += ["## The cost of a post-quantum full handshake (g)", "", *handshake_table(bench)]
        lines += [
            "",
            f"Churn as in (d), {s.churn_conc} at a time, against an echo peer with no session"
            " tickets and no session cache, so that every connection is a full handshake;"
            ' relaycore with `groups = "X25519"` (`pq = "off"`) and with `groups ='
            ' "X25519MLKEM768"` (`pq = "require"`). The peer runs OpenSSL 3.5 as relaycore'
            " does. The difference is what the hybrid key exchange (ML-KEM-768 encapsulation"
            " next to X25519, and a ClientHello about 1.2 KB larger) costs the relay per"
            " connection.",
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
