"""Optional profiling (`run.py --profile DIR`): `perf record` on relaycore's workers during
each measured window, and a `perf report` summary of each."""

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
