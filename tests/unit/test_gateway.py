"""Gateway mode without a network, what the listener does: `match` parsing, the order it
tries rules in, and the table a config gives it. test_gateway_config.py checks the config
keys, test_gateway_rules.py the nftables side; tests/e2e/test_gateway_netns.py runs the
same rules in network namespaces."""

from __future__ import annotations

import ipaddress

import pytest
from gateway_files import CONNECTOR, gateway_file

from relaycore.config import parse_config
from relaycore.gateway import (
    PASSTHROUGH_ROUTE,
    MatchRule,
    match_rules,
    matching_order,
    parse_match,
)

net = ipaddress.ip_network

# -- parse_match ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "network", "port"),
    [
        ("192.0.2.10:80", "192.0.2.10/32", 80),
        ("192.0.2.10", "192.0.2.10/32", 0),
        ("10.1.0.0/16", "10.1.0.0/16", 0),
        ("10.1.0.0/16:443", "10.1.0.0/16", 443),
        ("0.0.0.0/0", "0.0.0.0/0", 0),
        ("0.0.0.0/0:1", "0.0.0.0/0", 1),
        ("10.0.0.1:65535", "10.0.0.1/32", 65535),
        ("[2001:db8::1]:443", "2001:db8::1/128", 443),
        ("[2001:db8::1]", "2001:db8::1/128", 0),
        ("2001:db8::1", "2001:db8::1/128", 0),
        ("2001:db8::/32", "2001:db8::/32", 0),
        ("[2001:db8::/32]:8883", "2001:db8::/32", 8883),
        ("::/0", "::/0", 0),
        # Without brackets every colon belongs to the address: this is 2001:db8::1:443,
        # any port. The brackets are what make a port.
        ("2001:db8::1:443", "2001:db8::1:443/128", 0),
    ],
)
def test_parse_match(text: str, network: str, port: int) -> None:
    assert parse_match(text) == (net(network), port)


def test_parse_match_keeps_the_family() -> None:
    assert isinstance(parse_match("10.0.0.0/8")[0], ipaddress.IPv4Network)
    assert isinstance(parse_match("[::ffff:10.0.0.1]:80")[0], ipaddress.IPv6Network)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1:0", "expected a port 1-65535 in '10.0.0.1:0'"),
        ("10.0.0.1:65536", "expected a port 1-65535 in '10.0.0.1:65536'"),
        ("10.0.0.1:", "expected a port 1-65535 in '10.0.0.1:'"),
        ("10.0.0.1:http", "expected a port 1-65535 in '10.0.0.1:http'"),
        ("10.0.0.1:-1", "expected a port 1-65535 in '10.0.0.1:-1'"),
        ("10.1.0.0/16:0", "expected a port 1-65535 in '10.1.0.0/16:0'"),
        ("[2001:db8::1]:0", "expected a port 1-65535 in '[2001:db8::1]:0'"),
        ("[2001:db8::1]:", "expected a port 1-65535 in '[2001:db8::1]:'"),
        ("[2001:db8::1]:80x", "expected a port 1-65535 in '[2001:db8::1]:80x'"),
        ("[2001:db8::1", "expected [IPv6]:port, got '[2001:db8::1'"),
        ("[2001:db8::1]443", "expected [IPv6]:port, got '[2001:db8::1]443'"),
        ("[::1]]:80", "expected [IPv6]:port, got '[::1]]:80'"),
        (
            "10.0.0.1/8",
            "expected an address or CIDR, optionally with :port, got '10.0.0.1/8'"
            " (10.0.0.1/8 has host bits set)",
        ),
        (
            "2001:db8::1/32",
            "expected an address or CIDR, optionally with :port, got '2001:db8::1/32'"
            " (2001:db8::1/32 has host bits set)",
        ),
        (
            "10.0.0.0/33",
            "expected an address or CIDR, optionally with :port, got '10.0.0.0/33'"
            " ('10.0.0.0/33' does not appear to be an IPv4 or IPv6 network)",
        ),
        (
            "api.example.com:443",
            "expected an address or CIDR, optionally with :port, got 'api.example.com:443'"
            " ('api.example.com' does not appear to be an IPv4 or IPv6 network)",
        ),
        (
            "10.0.0.1:80:90",
            "expected an address or CIDR, optionally with :port, got '10.0.0.1:80:90'"
            " ('10.0.0.1:80:90' does not appear to be an IPv4 or IPv6 network)",
        ),
        (
            "",
            "expected an address or CIDR, optionally with :port, got ''"
            " ('' does not appear to be an IPv4 or IPv6 network)",
        ),
    ],
)
def test_parse_match_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_match(text)
    assert str(info.value) == message


