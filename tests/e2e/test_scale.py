"""The scale bench, scaled down (issue 16): bench/peers/scale.py with 5,000 TLS device
connections, 100 of them busy, as a test. Every connection is held and answers its ping,
none fails, the idle ones answer with p99 under 100 ms, and once all have closed the
workers have given their memory back (malloc_trim). `make bench-scale` runs 50,000."""

from __future__ import annotations

import shutil

import pytest
from benches import run_bench

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONNS, ACTIVE = 5_000, 100


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the peers")
def test_5000_idle_tls_connections_answer_and_give_their_memory_back(tmp_path):
    args = ["--conns", str(CONNS), "--active", str(ACTIVE), "--workers", "2"]
    args += ["--per-group", "2500", "--active-s", "10"]
    done, r = run_bench("peers/scale.py", args, tmp_path / "scale.json", timeout=240)
    assert done.returncode == 0, done.stderr
    s = r["summary"]
    assert (s["connections"], s["idle_held"]) == (CONNS, CONNS - ACTIVE), s
    assert (s["errors"], s["lost"], s["sweep_pinged"]) == (0, 0, CONNS - ACTIVE), s
    assert r["active_covered_sweep"], "the busy connections stopped before the sweep ended"
    assert s["sweep_p99_ms"] < 100, s
    assert r["relay_problems"] == []
    before, held, closed = (r[k]["worker_rss_kib"] for k in ("before", "held", "closed"))
    for b, h, c in zip(before, held, closed, strict=True):
        assert h > b + 10_000, (before, held)  # 2,500 TLS connections took memory...
        assert c < b * 1.25, (before, held, closed)  # ...which went back once they closed
