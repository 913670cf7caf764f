"""A script of bench/ run as a test (the scale bench, the soak): with its arguments and
a deadline, the JSON it wrote with --json, and its exit code and output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(
    script: str, args: list[str], out: Path, timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`python bench/SCRIPT ARGS --json OUT`; what it printed and the figures it wrote."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert out.exists(), (done.returncode, done.stdout, done.stderr)
    figures: dict[str, Any] = json.loads(out.read_text())
    return done, figures
