"""Issue 14's keys: [relay] resolve_interval_s, a connector's alpn, http_host,
proxy_protocol and accept_proxy, an exit's alpn and accept_proxy: defaults, what
`relaycore check` says of them, and each error, path first."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_files import connector

from relaycore import _core
from relaycore.config import parse_config
from relaycore.errors import ConfigError
from relaycore.render import config_summary

PIN = "sha256/" + "A" * 43 + "="


def tls(**extra: str) -> str:
    return connector(tls=None, upstream="api.example.com:8443", **extra)


def test_defaults_change_nothing() -> None:
    cfg = parse_config(tls())
    c = cfg.connectors[0]
    assert cfg.relay.resolve_interval_s == 30.0
    assert (c.alpn, c.http_host, c.proxy_protocol, c.accept_proxy) == ((), None, None, False)
    assert (c.proxy_version, c.http_host_value) == (0, None)


def test_every_key_and_what_check_says() -> None:
    cfg = parse_config(
        "[relay]\nresolve_interval_s = 0.5\n"
        + tls(
            server_name='"api.test"',
            alpn='["x-amzn-mqtt-ca", "mqtt"]',
            http_host='"rewrite"',
            proxy_protocol='"v2"',
            accept_proxy="true",
        )
    )
    c = cfg.connectors[0]
    assert cfg.relay.resolve_interval_s == 0.5
    assert (c.alpn, c.proxy_version, c.accept_proxy) == (("x-amzn-mqtt-ca", "mqtt"), 2, True)
    assert c.http_host_value == "api.test:8443"
    assert config_summary(cfg).splitlines()[1] == (
        "a: 127.0.0.1:8080 -> api.example.com:8443 (tls, SNI api.test, CA system,"
        " alpn x-amzn-mqtt-ca,mqtt, Host := api.test:8443, ktls off (Host rewrite),"
        " PROXY header read, PROXY v2 sent)"
    )


@pytest.mark.parametrize(
    ("upstream", "server_name", "host"),
    [
        ("api.example.com:443", None, "api.example.com"),
        ("10.0.0.7:8443", '"api.test."', "api.test:8443"),
        ("[2001:db8::1]:443", None, "[2001:db8::1]"),
        ("[2001:db8::1]:80", None, "[2001:db8::1]:80"),
    ],
)
def test_the_host_is_server_name_with_the_port_unless_443(upstream, server_name, host) -> None:
    extra = {"server_name": server_name} if server_name else {}
    c = parse_config(connector(tls=None, upstream=upstream, http_host='"rewrite"', **extra))
    assert c.connectors[0].http_host_value == host


def test_plain_connectors_take_the_proxy_keys_only() -> None:
    c = parse_config(connector(proxy_protocol='"v1"', accept_proxy="true")).connectors[0]
    assert (c.tls, c.proxy_version, c.accept_proxy) == (False, 1, True)
    assert config_summary(parse_config(connector(proxy_protocol='"v1"'))).splitlines()[1] == (
        "a: 127.0.0.1:8080 -> example.com:80 (plain, PROXY v1 sent)"
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[relay]\nresolve_interval_s = 0.01\n" + tls(),
         "relay.resolve_interval_s: expected 0 (off) or at least 0.1, got 0.01"),
        ("[relay]\nresolve_interval_s = -1\n" + tls(),
         "relay.resolve_interval_s: expected a number >= 0, got -1"),
        (tls(alpn='["h2", ""]'),
         "connector[0].alpn[1]: expected 1-255 printable ASCII characters, no spaces, got ''"),
        (tls(alpn='["h2", "h 2"]'),
         "connector[0].alpn[1]: expected 1-255 printable ASCII characters, no spaces,"
         " got 'h 2'"),
        (tls(alpn='["h2", "h2"]'), "connector[0].alpn[1]: 'h2' is also alpn[0]"),
        (tls(alpn=str([f"p{k}" for k in range(9)]).replace("'", '"')),
         "connector[0].alpn: at most 8 protocols, got 9"),
        (tls(alpn='"h2"'), "connector[0].alpn: expected an array, got 'h2'"),
        (connector(alpn='["h2"]'), "connector[0].alpn: only meaningful with tls = true"),
        (connector(http_host='"rewrite"'),
         "connector[0].http_host: only meaningful with tls = true"),
        (tls(http_host='"keep"'), "connector[0].http_host: expected one of 'rewrite', got 'keep'"),
        (tls(http_host='"rewrite"', ktls='"require"'),
         'connector[0].http_host: the rewrite runs in user space, so ktls = "require" cannot'
         ' be met (leave ktls out, or set "off")'),
        (tls(proxy_protocol='"v3"'),
         "connector[0].proxy_protocol: expected one of 'v1', 'v2', got 'v3'"),
        (tls(proxy_protocol="2"),
         "connector[0].proxy_protocol: expected one of 'v1', 'v2' (in quotes), got 2"),
        (connector(listen=None, match='["10.0.0.0/8"]', accept_proxy="true")
         + '[gateway]\ninterface = "dev0"\n',
         "connector[0].accept_proxy: needs listen (gateway connections come from nftables,"
         " not from a balancer that sends a PROXY header)"),
    ],
)  # fmt: skip
def test_errors(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "relay.toml")
    assert str(info.value) == error


def test_an_exit_takes_alpn_and_accept_proxy(tmp_path: Path) -> None:
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    _core.make_identity(str(key), str(cert), "exit")
    table = (
        f'[[exit]]\nname = "x"\nlisten = "127.0.0.1:9443"\ncert = "{cert}"\nkey = "{key}"\n'
        f'allow = ["{PIN}"]\ntarget = "127.0.0.1:1883"\n'
    )
    x = parse_config(table + 'alpn = ["relaycore"]\naccept_proxy = true\n').exits[0]
    assert (x.alpn, x.accept_proxy) == (("relaycore",), True)
    assert "alpn relaycore, PROXY header read" in config_summary(parse_config(
        table + 'alpn = ["relaycore"]\naccept_proxy = true\n'))  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_config(table + 'alpn = ["a", "a"]\n')
    assert str(info.value) == "exit[0].alpn[1]: 'a' is also alpn[0]"
