"""Names that move, without a resolver: what the supervisor's NameWatcher makes of a
round of lookups (a change, the same addresses, a failure that keeps the last good ones),
and what a plan becomes with the addresses found later."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from relaycore import _core
from relaycore.addresses import HostPort
from relaycore.config import parse_config
from relaycore.plan import ExitRoute, UpstreamRoute, compile_plan
from relaycore.supervisor.names import Lookup, NameWatcher

PIN = "sha256/" + "A" * 43 + "="
NAME = HostPort("localhost", 80)


@pytest.fixture
def plan(tmp_path: Path):
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    _core.make_identity(str(key), str(cert), "exit")
    config = parse_config(
        '[[connector]]\nname = "by-name"\nlisten = "127.0.0.1:8080"\n'
        'upstream = "localhost:80"\ntls = false\n'
        '[[connector]]\nname = "by-ip"\nlisten = "127.0.0.1:8081"\n'
        'upstream = "127.0.0.1:81"\ntls = false\n'
        f'[[exit]]\nname = "x"\nlisten = "127.0.0.1:9443"\ncert = "{cert}"\nkey = "{key}"\n'
        f'allow = ["{PIN}"]\ntarget = "localhost:1883"\n'
    )
    return compile_plan(config, 3)


def test_a_plan_knows_which_routes_come_from_names(plan):
    # localhost resolves from /etc/hosts; 127.0.0.1 is an IP literal, never looked up.
    assert plan.names() == {0: NAME, 2: HostPort("localhost", 1883)}
    route = plan.with_addresses({0: (("127.0.0.9", 80), ("127.0.0.8", 80))}).routes[0]
    assert isinstance(route, UpstreamRoute)
    assert route.addresses == (("127.0.0.9", 80), ("127.0.0.8", 80))
    assert plan.with_addresses({}) == plan
    fixed = plan.with_addresses({2: (("127.0.0.7", 1883),)}).routes[2]
    assert isinstance(fixed, ExitRoute)
    assert fixed.addresses == (("127.0.0.7", 1883),)


def test_a_round_of_lookups_changes_keeps_or_fails(plan, caplog):
    watcher = NameWatcher(interval_s=0, wake_fd=-1)
    watcher.watch(plan)
    first = plan.routes[0].addresses
    caplog.set_level(logging.INFO, "relaycore.supervisor")

    watcher._answers.append(Lookup(NAME, first))
    [same] = watcher.results()
    assert (same.changed, same.addresses, same.error) == (False, first, "")

    watcher._answers.append(Lookup(NAME, (("127.0.0.9", 80),)))
    [moved] = watcher.results()
    assert (moved.changed, moved.addresses) == (True, (("127.0.0.9", 80),))
    assert watcher.current()[0] == (("127.0.0.9", 80),)

    for _ in range(2):
        watcher._answers.append(Lookup(NAME, (), "Name or service not known"))
        [failed] = watcher.results()
        assert (failed.changed, failed.addresses) == (False, (("127.0.0.9", 80),))
        assert failed.error == "Name or service not known"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "by-name: upstream localhost:80 now resolves to 127.0.0.9:80"
        f" (was {', '.join(f'{ip}:{port}' for ip, port in first)})",
        # Said once, however many rounds fail.
        "by-name: cannot resolve localhost: Name or service not known; keeping 127.0.0.9:80",
    ]
