"""An upstream is a name's addresses (loop/dial.pxi): a connection starts with the address
that last connected and moves on to the next when a connect is refused or times out;
Loop.set_upstream_addresses replaces the list between turns, and connections in flight
keep theirs. Real loopback listeners: a refusing port, a full accept queue (a SYN that is
never answered), echo servers on 127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from support.clients import connect, connect_until_closed, ping
from support.relay import LoopThread
from support.servers import HOST, EchoServer
from support.unreachable import BlackholeListener, refused_port


def start(
    make_relay: Callable[..., LoopThread], addresses: list[tuple[str, int]], **loop_kwargs: Any
) -> LoopThread:
    def setup(loop: Any, fd: int) -> None:
        route = loop.add_upstream(*addresses[0])
        loop.set_upstream_addresses(route, addresses)
        loop.add_listener(fd, route)

    return make_relay(0, setup=setup, **loop_kwargs)


def test_a_refused_address_moves_on_to_the_next_and_the_good_one_sticks(make_relay):
    with refused_port() as gone, EchoServer() as echo:
        relay = start(make_relay, [(HOST, gone), (HOST, echo.port)])
        for _ in range(3):
            with connect(relay.port) as s:
                ping(s)
        counters = relay.wait_idle()
        # The device never saw the refusal: no failure was counted, only the detour.
        assert counters["errors_connect_refused"] == 0, counters
        assert counters["accepted"] == counters["closed"] == 3
        # The second connection started with the address that worked.
        assert relay.call(lambda loop: loop.upstream_addresses(0)) == [
            f"{HOST}:{echo.port}",
            f"{HOST}:{gone}",
        ]
        assert len(echo.connections) == 3


def test_a_timed_out_address_moves_on_within_the_connect_timeout(make_relay):
    with BlackholeListener() as hole, EchoServer() as echo:
        relay = start(make_relay, [(HOST, hole.port), (HOST, echo.port)], connect_timeout_ms=300)
        with connect(relay.port) as s:
            ping(s, timeout=5.0)
        assert relay.wait_idle()["errors_connect_timeout"] == 0


def test_when_every_address_fails_the_last_failure_is_the_event(make_relay):
    with refused_port() as one, refused_port() as two:
        relay = start(make_relay, [(HOST, one), (HOST, two)])
        outcome, _ = connect_until_closed(relay.port)  # the reset may beat connect()
        assert outcome != "open", outcome
        event = relay.wait_error("connect_refused")
        assert event.upstream == f"{HOST}:{two}"
        assert relay.wait_idle()["errors_connect_refused"] == 1


def test_new_addresses_take_new_connections_and_old_ones_keep_theirs(make_relay):
    with EchoServer() as old, EchoServer(host="127.0.0.2") as new:
        relay = start(make_relay, [(HOST, old.port)])
        with connect(relay.port) as kept:
            ping(kept)
            relay.call(lambda loop: loop.set_upstream_addresses(0, [("127.0.0.2", new.port)]))
            with connect(relay.port) as fresh:
                ping(fresh)
            ping(kept, b"still here")
        relay.wait_idle()
        assert len(old.connections) == 1
        assert len(new.connections) == 1
