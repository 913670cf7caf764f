"""ALPN (RFC 7301) on both ends of a tunnel, in the compiled loop: an entry connector that
offers `alpn` in order, an exit that takes its own list and refuses an entry offering
none of it with the no_application_protocol alert. The protocol agreed on is counted per
route (alpn:<protocol>); a refusal is its own cause, tls_alpn_refused, on both nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from exit_nodes import Identities
from support.clients import connect, is_reset, ping, wait_closed
from support.relay import LoopThread
from support.servers import EchoServer

from relaycore import _core


def tunnel(
    make_relay: Callable[..., LoopThread],
    ids: Identities,
    target_port: int,
    *,
    offer: Sequence[str],
    take: Sequence[str],
) -> tuple[LoopThread, LoopThread]:
    """(entry, exit): the entry offers `offer`, the exit takes `take`."""
    server = _core.TLSServerContext(
        cert=str(ids.exit.cert), key=str(ids.exit.key), allow_pins=[ids.entry.pin], alpn=take
    )

    def setup(loop: Any, fd: int) -> None:
        loop.add_listener(fd, loop.add_exit(server, "fixed", "127.0.0.1", target_port))

    exit_node = make_relay(0, setup=setup)
    client = _core.TLSClientContext(
        cert=str(ids.entry.cert),
        key=str(ids.entry.key),
        verify=False,
        pins=[ids.exit.pin],
        alpn=offer,
    )
    return make_relay(exit_node.port, tls=client), exit_node


def test_the_agreed_protocol_is_counted_on_both_ends(make_relay, ids):
    with EchoServer() as echo:
        entry, exit_node = tunnel(
            make_relay, ids, echo.port, offer=["x-amzn-mqtt-ca", "mqtt"], take=["mqtt", "h2"]
        )
        with connect(entry.port) as dev:
            ping(dev)
        # The exit picks its own first choice among those offered.
        entry_counters = entry.wait_idle()
        exit_counters = exit_node.wait_idle()
    assert (entry_counters["alpn:x-amzn-mqtt-ca"], entry_counters["alpn:mqtt"]) == (0, 1)
    assert (exit_counters["alpn:mqtt"], exit_counters["alpn:h2"]) == (1, 0)


def test_an_exit_refuses_an_entry_that_offers_none_of_its_protocols(make_relay, ids):
    with EchoServer() as echo:
        entry, exit_node = tunnel(make_relay, ids, echo.port, offer=["h2"], take=["mqtt"])
        with connect(entry.port) as dev:
            assert is_reset(wait_closed(dev, 5.0))
        refused = entry.wait_error("tls_alpn_refused")
        assert "alert 120" in refused.reason, refused
        assert "no application protocol" in refused.reason, refused
        at_exit = exit_node.wait_error("tls_alpn_refused")
        assert at_exit.reason == "the client offered none of the alpn protocols", at_exit
        assert echo.connections == []
        assert entry.wait_idle()["errors_tls_alpn_refused"] == 1


@pytest.mark.parametrize(
    "alpn", [["x" * 256], [""], [f"p{k}" for k in range(9)]], ids=["long", "empty", "nine"]
)
def test_a_bad_alpn_list_is_refused_when_the_context_is_made(alpn):
    with pytest.raises(ValueError, match=r"^alpn: "):
        _core.TLSClientContext(alpn=alpn)
