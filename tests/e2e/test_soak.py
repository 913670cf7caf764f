"""The soak, short (issue 16): bench/soak.py for 10 s with a reload every 4 s and a worker
killed every 5 s. `make soak` runs it for 10 minutes; this proves it runs, is bounded,
and that its accounting holds: every failure is one of the connections it saw in flight
on a killed worker, no byte comes back wrong, and memory and fds are where they were."""

from __future__ import annotations

import shutil

import pytest
from benches import run_bench

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the peers")
def test_a_short_soak_passes_and_explains_every_failure(tmp_path):
    args = ["--duration", "10", "--reload-every", "4", "--kill-every", "5"]
    done, r = run_bench("soak.py", args, tmp_path / "soak.json", timeout=150)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert r["passed"], r
    assert (r["reloads"], r["kills"]) == (2, 1), r  # at 4 and 8 s, at 5 s
    assert r["failed"] == r["failed_in_flight_on_killed"] <= r["in_flight_on_killed"], r
    assert r["corrupted"] == 0
    assert r["bytes_verified"] > 0
    assert all(r["by_kind"].values()), r["by_kind"]