# -- matching_order and match_rules ---------------------------------------------------------------


def rule(target: str, network: str, port: int = 0) -> MatchRule:
    return MatchRule(target, net(network), port)


def test_passthrough_comes_first_even_when_less_specific() -> None:
    api = rule("a", "192.0.2.10/32", 80)
    everything = rule(PASSTHROUGH_ROUTE, "0.0.0.0/0", 0)
    assert matching_order([api, everything]) == [everything, api]


def test_longer_prefixes_come_first() -> None:
    wide, mid, host = rule("a", "10.0.0.0/8"), rule("b", "10.1.0.0/16"), rule("c", "10.1.2.3/32")
    assert matching_order([wide, host, mid]) == [host, mid, wide]


def test_a_port_comes_before_any_port_at_the_same_prefix() -> None:
    any_port, port = rule("a", "10.1.0.0/16"), rule("b", "10.1.0.0/16", 443)
    assert matching_order([any_port, port]) == [port, any_port]


def test_the_prefix_weighs_more_than_the_port() -> None:
    # A /32 for any port is more specific than a /16 with a port.
    host, net_port = rule("a", "10.1.2.3/32"), rule("b", "10.1.0.0/16", 443)
    assert matching_order([net_port, host]) == [host, net_port]


def test_passthrough_rules_are_ordered_among_themselves_too() -> None:
    wide, host = rule(PASSTHROUGH_ROUTE, "10.0.0.0/8"), rule(PASSTHROUGH_ROUTE, "10.0.0.1/32", 53)
    api = rule("a", "10.0.0.1/32", 53)
    assert matching_order([api, wide, host]) == [host, wide, api]


def test_ties_keep_the_config_order() -> None:
    a, b, c = rule("a", "10.0.0.0/8", 80), rule("b", "11.0.0.0/8", 80), rule("c", "12.0.0.0/8", 80)
    assert matching_order([b, c, a]) == [b, c, a]
    assert matching_order([c, a, b]) == [c, a, b]
    # Identical rules too: the first written wins.
    first, second = rule("a", "10.0.0.0/8"), rule("b", "10.0.0.0/8")
    assert matching_order([first, second]) == [first, second]
    assert matching_order([second, first]) == [second, first]


def test_matching_order_does_not_change_its_argument() -> None:
    rules = [rule("a", "10.0.0.0/8"), rule("b", "10.0.0.1/32")]
    before = list(rules)
    matching_order(rules)
    assert rules == before


def test_match_rules_of_a_config() -> None:
    config = parse_config(
        gateway_file(
            passthrough="""
[[passthrough]]
protocol = "icmp"
[[passthrough]]
protocol = "udp"
ip = "10.99.2.2"
port = 53
[[passthrough]]
protocol = "tcp"
ip = "10.99.2.2"
port = 9000
[[passthrough]]
protocol = "tcp"
port = 22
""",
            connectors=CONNECTOR.format(name="api", match='["192.0.2.10:80", "2001:db8::/32"]')
            + CONNECTOR.format(name="broker", match='["10.1.0.0/16", "10.1.0.0/16:8883"]'),
        )
    )
    assert match_rules(config) == [
        # TCP passthrough only (UDP and ICMP never reach a listener); without `ip`, both
        # families.
        rule(PASSTHROUGH_ROUTE, "10.99.2.2/32", 9000),
        rule(PASSTHROUGH_ROUTE, "0.0.0.0/0", 22),
        rule(PASSTHROUGH_ROUTE, "::/0", 22),
        # Then the connectors, most specific first.
        rule("api", "192.0.2.10/32", 80),
        rule("api", "2001:db8::/32"),
        rule("broker", "10.1.0.0/16", 8883),
        rule("broker", "10.1.0.0/16"),
    ]


def test_match_rules_without_passthrough_or_match() -> None:
    config = parse_config(
        gateway_file(
            gateway='default = "plain"',
            connectors='[[connector]]\nname = "plain"\nlisten = "127.0.0.1:8080"\n'
            'upstream = "10.0.0.1:80"\ntls = false\n',
        )
    )
    assert match_rules(config) == []
