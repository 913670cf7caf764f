"""relaycore/plan.py: a config -> the routes every worker adds, their ids and names, the
gateway's match table by route id, and each worker slot's listening fds."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaycore import _core
from relaycore.addresses import HostPort
from relaycore.config import parse_config
from relaycore.gateway import PASSTHROUGH_ROUTE, REJECT_ROUTE
from relaycore.plan import (
    ExitRoute,
    GatewayPlan,
    LoopSettings,
    Match,
    PassthroughRoute,
    RejectRoute,
    UpstreamRoute,
    compile_plan,
)

PIN = "sha256/" + "A" * 43 + "="


def connector(name: str, listen: str | None, upstream: str, match: str = "") -> str:
    lines = [f'name = "{name}"', f'upstream = "{upstream}"', "tls = false"]
    if listen is not None:
        lines.append(f'listen = "{listen}"')
    if match:
        lines.append(f"match = {match}")
    return "[[connector]]\n" + "\n".join(lines) + "\n"


@pytest.fixture
def exits(tmp_path: Path) -> str:
    """Two [[exit]] tables on one identity: a SOCKS5 proxy and a fixed target."""
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    _core.make_identity(str(key), str(cert), "exit")
    return "".join(
        f'[[exit]]\nname = "{name}"\nlisten = "{listen}"\ncert = "{cert}"\nkey = "{key}"\n'
        f'allow = ["{PIN}"]\ntarget = "{target}"\n{extra}\n'
        for name, listen, target, extra in [
            ("proxy", "127.0.0.1:9443", "socks5", 'allow_destinations = ["10.0.0.0/8:80"]'),
            ("fixed", "127.0.0.1:9444", "[::1]:1883", ""),
        ]
    )


def test_connectors_are_routes_0_to_n_with_their_listeners() -> None:
    config = parse_config(
        '[relay]\nworkers = 2\nmax_connections = 50\nsplice = "off"\ndrain_timeout_s = 3\n'
        "[timeouts]\nconnect_s = 1.5\nhandshake_s = 2\nidle_s = 0.25\n[stats]\ninterval_s = 0\n"
        + connector("a", "127.0.0.1:8080", "10.0.0.1:80")
        + connector("b", "[::1]:8081", "[2001:db8::0:1]:443")
    )
    plan = compile_plan(config, 7)
    assert plan.routes == (
        UpstreamRoute("a", "10.0.0.1", 80, None),
        UpstreamRoute("b", "2001:db8::1", 443, None),
    )
    assert plan.listen == ((HostPort("127.0.0.1", 8080), 0), (HostPort("::1", 8081), 1))
    assert plan.gateway is None
    assert plan.loop == LoopSettings(
        max_connections=50,
        splice="off",
        io="epoll",
        connect_timeout_ms=1500,
        handshake_timeout_ms=2000,
        idle_timeout_ms=250,
    )
    assert (plan.generation, plan.workers, plan.drain_timeout_s) == (7, 2, 3.0)
    assert (plan.run_dir, plan.stats_interval_s) == ("/run/relaycore", 0.0)
    assert plan.addresses == [HostPort("127.0.0.1", 8080), HostPort("::1", 8081)]
    assert plan.stats_names == ["a", "b"]


def test_gateway_routes_follow_the_connectors_and_exits_come_last(exits: str) -> None:
    config = parse_config(
        '[gateway]\ninterface = "dev0"\nlisten = ["0.0.0.0:15001", "[::]:15001"]\n'
        'default = "b"\n[[passthrough]]\nprotocol = "tcp"\nport = 22\n'
        + connector("a", "127.0.0.1:8080", "10.0.0.1:80", '["192.0.2.0/24"]')
        + connector("b", None, "10.0.0.2:80", '["192.0.2.7:443"]')
        + exits
    )
    plan = compile_plan(config, 1)
    assert [r.name for r in plan.routes] == [
        "a",
        "b",
        PASSTHROUGH_ROUTE,
        REJECT_ROUTE,
        "proxy",
        "fixed",
    ]
    assert isinstance(plan.routes[2], PassthroughRoute)
    assert isinstance(plan.routes[3], RejectRoute)
    proxy, fixed = plan.routes[4:]
    assert isinstance(proxy, ExitRoute)
    assert isinstance(fixed, ExitRoute)
    assert (proxy.target, proxy.host, proxy.port) == ("socks5", "", 0)
    assert proxy.destinations == (("10.0.0.0/8", 80),)
    assert (fixed.target, fixed.host, fixed.port, fixed.destinations) == ("fixed", "::1", 1883, ())
    assert plan.gateway == GatewayPlan(
        default_route=1,
        reject_route=3,
        # Passthrough first, then the most specific match.
        matches=(
            Match(2, "0.0.0.0/0", 22),
            Match(2, "::/0", 22),
            Match(1, "192.0.2.7/32", 443),
            Match(0, "192.0.2.0/24", 0),
        ),
        listen=(HostPort("0.0.0.0", 15001), HostPort("::", 15001)),
    )
    assert plan.listen == (
        (HostPort("127.0.0.1", 8080), 0),
        (HostPort("127.0.0.1", 9443), 4),
        (HostPort("127.0.0.1", 9444), 5),
    )
    assert plan.addresses == [
        HostPort("127.0.0.1", 8080),
        HostPort("0.0.0.0", 15001),
        HostPort("::", 15001),
        HostPort("127.0.0.1", 9443),
        HostPort("127.0.0.1", 9444),
    ]
    # Stats list the config's tables; the gateway's routes only once they count something.
    assert plan.stats_names == ["a", "b", "proxy", "fixed"]


def test_reject_is_the_gateway_default_unless_a_connector_is_named() -> None:
    config = parse_config(
        '[gateway]\ninterface = "dev0"\n' + connector("a", None, "10.0.0.1:80", '["10.1.0.0/16"]')
    )
    gateway = compile_plan(config, 1).gateway
    assert gateway is not None
    assert (gateway.default_route, gateway.reject_route) == (2, 2)


def test_without_a_gateway_exits_follow_the_connectors(exits: str) -> None:
    # Dense ids: nothing is reserved for a gateway that is not there.
    config = parse_config(connector("a", "127.0.0.1:8080", "10.0.0.1:80") + exits)
    plan = compile_plan(config, 1)
    assert [r.name for r in plan.routes] == ["a", "proxy", "fixed"]
    assert [route for _, route in plan.listen] == [0, 1, 2]


def test_each_slot_gets_its_own_fds(exits: str) -> None:
    config = parse_config(
        '[gateway]\ninterface = "dev0"\n'
        + connector("a", "127.0.0.1:8080", "10.0.0.1:80", '["10.1.0.0/16"]')
        + exits
    )
    plan = compile_plan(config, 3)
    fds = {addr: 100 + 10 * k for k, addr in enumerate(plan.addresses)}
    worker = plan.for_slot(1, lambda addr: fds[addr] + 1)
    assert (worker.slot, worker.plan) == (1, plan)
    assert worker.listeners == ((101, 0), (121, 3), (131, 4))
    assert worker.gateway_listeners == (111,)
    assert sorted(worker.listen_fds) == [101, 111, 121, 131]
    assert worker.uses_tls  # the exits are TLS servers


def test_a_plain_relay_uses_no_tls() -> None:
    plan = compile_plan(parse_config(connector("a", "127.0.0.1:8080", "10.0.0.1:80")), 1)
    assert not plan.for_slot(0, lambda addr: 3).uses_tls


def test_the_io_mode_reaches_the_loop_settings() -> None:
    text = connector("a", "127.0.0.1:8080", "10.0.0.1:80")
    assert compile_plan(parse_config(text), 1).loop.io == "epoll"
    uring = compile_plan(parse_config('[relay]\nio = "io_uring"\n' + text), 1)
    assert uring.loop.io == "io_uring"
