"""perf on the relays: the syscalls of every relay's processes in each measured window
(`perf stat -e raw_syscalls:sys_enter`, always, when perf is installed and the tracepoint
readable), and optional profiling (`run.py --profile DIR`): `perf record` on relaycore's
workers during each measured window, and a `perf report` summary of each."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

from procfs import Table, tree
from relays import Relay


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


SYSCALL_EVENT = "raw_syscalls:sys_enter"


def start_syscall_count(pids: list[int], out: Path) -> subprocess.Popen[bytes] | None:
    """`perf stat` counting the syscalls of pids (all their threads) until stopped; None
    without perf. Read the count with stop_syscall_count."""
    if shutil.which("perf") is None or not pids:
        return None
    return subprocess.Popen(
        [
            *("perf", "stat", "-x,", "-e", SYSCALL_EVENT, "-o", str(out)),
            *("-p", ",".join(map(str, pids))),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_syscall_count(perf: subprocess.Popen[bytes], out: Path) -> int | None:
    """Stop the count; the syscalls it saw, or None (perf failed, tracepoint unreadable)."""
    stop_perf(perf)
    try:
        text = out.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == SYSCALL_EVENT and fields[0].isdigit():
            return int(fields[0])
    return None


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
