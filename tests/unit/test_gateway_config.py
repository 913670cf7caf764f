"""The config checks of [gateway], [[passthrough]] and `match`, with the path of the key
at fault in each error."""

from __future__ import annotations

import ipaddress

import pytest
from gateway_files import CONNECTOR, PLAIN, gateway_file

from relaycore.config import parse_config
from relaycore.errors import ConfigError

net = ipaddress.ip_network

# -- config checks --------------------------------------------------------------------------------


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
