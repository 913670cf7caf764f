"""Gateway mode without a network: `match` parsing, the order the listener tries rules in,
the nftables ruleset, the config checks of [gateway], [[passthrough]] and `match`, and
how nft's answers become errors (with a fake `nft` on PATH). tests/e2e/test_gateway_netns.py
runs the same rules in network namespaces."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from relaycore import cli
from relaycore.config import parse_config
from relaycore.errors import ConfigError
from relaycore.gateway import (
    PASSTHROUGH_ROUTE,
    MatchRule,
    PassthroughRule,
    apply_rules,
    config_rules,
    match_rules,
    matching_order,
    parse_match,
    remove_rules,
    render_rules,
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


CONNECTOR = """
[[connector]]
name = "{name}"
upstream = "10.99.2.2:8443"
tls = false
match = {match}
"""


def gateway_file(
    *, passthrough: str = "", connectors: str = "", gateway: str = "", interface: str = "dev0"
) -> str:
    """A file with a [gateway] (keys `gateway` added), the `passthrough` tables, and the
    `connectors` (default: one, "api", matching 192.0.2.10:80)."""
    return f'[gateway]\ninterface = "{interface}"\n{gateway}\n{passthrough}\n' + (
        connectors or CONNECTOR.format(name="api", match='["192.0.2.10:80"]')
    )


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


# -- the nftables ruleset -------------------------------------------------------------------------

EMPTY_RULESET = """\
# relaycore gateway rules: devices on dev0
table inet relaycore
delete table inet relaycore
table inet relaycore {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname "dev0" meta l4proto tcp redirect to :15001
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tiifname "dev0" drop
\t}
}
"""


def test_ruleset_without_passthrough() -> None:
    # Create, delete, create: one transaction that works whether the table exists or not.
    assert render_rules("dev0", 15001, []) == EMPTY_RULESET


def test_ruleset_of_a_typical_gateway() -> None:
    rules = [
        PassthroughRule("icmp", None, None),
        PassthroughRule("udp", net("10.99.2.2/32"), 53),
        PassthroughRule("tcp", net("10.99.2.2/32"), 9000),
    ]
    accepts = [
        '\t\tiifname "lan0" meta l4proto { icmp, ipv6-icmp } accept',
        '\t\tiifname "lan0" ip daddr 10.99.2.2/32 meta l4proto udp udp dport 53 accept',
        '\t\tiifname "lan0" ip daddr 10.99.2.2/32 meta l4proto tcp tcp dport 9000 accept',
    ]
    assert render_rules("lan0", 15002, rules).splitlines() == [
        "# relaycore gateway rules: devices on lan0",
        "table inet relaycore",
        "delete table inet relaycore",
        "table inet relaycore {",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *accepts,
        '\t\tiifname "lan0" meta l4proto tcp redirect to :15002',
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tct state established,related accept",
        *accepts,
        '\t\tiifname "lan0" drop',
        "\t}",
        "}",
    ]


@pytest.mark.parametrize(
    ("passthrough", "match"),
    [
        (("icmp", None, None), "meta l4proto { icmp, ipv6-icmp }"),
        (("icmp", "10.0.0.0/8", None), "ip daddr 10.0.0.0/8 meta l4proto icmp"),
        (("icmp", "2001:db8::/32", None), "ip6 daddr 2001:db8::/32 meta l4proto ipv6-icmp"),
        (("udp", None, None), "meta l4proto udp"),
        (("udp", None, 53), "meta l4proto udp udp dport 53"),
        (("udp", "10.99.2.2/32", None), "ip daddr 10.99.2.2/32 meta l4proto udp"),
        (("udp", "10.99.2.2/32", 53), "ip daddr 10.99.2.2/32 meta l4proto udp udp dport 53"),
        (
            ("udp", "2001:db8::53/128", 53),
            "ip6 daddr 2001:db8::53/128 meta l4proto udp udp dport 53",
        ),
        (("tcp", None, None), "meta l4proto tcp"),
        (("tcp", None, 22), "meta l4proto tcp tcp dport 22"),
        (("tcp", "192.0.2.0/24", None), "ip daddr 192.0.2.0/24 meta l4proto tcp"),
        (("tcp", "10.99.2.2/32", 9000), "ip daddr 10.99.2.2/32 meta l4proto tcp tcp dport 9000"),
        (("tcp", "2001:db8::/32", None), "ip6 daddr 2001:db8::/32 meta l4proto tcp"),
        (
            ("tcp", "2001:db8::1/128", 443),
            "ip6 daddr 2001:db8::1/128 meta l4proto tcp tcp dport 443",
        ),
    ],
)
def test_each_passthrough_is_accepted_before_the_redirect_and_the_drop(
    passthrough: tuple[str, str | None, int | None], match: str
) -> None:
    protocol, ip, port = passthrough
    rules = [PassthroughRule(protocol, None if ip is None else net(ip), port)]  # type: ignore[arg-type]
    lines = render_rules("dev0", 15001, rules).splitlines()
    accept = f'\t\tiifname "dev0" {match} accept'
    at = [i for i, line in enumerate(lines) if line == accept]
    assert len(at) == 2, lines  # once in prerouting (no redirect), once in forward
    assert lines[at[0] + 1].endswith("redirect to :15001"), lines
    assert lines[at[1] + 1] == '\t\tiifname "dev0" drop', lines


def test_config_rules_use_the_interface_and_the_listen_port() -> None:
    config = parse_config(
        gateway_file(
            gateway='listen = ["0.0.0.0:15009", "[::]:15009"]',
            interface="wlan1",
            passthrough='[[passthrough]]\nprotocol = "tcp"\nip = "2001:db8::/48"\nport = 443\n'
            '[[passthrough]]\nprotocol = "icmp"\nip = "10.0.0.0/8"\n',
        )
    )
    assert config_rules(config) == render_rules(
        "wlan1",
        15009,
        [
            PassthroughRule("tcp", net("2001:db8::/48"), 443),
            PassthroughRule("icmp", net("10.0.0.0/8"), None),
        ],
    )


# -- config checks --------------------------------------------------------------------------------

PLAIN = (
    '[[connector]]\nname = "p"\nlisten = "127.0.0.1:8080"\nupstream = "10.0.0.1:80"\ntls = false\n'
)


def test_a_full_gateway_config() -> None:
    config = parse_config(
        gateway_file(
            gateway='listen = ["0.0.0.0:15001", "[::]:15001"]\ndefault = "api"\n'
            "manage_rules = true",
            passthrough='[[passthrough]]\nprotocol = "udp"\nip = "10.99.2.2"\nport = 53\n',
        )
    )
    assert config.gateway is not None
    assert config.gateway.interface == "dev0"
    assert config.gateway.default == "api"
    assert config.gateway.manage_rules is True
    assert [str(a) for a in config.gateway.listen_addrs] == ["0.0.0.0:15001", "[::]:15001"]
    [p] = config.passthrough
    assert (p.protocol, p.network, p.port) == ("udp", net("10.99.2.2/32"), 53)
    [api] = config.connectors
    assert api.listen is None
    assert api.match_networks == [(net("192.0.2.10/32"), 80)]


def test_gateway_defaults() -> None:
    config = parse_config(gateway_file())
    assert config.gateway is not None
    assert config.gateway.listen == "0.0.0.0:15001"
    assert config.gateway.default == "reject"
    assert config.gateway.manage_rules is False
    assert config.passthrough == ()


def test_a_connector_may_have_both_listen_and_match() -> None:
    text = gateway_file(
        connectors='[[connector]]\nname = "both"\nlisten = "127.0.0.1:8080"\n'
        'upstream = "10.0.0.1:80"\ntls = false\nmatch = ["10.0.0.1:80"]\n'
    )
    [c] = parse_config(text).connectors
    assert c.listen == "127.0.0.1:8080"
    assert c.match == ("10.0.0.1:80",)


def match_connector(match: str) -> str:
    return CONNECTOR.format(name="api", match=match)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            PLAIN + '[[passthrough]]\nprotocol = "udp"\n',
            "passthrough: needs a [gateway] table",
            id="passthrough-without-gateway",
        ),
        pytest.param(
            match_connector('["192.0.2.10:80"]'),
            "connector[0].match: needs a [gateway] table (the listener that intercepted"
            " connections arrive on)",
            id="match-without-gateway",
        ),
        pytest.param(
            '[gateway]\nlisten = "0.0.0.0:15001"\n' + match_connector('["192.0.2.10:80"]'),
            "gateway.interface: required key is missing",
            id="no-interface",
        ),
        pytest.param(
            '[gateway]\ninterface = "a-very-long-name"\n' + match_connector('["10.0.0.1"]'),
            "gateway.interface: expected an interface name, got 'a-very-long-name'",
            id="interface-too-long",
        ),
        pytest.param(
            '[gateway]\ninterface = "eth0; drop"\n' + match_connector('["10.0.0.1"]'),
            "gateway.interface: expected an interface name, got 'eth0; drop'",
            id="interface-injection",
        ),
        pytest.param(
            '[gateway]\ninterface = ""\n' + match_connector('["10.0.0.1"]'),
            "gateway.interface: expected an interface name, got ''",
            id="interface-empty",
        ),
        pytest.param(
            gateway_file(gateway='listen = "15001"'),
            "gateway.listen: expected host:port, got '15001'",
            id="listen-no-host",
        ),
        pytest.param(
            gateway_file(gateway='listen = "localhost:15001"'),
            "gateway.listen: expected an IP address, got 'localhost'",
            id="listen-dns-name",
        ),
        pytest.param(
            gateway_file(gateway='listen = ["0.0.0.0:15001", "[::]:x"]'),
            "gateway.listen[1]: expected a port 1-65535, got 'x' in '[::]:x'",
            id="listen-list-bad-port",
        ),
        pytest.param(
            gateway_file(gateway='listen = ["0.0.0.0:15001", "[::]:15002"]'),
            "gateway.listen: every gateway listen address needs the same port",
            id="listen-ports-differ",
        ),
        pytest.param(
            '[gateway]\ninterface = "dev0"\nlisten = "127.0.0.1:8080"\n' + PLAIN,
            "gateway.listen: 127.0.0.1:8080 is also the listen address of connector[0]",
            id="listen-clash",
        ),
        pytest.param(
            gateway_file(gateway='default = "nobody"'),
            "gateway.default: expected 'reject' or a connector name, got 'nobody'",
            id="default-unknown",
        ),
        pytest.param(
            gateway_file(gateway="manage_rules = 1"),
            "gateway.manage_rules: expected true or false, got 1",
            id="manage-rules-type",
        ),
        pytest.param(
            gateway_file(gateway="iface = 1"),
            "gateway: unknown key 'iface'",
            id="gateway-unknown-key",
        ),
        pytest.param(
            gateway_file(passthrough='[[passthrough]]\nprotocol = "sctp"\n'),
            "passthrough[0].protocol: expected one of 'icmp', 'tcp', 'udp', got 'sctp'",
            id="protocol-unknown",
        ),
        pytest.param(
            gateway_file(passthrough="[[passthrough]]\nport = 53\n"),
            "passthrough[0].protocol: required key is missing",
            id="protocol-missing",
        ),
        pytest.param(
            gateway_file(passthrough='[[passthrough]]\nprotocol = "icmp"\nport = 8\n'),
            "passthrough[0].port: icmp has no ports",
            id="icmp-port",
        ),
        pytest.param(
            gateway_file(
                passthrough='[[passthrough]]\nprotocol = "udp"\n'
                '[[passthrough]]\nprotocol = "tcp"\nport = 0\n'
            ),
            "passthrough[1].port: expected an integer >= 1, got 0",
            id="port-0",
        ),
        pytest.param(
            gateway_file(passthrough='[[passthrough]]\nprotocol = "tcp"\nport = 65536\n'),
            "passthrough[0].port: expected an integer <= 65535, got 65536",
            id="port-too-big",
        ),
        pytest.param(
            gateway_file(passthrough='[[passthrough]]\nprotocol = "tcp"\nport = "53"\n'),
            "passthrough[0].port: expected an integer, got '53'",
            id="port-type",
        ),
        pytest.param(
            gateway_file(passthrough='[[passthrough]]\nprotocol = "tcp"\nip = "10.0.0.1/8"\n'),
            "passthrough[0].ip: expected an address or CIDR, got '10.0.0.1/8'"
            " (10.0.0.1/8 has host bits set)",
            id="ip-host-bits",
        ),
        pytest.param(
            gateway_file(passthrough='[[passthrough]]\nprotocol = "udp"\nip = "dns.example"\n'),
            "passthrough[0].ip: expected an address or CIDR, got 'dns.example'"
            " ('dns.example' does not appear to be an IPv4 or IPv6 network)",
            id="ip-name",
        ),
        pytest.param(
            gateway_file(passthrough='[[passthrough]]\nprotocol = "udp"\nip = "10.0.0.1:53"\n'),
            "passthrough[0].ip: expected an address or CIDR, got '10.0.0.1:53'"
            " ('10.0.0.1:53' does not appear to be an IPv4 or IPv6 network)",
            id="ip-with-port",
        ),
        pytest.param(
            gateway_file(passthrough='[[passthrough]]\nprotocol = "tcp"\nproto = "tcp"\n'),
            "passthrough[0]: unknown key 'proto'",
            id="passthrough-unknown-key",
        ),
        pytest.param(
            gateway_file(connectors=match_connector('["192.0.2.10:0"]')),
            "connector[0].match[0]: expected a port 1-65535 in '192.0.2.10:0'",
            id="match-port-0",
        ),
        pytest.param(
            gateway_file(connectors=match_connector('["10.0.0.0/8", "[2001:db8::1"]')),
            "connector[0].match[1]: expected [IPv6]:port, got '[2001:db8::1'",
            id="match-bracket",
        ),
        pytest.param(
            gateway_file(connectors=match_connector('["192.0.2.10/24"]')),
            "connector[0].match[0]: expected an address or CIDR, optionally with :port, got"
            " '192.0.2.10/24' (192.0.2.10/24 has host bits set)",
            id="match-host-bits",
        ),
        pytest.param(
            gateway_file(connectors=match_connector('["api.example.com:80"]')),
            "connector[0].match[0]: expected an address or CIDR, optionally with :port, got"
            " 'api.example.com:80' ('api.example.com' does not appear to be an IPv4 or IPv6"
            " network)",
            id="match-name",
        ),
        pytest.param(
            gateway_file(connectors=match_connector('"192.0.2.10:80"')),
            "connector[0].match: expected an array, got '192.0.2.10:80'",
            id="match-not-array",
        ),
        pytest.param(
            gateway_file(connectors=match_connector("[]")),
            "connector[0].listen: required unless match is given (gateway mode)",
            id="match-empty-no-listen",
        ),
    ],
)
def test_gateway_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value) == message


def test_gateway_listen_of_the_wrong_type_says_what_it_takes() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(gateway_file(gateway="listen = 15001"))
    assert str(info.value) == (
        "gateway.listen: expected a string or an array of strings, got 15001"
    )


# -- nft, for real or not -------------------------------------------------------------------------

FAKE_NFT = """\
#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_NFT_DIR/args"
if [ "$1" = "-f" ]; then cat > "$FAKE_NFT_DIR/stdin"; fi
if [ -n "$FAKE_NFT_STDERR" ]; then printf '%s\\n' "$FAKE_NFT_STDERR" >&2; fi
exit "${FAKE_NFT_EXIT:-0}"
"""


@pytest.fixture
def fake_nft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `nft` first on PATH that records its arguments and stdin in the returned dir,
    and answers with $FAKE_NFT_STDERR and $FAKE_NFT_EXIT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nft = bin_dir / "nft"
    nft.write_text(FAKE_NFT)
    nft.chmod(nft.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_NFT_DIR", str(tmp_path))
    return tmp_path


def test_apply_rules_loads_the_ruleset_in_one_nft_run(fake_nft: Path) -> None:
    apply_rules(EMPTY_RULESET)
    assert (fake_nft / "args").read_text() == "-f -\n"
    assert (fake_nft / "stdin").read_text() == EMPTY_RULESET


def test_apply_rules_raises_with_nfts_own_words(
    fake_nft: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NFT_EXIT", "1")
    monkeypatch.setenv("FAKE_NFT_STDERR", "Error: Could not process rule: Operation not permitted")
    with pytest.raises(RuntimeError) as info:
        apply_rules(EMPTY_RULESET)
    assert str(info.value) == "nft -f -: Error: Could not process rule: Operation not permitted"


def test_remove_rules_deletes_the_table(fake_nft: Path) -> None:
    remove_rules()
    assert (fake_nft / "args").read_text() == "delete table inet relaycore\n"


def test_remove_rules_is_quiet_when_there_is_no_table(
    fake_nft: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NFT_EXIT", "1")
    monkeypatch.setenv(
        "FAKE_NFT_STDERR",
        "Error: Could not process rule: No such file or directory\n"
        "delete table inet relaycore\n^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    )
    remove_rules()


def test_remove_rules_raises_on_other_errors(
    fake_nft: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NFT_EXIT", "1")
    monkeypatch.setenv("FAKE_NFT_STDERR", "Error: Operation not permitted")
    with pytest.raises(RuntimeError) as info:
        remove_rules()
    assert str(info.value) == "nft delete table inet relaycore: Error: Operation not permitted"


def test_nft_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError) as info:
        apply_rules(EMPTY_RULESET)
    assert str(info.value) == "nft not found: install the nftables package"


# -- relaycore rules ------------------------------------------------------------------------------


def test_rules_command_prints_the_ruleset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(gateway_file(passthrough='[[passthrough]]\nprotocol = "icmp"\n'))
    assert cli.main(["rules", "-c", str(path)]) == 0
    assert capsys.readouterr().out == config_rules(parse_config(path.read_text()))


def test_rules_command_applies_and_removes(
    tmp_path: Path, fake_nft: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(gateway_file())
    assert cli.main(["rules", "-c", str(path), "--apply"]) == 0
    assert capsys.readouterr().out == "applied: nftables table inet relaycore (dev0)\n"
    assert (fake_nft / "stdin").read_text() == EMPTY_RULESET
    assert cli.main(["rules", "--remove"]) == 0
    assert capsys.readouterr().out == "removed: nftables table inet relaycore\n"
    assert (fake_nft / "args").read_text() == "-f -\ndelete table inet relaycore\n"


def test_rules_command_needs_a_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(PLAIN)
    assert cli.main(["rules", "-c", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"relaycore: error: {path}: no [gateway] table, so no rules to make\n"
    )
