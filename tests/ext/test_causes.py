"""Failure causes: the names Python sees (CAUSES, errors_<cause>, ErrorEvent.cause) agree
with the C enum the loop counts by, in the same order, and each is documented.

The module checks at import that CAUSES has CAUSE_COUNT names (base/causes.pxi); this
checks that they are the right names in the right order, which the C compiler cannot.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.relay import one_route_counters

from relaycore import _core

REPO = Path(__file__).resolve().parents[2]


def enum_causes() -> list[str]:
    """The CAUSE_* enum of ext/base/causes.pxd, in order, as cause names."""
    text = (REPO / "ext" / "base" / "causes.pxd").read_text()
    names = re.findall(r"^\s+CAUSE_(\w+)", text, re.M)
    assert names[-1] == "COUNT", names
    return [name.lower() for name in names[:-1]]


def test_cause_names_follow_the_enum() -> None:
    assert list(_core.CAUSES) == enum_causes()
    assert len(set(_core.CAUSES)) == len(_core.CAUSES)


def test_each_cause_has_one_counter_per_route() -> None:
    counters = one_route_counters()
    errors = sorted(name for name in counters if name.startswith("errors_"))
    assert errors == sorted(f"errors_{cause}" for cause in _core.CAUSES)
    # One count per cause: no legacy duplicate of a cause's count.
    legacy = {"connect_refused", "connect_timeout", "connect_failed", "socket_errors",
              "handshake_timeout", "tls_failed", "tls_truncated", "tls_errors"}  # fmt: skip
    assert legacy.isdisjoint(counters), counters


def test_each_cause_is_documented() -> None:
    errors_md = (REPO / "docs" / "ERRORS.md").read_text()
    documented = re.findall(r"^\| `(\w+)` \|", errors_md, re.M)
    assert [c for c in documented if c in _core.CAUSES] == list(_core.CAUSES)


def test_error_events_are_made_only_by_the_loop() -> None:
    with pytest.raises(TypeError, match="made only by the loop"):
        _core.ErrorEvent()
