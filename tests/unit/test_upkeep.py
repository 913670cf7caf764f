"""relaycore/upkeep.py: a worker's upkeep between turns. The clock is an argument; the
malloc_trim and /proc/self/statm are the real ones."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from relaycore.upkeep import EPISODE_END_S, QUIET_S, TRIM_EVERY_S, TRIM_MIN_CLOSED, Upkeep


@pytest.fixture
def upkeep() -> Iterator[Upkeep]:
    u = Upkeep()
    yield u
    u.close()


def test_an_episode_of_fd_exhaustion_is_one_warning_and_one_line_at_its_end(
    caplog: pytest.LogCaptureFixture, upkeep: Upkeep
) -> None:
    caplog.set_level(logging.INFO, logger="relaycore")
    for k, t in enumerate((10.0, 10.1, 10.2, 10.3)):  # paused again every 100 ms
        upkeep.tick({"accept_paused_emfile": k + 1}, now=t)
    upkeep.tick({"accept_paused_emfile": 4}, now=10.3 + EPISODE_END_S / 2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("out of file descriptors (limit ")
    upkeep.tick({"accept_paused_emfile": 4}, now=10.3 + EPISODE_END_S)
    assert caplog.records[-1].getMessage() == (
        "file descriptors available again: accepting paused 4 times in 0.3 s"
    )
    upkeep.tick({"accept_paused_emfile": 5}, now=30.0)  # a new episode, a new warning
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_memory_is_trimmed_once_a_worker_that_closed_many_goes_quiet(upkeep: Upkeep) -> None:
    closed = TRIM_MIN_CLOSED
    upkeep.tick({"accepted": closed, "closed": closed}, now=100.0)
    upkeep.tick({"accepted": closed, "closed": closed}, now=100.0 + QUIET_S / 2)
    assert upkeep.trims == 0  # not quiet long enough
    upkeep.tick({"accepted": closed, "closed": closed}, now=100.0 + QUIET_S)
    assert upkeep.trims == 1
    upkeep.tick({"accepted": closed, "closed": closed}, now=200.0)
    assert upkeep.trims == 1  # nothing closed since


def test_a_worker_that_never_goes_quiet_is_trimmed_now_and_then(upkeep: Upkeep) -> None:
    t, n = 0.0, 0
    while t < TRIM_EVERY_S * 2.5:
        t, n = t + 0.2, n + 10
        upkeep.tick({"accepted": n, "closed": n}, now=t)
    assert upkeep.trims == 2


def test_few_closed_connections_are_not_worth_a_trim(upkeep: Upkeep) -> None:
    upkeep.tick({"accepted": 10, "closed": 10}, now=0.0)
    upkeep.tick({"accepted": 10, "closed": 10}, now=QUIET_S * 10)
    assert upkeep.trims == 0
    assert upkeep.counters()["rss_bytes"] > 0
