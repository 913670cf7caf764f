import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from relaycore.addresses import HostPort, parse_host_port
from relaycore.config import (
    Config,
    Connector,
    Exit,
    config_summary,
    load_config,
    parse_config,
)
from relaycore.errors import ConfigError

FULL = """
[relay]
workers = 3
run_dir = "/tmp/rc"
drain_timeout_s = 2.5
max_connections = 500
splice = "off"

[timeouts]
connect_s = 4
handshake_s = 3
idle_s = 60.5

[[connector]]
name = "acme-api"
listen = "0.0.0.0:8080"
upstream = "api.example.com:443"
tls = false

[[connector]]
name = "v6.local_1"
listen = "[::1]:8081"
upstream = "[2001:db8::1]:1883"
tls = false

[[connector]]
name = "broker"
listen = "127.0.0.1:8883"
upstream = "10.0.0.7:8883"
verify = false
min_tls = "1.3"
ciphersuites = "TLS_AES_256_GCM_SHA384"
groups = "X25519:P-256"
pin = ["sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
ktls = "off"
"""


def connector(
    name: str | None = "a",
    listen: str | None = "127.0.0.1:8080",
    upstream: str | None = "example.com:80",
    tls: str | None = "false",
    **extra: str,
) -> str:
    """A [[connector]] table; None leaves a key out, `tls` and `extra` are raw TOML."""
    keys = {"name": name, "listen": listen, "upstream": upstream}
    lines = [f'{k} = "{v}"' for k, v in keys.items() if v is not None]
    lines += [f"{k} = {v}" for k, v in {"tls": tls, **extra}.items() if v is not None]
    return "[[connector]]\n" + "".join(line + "\n" for line in lines)


ONE = connector()


def test_full_file_round_trips() -> None:
    cfg = parse_config(FULL)
    assert (cfg.relay.workers, cfg.relay.run_dir, cfg.relay.splice) == (3, "/tmp/rc", "off")
    assert (cfg.relay.drain_timeout_s, cfg.relay.max_connections) == (2.5, 500)
    assert (cfg.timeouts.connect_s, cfg.timeouts.handshake_s, cfg.timeouts.idle_s) == (
        4.0,
        3.0,
        60.5,
    )
    assert isinstance(cfg.timeouts.connect_s, float)
    a, b, c = cfg.connectors
    assert (a.name, a.listen, a.upstream, a.tls) == (
        "acme-api",
        "0.0.0.0:8080",
        "api.example.com:443",
        False,
    )
    assert a.listen_addr == HostPort("0.0.0.0", 8080)
    assert a.listen_addr.family == socket.AF_INET
    assert a.upstream_addr == HostPort("api.example.com", 443)
    assert a.upstream_addr.family == socket.AF_UNSPEC
    assert b.listen_addr == HostPort("::1", 8081)
    assert b.listen_addr.family == socket.AF_INET6
    assert str(b.upstream_addr) == "[2001:db8::1]:1883"
    assert (c.tls, c.verify, c.min_tls, c.ktls) == (True, False, "1.3", "off")
    assert (c.ciphers, c.ciphersuites, c.groups) == (None, "TLS_AES_256_GCM_SHA384", "X25519:P-256")
    assert c.pin == ("sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",)
    assert c.pin_digests == (bytes(32),)
    assert not c.insecure
    assert config_summary(cfg) == (
        "workers: 3 (up to 500 connections each)\n"
        "acme-api: 0.0.0.0:8080 -> api.example.com:443 (plain)\n"
        "v6.local_1: [::1]:8081 -> [2001:db8::1]:1883 (plain)\n"
        "broker: 127.0.0.1:8883 -> 10.0.0.7:8883"
        " (tls, no SNI, IP 10.0.0.7, verify off, pins 1, TLS >= 1.3, ktls off)"
    )


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(FULL)
    assert load_config(path) == parse_config(FULL)
    assert load_config(str(path)) == parse_config(FULL.encode())


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5, 7})
    cfg = parse_config(ONE)
    assert cfg.relay.workers == 5
    assert (cfg.relay.run_dir, cfg.relay.drain_timeout_s) == ("/run/relaycore", 30.0)
    assert (cfg.relay.max_connections, cfg.relay.splice) == (10_000, "auto")
    assert (cfg.timeouts.connect_s, cfg.timeouts.handshake_s, cfg.timeouts.idle_s) == (
        10.0,
        10.0,
        900.0,
    )
    assert parse_config("[relay]\n[timeouts]\n" + ONE) == cfg


def test_default_workers_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(1000)))
    assert parse_config(ONE).relay.workers == 256


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("conector = 1\n" + ONE, "<string>: unknown key 'conector'", id="unknown-top"),
        pytest.param(
            "[relay]\nwokers = 2\n" + ONE, "relay: unknown key 'wokers'", id="unknown-relay"
        ),
        pytest.param(
            ONE + connector("b", "127.0.0.1:81", port="1"),
            "connector[1]: unknown key 'port'",
            id="unknown-connector",
        ),
        pytest.param(
            '[relay]\nworkers = "2"\n' + ONE,
            "relay.workers: expected an integer, got '2'",
            id="wrong-type",
        ),
        pytest.param(
            "[relay]\nworkers = true\n" + ONE,
            "relay.workers: expected an integer, got true",
            id="bool-is-not-int",
        ),
        pytest.param(
            "[relay]\nworkers = 0\n" + ONE,
            "relay.workers: expected an integer >= 1, got 0",
            id="workers-0",
        ),
        pytest.param(
            "[relay]\nworkers = 257\n" + ONE,
            "relay.workers: expected an integer <= 256, got 257",
            id="workers-257",
        ),
        pytest.param(
            '[relay]\nsplice = "fast"\n' + ONE,
            "relay.splice: expected one of 'always', 'auto', 'off', got 'fast'",
            id="bad-splice",
        ),
        pytest.param(
            '[relay]\nrun_dir = ""\n' + ONE,
            "relay.run_dir: expected a string of length >= 1, got ''",
            id="empty-run-dir",
        ),
        pytest.param("relay = 3\n" + ONE, "relay: expected a table, got 3", id="relay-not-table"),
        pytest.param(
            "[timeouts]\nidle_s = -1\n" + ONE,
            "timeouts.idle_s: expected a number > 0, got -1",
            id="negative-timeout",
        ),
        pytest.param(
            "[timeouts]\nconnect_s = inf\n" + ONE,
            "timeouts.connect_s: expected a number <= 604800, got inf",
            id="infinite-timeout",
        ),
        pytest.param(
            ONE + connector(None, "127.0.0.1:81"),
            "connector[1].name: required key is missing",
            id="missing-name",
        ),
        pytest.param(
            connector(listen=None),
            "connector[0].listen: required unless match is given (gateway mode)",
            id="missing-listen",
        ),
        pytest.param(
            connector(upstream=None),
            "connector[0].upstream: required key is missing",
            id="missing-upstream",
        ),
        pytest.param(
            connector(name="a b"),
            "connector[0].name: expected 1-64 of A-Z a-z 0-9 _ . -, got 'a b'",
            id="bad-name",
        ),
        pytest.param(
            ONE + connector("a", "127.0.0.1:81"),
            "connector[1].name: 'a' is also the name of connector[0]",
            id="duplicate-name",
        ),
        pytest.param(
            ONE + connector("b"),
            "connector[1].listen: 127.0.0.1:8080 is also the listen address of connector[0] ('a')",
            id="duplicate-listen",
        ),
        pytest.param(
            connector("a", "[::1]:80") + connector("b", "[0::0:1]:80"),
            "connector[1].listen: [::1]:80 is also the listen address of connector[0] ('a')",
            id="duplicate-listen-v6-spelling",
        ),
        pytest.param(
            connector(listen="8080"),
            "connector[0].listen: expected host:port, got '8080'",
            id="listen-no-host",
        ),
        pytest.param(
            connector(listen="127.0.0.1:0"),
            "connector[0].listen: expected a port 1-65535, got '0' in '127.0.0.1:0'",
            id="port-0",
        ),
        pytest.param(
            connector(upstream="example.com:70000"),
            "connector[0].upstream: expected a port 1-65535, got '70000' in 'example.com:70000'",
            id="port-70000",
        ),
        pytest.param(
            connector(listen="localhost:8080"),
            "connector[0].listen: expected an IP address, got 'localhost'",
            id="listen-dns-name",
        ),
        pytest.param(
            connector(listen="::1:8080"),
            "connector[0].listen: an IPv6 address needs brackets, as in [::1]:8080, got '::1:8080'",
            id="ipv6-without-brackets",
        ),
        pytest.param(
            connector(upstream="-bad-.example:80"),
            "connector[0].upstream: expected an IP address or a DNS name, got '-bad-.example'",
            id="bad-dns-name",
        ),
        pytest.param(
            "[timeouts]\nhandshake_s = 0\n" + ONE,
            "timeouts.handshake_s: expected a number > 0, got 0",
            id="zero-handshake-timeout",
        ),
        pytest.param(
            connector(tls='"no"'),
            "connector[0].tls: expected true or false, got 'no'",
            id="tls-type",
        ),
        pytest.param(
            "",
            "connector: at least one [[connector]] or [[exit]] table is required",
            id="no-connector",
        ),
        pytest.param(
            "connector = []",
            "connector: at least one [[connector]] or [[exit]] table is required",
            id="empty-list",
        ),
        pytest.param(
            "connector = 3", "connector: expected an array, got 3", id="connector-not-array"
        ),
        pytest.param(
            "[relay]\nworkers = = 2\n" + ONE,
            "<string>: invalid TOML: invalid value (at line 2, column 11)",
            id="invalid-toml",
        ),
        pytest.param(b'a = "\xff"', "<string>: invalid TOML: not UTF-8 (byte 5)", id="not-utf8"),
    ],
)
def test_errors_name_the_field(text: str | bytes, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        ("[::1]:8080", "api.example.com:443"),
        ("[::]:1", "example.com.:65535"),
        ("10.0.0.1:80", "[2001:db8::1]:443"),
        ("10.0.0.1:80", "10.0.0.2:80"),
    ],
)
def test_valid_addresses(listen: str, upstream: str) -> None:
    c = parse_config(connector(listen=listen, upstream=upstream)).connectors[0]
    assert str(c.listen_addr) == listen
    assert str(c.upstream_addr) == upstream


def test_invalid_toml_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("[relay\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: invalid TOML: ")
    assert "line 1" in str(info.value)


def test_unknown_top_level_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("statz = 1\n" + ONE)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: unknown key 'statz'"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: file not found"


def test_unreadable_file(tmp_path: Path) -> None:
    # A directory, because a chmod 000 file is still readable when the tests run as root.
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"


def test_structs_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError) as info:
        Connector(name="a", listen="example.com:80", upstream="example.com:80", tls=False)
    assert str(info.value) == "listen: expected an IP address, got 'example.com'"
    with pytest.raises(ConfigError) as info:
        Config()
    assert str(info.value) == "connector: at least one [[connector]] or [[exit]] table is required"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("example.com", "expected host:port, got 'example.com'"),
        (":80", "expected host:port, got ':80'"),
        ("[::1]", "expected [IPv6 address]:port, got '[::1]'"),
        ("[1.2.3.4]:80", "expected an IPv6 address inside [ ], got '1.2.3.4'"),
        ("1.2.3.4: 80", "expected a port 1-65535, got ' 80' in '1.2.3.4: 80'"),
        ("1.2.3.999:80", "expected an IP address or a DNS name, got '1.2.3.999'"),
        ("a..b:80", "expected an IP address or a DNS name, got 'a..b'"),
        ("a_b.example:80", "expected an IP address or a DNS name, got 'a_b.example'"),
        (
            "x" * 64 + ".example:80",
            f"expected an IP address or a DNS name, got '{'x' * 64}.example'",
        ),
    ],
)
def test_parse_host_port_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_host_port(text, require_ip=False)
    assert str(info.value) == message


def test_parse_host_port_normalises_ip_literals() -> None:
    assert parse_host_port("[0:0::1]:80", require_ip=True) == HostPort("::1", 80)
    assert parse_host_port("x" * 63 + ".example:1", require_ip=False).port == 1


# -- TLS keys ------------------------------------------------------------------------------

PIN_A = "sha256/" + "A" * 43 + "="
PIN_B = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # SHA-256 of b""


def tls_connector(**extra: str) -> str:
    """A [[connector]] with tls left at its default (true); `extra` values are raw TOML."""
    return connector(tls=None, **extra)


def test_tls_is_the_default_and_verifies_against_the_system_store() -> None:
    c = parse_config(tls_connector()).connectors[0]
    assert (c.tls, c.verify, c.min_tls, c.ktls) == (True, True, "1.2", "auto")
    assert (c.server_name, c.ca, c.cert, c.key) == (None, None, None, None)
    assert (c.ciphers, c.ciphersuites, c.groups, c.pin) == (None, None, None, ())
    assert (c.sni, c.verify_name, c.insecure, c.pin_digests) == (
        "example.com",
        "example.com",
        False,
        (),
    )
    assert parse_config(connector(tls="true")) == parse_config(tls_connector())
    assert config_summary(parse_config(tls_connector())).splitlines()[1] == (
        "a: 127.0.0.1:8080 -> example.com:80 (tls, SNI example.com, CA system, ktls auto)"
    )


def test_every_tls_key(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "dev.pem", "dev.key"))
    for path in (ca, cert, key):
        path.write_text("not parsed here: the TLS layer does that\n")
    c = parse_config(
        tls_connector(
            server_name='"api.example.com"',
            ca=f'"{ca}"',
            cert=f'"{cert}"',
            key=f'"{key}"',
            verify="true",
            min_tls='"1.3"',
            ciphers='"ECDHE-ECDSA-AES128-GCM-SHA256"',
            ciphersuites='"TLS_AES_128_GCM_SHA256"',
            groups='"X25519:P-256"',
            pin=f'["{PIN_A}", "{PIN_B}"]',
            ktls='"require"',
        )
    ).connectors[0]
    assert (c.server_name, c.ca, c.cert, c.key) == ("api.example.com", str(ca), str(cert), str(key))
    assert (c.verify, c.min_tls, c.ktls) == (True, "1.3", "require")
    assert (c.ciphers, c.ciphersuites, c.groups) == (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_AES_128_GCM_SHA256",
        "X25519:P-256",
    )
    assert c.pin == (PIN_A, PIN_B)
    assert c.pin_digests == (bytes(32), hashlib.sha256(b"").digest())
    assert (c.sni, c.verify_name, c.insecure) == ("api.example.com", "api.example.com", False)
    mtls = tls_connector(ca=f'"{ca}"', cert=f'"{cert}"', key=f'"{key}"', pin=f'["{PIN_A}"]')
    assert config_summary(parse_config(mtls)).splitlines()[1] == (
        "a: 127.0.0.1:8080 -> example.com:80"
        f" (tls, SNI example.com, CA {ca}, client cert, pins 1, ktls auto)"
    )


def test_ca_may_be_a_directory_of_hashed_certificates(tmp_path: Path) -> None:
    c = parse_config(tls_connector(ca=f'"{tmp_path}"')).connectors[0]
    assert c.ca == str(tmp_path)


@pytest.mark.parametrize(
    ("upstream", "server_name", "sni", "verify_name"),
    [
        pytest.param("api.example.com:443", None, "api.example.com", "api.example.com", id="dns"),
        pytest.param("api.example.com.:443", None, "api.example.com", "api.example.com", id="dot"),
        pytest.param("10.0.0.7:443", None, None, "10.0.0.7", id="ipv4"),
        pytest.param("[2001:db8::0:1]:443", None, None, "2001:db8::1", id="ipv6"),
        pytest.param(
            "10.0.0.7:443",
            "api.example.com",
            "api.example.com",
            "api.example.com",
            id="name-for-an-ip",
        ),
        pytest.param("a.example:443", "b.example.", "b.example", "b.example", id="name-dot"),
        pytest.param("a.example:443", "localhost", "localhost", "localhost", id="one-label"),
        pytest.param("a.example:443", "10.0.0.9", None, "10.0.0.9", id="ip-for-a-name"),
        pytest.param("a.example:443", "2001:db8:0::9", None, "2001:db8::9", id="ipv6-name"),
    ],
)
def test_sni_and_the_name_the_certificate_must_match(
    upstream: str, server_name: str | None, sni: str | None, verify_name: str
) -> None:
    extra = {} if server_name is None else {"server_name": f'"{server_name}"'}
    cfg = parse_config(tls_connector(upstream=upstream, **extra))
    assert (cfg.connectors[0].sni, cfg.connectors[0].verify_name) == (sni, verify_name)
    shown = f"SNI {sni}" if sni else f"no SNI, IP {verify_name}"
    assert f"(tls, {shown}, CA system, ktls auto)" in config_summary(cfg)


def test_verify_off_is_insecure_unless_pinned() -> None:
    off = parse_config(tls_connector(verify="false")).connectors[0]
    assert (off.verify, off.insecure) == (False, True)
    assert "(tls, SNI example.com, verify off (insecure), ktls auto)" in config_summary(
        parse_config(tls_connector(verify="false"))
    )
    pinned = parse_config(tls_connector(verify="false", pin=f'["{PIN_A}"]')).connectors[0]
    assert (pinned.verify, pinned.insecure, pinned.pin_digests) == (False, False, (bytes(32),))
    plain = parse_config(ONE).connectors[0]
    assert not plain.insecure


TLS_KEYS = {
    "server_name": '"example.com"',
    "ca": '"/etc/ssl/certs"',
    "cert": '"/x.pem"',
    "key": '"/x.key"',
    "verify": "false",
    "min_tls": '"1.3"',
    "ciphers": '"HIGH"',
    "ciphersuites": '"TLS_AES_128_GCM_SHA256"',
    "groups": '"X25519"',
    "pin": f'["{PIN_A}"]',
    "ktls": '"off"',
}
# The same keys written with their default values: still a contradiction next to tls = false.
TLS_DEFAULTS = {"verify": "true", "min_tls": '"1.2"', "pin": "[]", "ktls": '"auto"'}


@pytest.mark.parametrize(
    ("key", "value"),
    [pytest.param(k, v, id=k) for k, v in TLS_KEYS.items()]
    + [pytest.param(k, v, id=f"{k}-default") for k, v in TLS_DEFAULTS.items()],
)
def test_tls_keys_need_tls(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(ONE + connector("b", "127.0.0.1:81", **{key: value}))
    assert str(info.value) == f"connector[1].{key}: only meaningful with tls = true"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            {"min_tls": '"1.1"'},
            "connector[0].min_tls: expected one of '1.2', '1.3', got '1.1'",
            id="min-tls-1.1",
        ),
        pytest.param(
            {"min_tls": "1.2"},
            "connector[0].min_tls: expected one of '1.2', '1.3' (in quotes), got 1.2",
            id="min-tls-number",
        ),
        pytest.param(
            {"ktls": '"on"'},
            "connector[0].ktls: expected one of 'auto', 'off', 'require', got 'on'",
            id="ktls-on",
        ),
        pytest.param(
            {"ktls": "true"},
            "connector[0].ktls: expected one of 'auto', 'off', 'require' (in quotes), got true",
            id="ktls-bool",
        ),
        pytest.param(
            {"verify": '"no"'},
            "connector[0].verify: expected true or false, got 'no'",
            id="verify-type",
        ),
        pytest.param(
            {"server_name": '"a_b.example"'},
            "connector[0].server_name: expected a DNS name or an IP address, got 'a_b.example'",
            id="server-name-underscore",
        ),
        pytest.param(
            {"server_name": '"*.example.com"'},
            "connector[0].server_name: expected a DNS name or an IP address, got '*.example.com'",
            id="server-name-wildcard",
        ),
        pytest.param(
            {"server_name": '"[::1]"'},
            "connector[0].server_name: expected a DNS name or an IP address, got '[::1]'",
            id="server-name-brackets",
        ),
        pytest.param(
            {"server_name": '"example.com:443"'},
            "connector[0].server_name: expected a DNS name or an IP address, got 'example.com:443'",
            id="server-name-port",
        ),
        pytest.param(
            {"server_name": '"fe80::1%eth0"'},
            "connector[0].server_name: expected a DNS name or an IP address, got 'fe80::1%eth0'",
            id="server-name-zone",
        ),
        pytest.param(
            {"server_name": '""'},
            "connector[0].server_name: expected a DNS name or an IP address, got ''",
            id="server-name-empty",
        ),
        pytest.param(
            {"ca": '""'},
            "connector[0].ca: expected a string of length >= 1, got ''",
            id="ca-empty",
        ),
        pytest.param(
            {"ca": '"/x.pem"'},
            "connector[0].ca: file not found: /x.pem",
            id="ca-missing",
        ),
        pytest.param(
            {"ca": '"/dev/null"'},
            "connector[0].ca: not a file or a directory: /dev/null",
            id="ca-device",
        ),
        pytest.param(
            {"cert": '"/x.pem"'},
            "connector[0].key: required when cert is set",
            id="cert-without-key",
        ),
        pytest.param(
            {"key": '"/x.key"'},
            "connector[0].cert: required when key is set",
            id="key-without-cert",
        ),
        pytest.param(
            {"cert": '"/x.pem"', "key": '"/x.key"'},
            "connector[0].cert: file not found: /x.pem",
            id="cert-missing",
        ),
        pytest.param(
            {"cert": '"/"', "key": '"/x.key"'},
            "connector[0].cert: not a file: /",
            id="cert-directory",
        ),
        pytest.param(
            {"ciphers": '""'},
            "connector[0].ciphers: expected a string of length >= 1, got ''",
            id="ciphers-empty",
        ),
        pytest.param(
            {"ciphersuites": '""'},
            "connector[0].ciphersuites: expected a string of length >= 1, got ''",
            id="ciphersuites-empty",
        ),
        pytest.param(
            {"groups": '""'},
            "connector[0].groups: expected a string of length >= 1, got ''",
            id="groups-empty",
        ),
        pytest.param(
            {"groups": '["X25519"]'},
            "connector[0].groups: expected a string, got an array",
            id="groups-array",
        ),
        pytest.param(
            {"pin": f'"{PIN_A}"'},
            f"connector[0].pin: expected an array, got '{PIN_A}'",
            id="pin-not-array",
        ),
        pytest.param(
            {"pin": "[1]"},
            "connector[0].pin[0]: expected a string, got 1",
            id="pin-not-string",
        ),
        pytest.param(
            {"pin": f'["{PIN_A}", "abc"]'},
            "connector[0].pin[1]: expected sha256/<base64 of a 32-byte SHA-256>, got 'abc'",
            id="pin-abc",
        ),
        pytest.param(
            {"pin": f'["{PIN_B[:-1]}"]'},
            "connector[0].pin[0]: expected sha256/<base64 of a 32-byte SHA-256>,"
            f" got '{PIN_B[:-1]}'",
            id="pin-no-padding",
        ),
        pytest.param(
            {"pin": f'["{PIN_B.replace("sha256", "SHA256")}"]'},
            "connector[0].pin[0]: expected sha256/<base64 of a 32-byte SHA-256>,"
            f" got '{PIN_B.replace('sha256', 'SHA256')}'",
            id="pin-upper-case",
        ),
        pytest.param(
            {"pin": f'["{PIN_B[7:]}"]'},
            "connector[0].pin[0]: expected sha256/<base64 of a 32-byte SHA-256>,"
            f" got '{PIN_B[7:]}'",
            id="pin-no-prefix",
        ),
        pytest.param(
            {"pin": '["sha256/' + "A" * 42 + 'B="]'},
            "connector[0].pin[0]: expected sha256/<base64 of a 32-byte SHA-256>,"
            f" got 'sha256/{'A' * 42}B='",
            id="pin-not-canonical",
        ),
        pytest.param(
            {"pin": '["sha256/' + "A" * 64 + '"]'},
            "connector[0].pin[0]: expected sha256/<base64 of a 32-byte SHA-256>,"
            f" got 'sha256/{'A' * 64}'",
            id="pin-sha512-length",
        ),
        pytest.param(
            {"pin": f'["{PIN_A}", "{PIN_B}", "{PIN_A}"]'},
            f"connector[0].pin[2]: '{PIN_A}' is also pin[0]",
            id="pin-duplicate",
        ),
    ],
)
def test_tls_errors_name_the_field(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tls_connector(**extra))
    assert str(info.value) == message


def test_key_file_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "dev.pem"
    cert.write_text("")
    with pytest.raises(ConfigError) as info:
        parse_config(tls_connector(cert=f'"{cert}"', key=f'"{tmp_path / "dev.key"}"'))
    assert str(info.value) == f"connector[0].key: file not found: {tmp_path / 'dev.key'}"


def test_unreadable_tls_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests run as root, which chmod 000 does not stop: make open() fail instead.
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    real_open = os.open

    def deny(path: str, flags: int, *args: int) -> int:
        if path == str(ca):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(ConfigError) as info:
        parse_config(tls_connector(ca=f'"{ca}"'))
    assert str(info.value) == f"connector[0].ca: cannot read {ca}: Permission denied"


def test_tls_rules_hold_for_structs_built_in_code() -> None:
    base = {"name": "a", "listen": "127.0.0.1:1", "upstream": "example.com:443"}
    with pytest.raises(ConfigError) as info:
        Connector(**base, tls=False, verify=False)
    assert str(info.value) == "verify: only meaningful with tls = true"
    with pytest.raises(ConfigError) as info:
        Connector(**base, pin=(PIN_A, "abc"))
    assert str(info.value) == ("pin[1]: expected sha256/<base64 of a 32-byte SHA-256>, got 'abc'")
    with pytest.raises(ConfigError) as info:
        Connector(**base, cert="/x.pem")
    assert str(info.value) == "key: required when cert is set"
    c = Connector(**base, server_name="10.1.2.3", pin=(PIN_B,))
    assert (c.sni, c.verify_name, c.pin_digests) == (None, "10.1.2.3", (hashlib.sha256().digest(),))


# -- [[exit]] ------------------------------------------------------------------------------


@pytest.fixture
def identity_files(tmp_path: Path) -> tuple[Path, Path]:
    """A cert and a key file: only their existence is checked when the file is loaded."""
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    for path in (cert, key):
        path.write_text("not parsed here: the TLS layer does that\n")
    return cert, key


def exit_table(
    cert: Path,
    key: Path,
    name: str | None = "x",
    listen: str | None = "127.0.0.1:9443",
    target: str | None = "socks5",
    allow: str | None = f'["{PIN_A}"]',
    **extra: str,
) -> str:
    """An [[exit]] table; None leaves a key out, `allow` and `extra` are raw TOML."""
    keys = {"name": name, "listen": listen, "cert": str(cert), "key": str(key), "target": target}
    lines = [f'{k} = "{v}"' for k, v in keys.items() if v is not None]
    lines += [f"{k} = {v}" for k, v in {"allow": allow, **extra}.items() if v is not None]
    return "[[exit]]\n" + "".join(line + "\n" for line in lines)


def test_an_exit_node_needs_no_connector(identity_files: tuple[Path, Path]) -> None:
    cert, key = identity_files
    cfg = parse_config(exit_table(cert, key))
    assert cfg.connectors == ()
    [x] = cfg.exits
    assert (x.name, x.listen_addr, x.cert, x.key) == (
        "x",
        HostPort("127.0.0.1", 9443),
        str(cert),
        str(key),
    )
    assert (x.allow, x.allow_digests, x.ca) == ((PIN_A,), (bytes(32),), None)
    assert (x.target, x.target_kind, x.target_addr) == ("socks5", "socks5", None)
    assert (x.allow_destinations, x.destination_networks) == (None, [])
    assert (x.min_tls, x.ktls) == ("1.2", "auto")
    assert config_summary(cfg).splitlines()[1:] == [
        "x: exit 127.0.0.1:9443 -> socks5 (tls server, allow pins 1, destinations default,"
        " ktls auto)"
    ]


def test_every_exit_key(identity_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = identity_files
    cfg = parse_config(
        exit_table(
            cert,
            key,
            listen="[::]:8443",
            target="http-connect",
            allow=f'["{PIN_A}", "{PIN_B}"]',
            ca=f'"{tmp_path}"',
            allow_destinations='["10.0.0.0/8", "192.0.2.10:443", "[2001:db8::1]:443"]',
            min_tls='"1.3"',
            ktls='"require"',
        )
    )
    [x] = cfg.exits
    assert x.listen_addr == HostPort("::", 8443)
    assert x.allow_digests == (bytes(32), hashlib.sha256(b"").digest())
    assert (x.ca, x.min_tls, x.ktls) == (str(tmp_path), "1.3", "require")
    assert (x.target_kind, x.target_addr) == ("http-connect", None)
    assert [(str(net), port) for net, port in x.destination_networks] == [
        ("10.0.0.0/8", 0),
        ("192.0.2.10/32", 443),
        ("2001:db8::1/128", 443),
    ]
    assert config_summary(cfg).splitlines()[1] == (
        f"x: exit [::]:8443 -> http-connect (tls server, allow pins 2, client CA {tmp_path},"
        " destinations 3, TLS >= 1.3, ktls require)"
    )


@pytest.mark.parametrize(
    ("target", "kind", "addr"),
    [
        ("socks5", "socks5", None),
        ("http-connect", "http-connect", None),
        ("10.0.0.7:1883", "fixed", HostPort("10.0.0.7", 1883)),
        ("broker.example.com:8883", "fixed", HostPort("broker.example.com", 8883)),
        ("[2001:db8::0:1]:443", "fixed", HostPort("2001:db8::1", 443)),
    ],
)
def test_exit_targets(
    identity_files: tuple[Path, Path], target: str, kind: str, addr: HostPort | None
) -> None:
    [x] = parse_config(exit_table(*identity_files, target=target)).exits
    assert (x.target_kind, x.target_addr) == (kind, addr)


def test_ca_alone_admits_entry_nodes(identity_files: tuple[Path, Path], tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    [x] = parse_config(exit_table(*identity_files, allow=None, ca=f'"{ca}"')).exits
    assert (x.allow, x.allow_digests, x.ca) == ((), (), str(ca))


def test_exits_beside_connectors_and_a_gateway(identity_files: tuple[Path, Path]) -> None:
    cert, key = identity_files
    cfg = parse_config(
        connector("a", "127.0.0.1:8080")
        + '[gateway]\ninterface = "eth1"\nlisten = "127.0.0.1:15001"\n'
        + exit_table(cert, key, name="x", listen="127.0.0.1:9443")
        + exit_table(cert, key, name="y", listen="127.0.0.1:9444", target="10.0.0.7:80")
    )
    assert [c.name for c in cfg.connectors] == ["a"]
    assert [x.name for x in cfg.exits] == ["x", "y"]


def exit_errors() -> list[Any]:
    """(keys that differ from exit_table's defaults, message) for the [[exit]] checks."""
    return [
        pytest.param({"name": None}, "exit[0].name: required key is missing", id="missing-name"),
        pytest.param(
            {"name": "a b"},
            "exit[0].name: expected 1-64 of A-Z a-z 0-9 _ . -, got 'a b'",
            id="bad-name",
        ),
        pytest.param(
            {"listen": None}, "exit[0].listen: required key is missing", id="missing-listen"
        ),
        pytest.param(
            {"listen": "localhost:9443"},
            "exit[0].listen: expected an IP address, got 'localhost'",
            id="listen-dns-name",
        ),
        pytest.param(
            {"listen": "9443"}, "exit[0].listen: expected host:port, got '9443'", id="listen-port"
        ),
        pytest.param(
            {"target": None}, "exit[0].target: required key is missing", id="missing-target"
        ),
        pytest.param(
            {"target": "socks"},
            "exit[0].target: expected 'socks5', 'http-connect' or host:port, got 'socks'",
            id="target-socks",
        ),
        pytest.param(
            {"target": "SOCKS5"},
            "exit[0].target: expected 'socks5', 'http-connect' or host:port, got 'SOCKS5'",
            id="target-case",
        ),
        pytest.param(
            {"target": "example.com:0"},
            "exit[0].target: expected a port 1-65535, got '0' in 'example.com:0'",
            id="target-port-0",
        ),
        pytest.param(
            {"target": "-bad-.example:80"},
            "exit[0].target: expected an IP address or a DNS name, got '-bad-.example'",
            id="target-bad-name",
        ),
        pytest.param(
            {"target": "::1:80"},
            "exit[0].target: an IPv6 address needs brackets, as in [::1]:8080, got '::1:80'",
            id="target-ipv6-brackets",
        ),
        pytest.param(
            {"allow": None},
            "exit[0].allow: required unless ca is given: the pins of the entry nodes that may"
            " connect (an exit that anyone can use is an open proxy)",
            id="nobody-allowed",
        ),
        pytest.param(
            {"allow": "[]"},
            "exit[0].allow: required unless ca is given: the pins of the entry nodes that may"
            " connect (an exit that anyone can use is an open proxy)",
            id="empty-allow",
        ),
        pytest.param(
            {"allow": '["abc"]'},
            "exit[0].allow[0]: expected sha256/<base64 of a 32-byte SHA-256>, got 'abc'",
            id="allow-bad-pin",
        ),
        pytest.param(
            {"allow": f'["{PIN_A}", "{PIN_B}", "{PIN_A}"]'},
            f"exit[0].allow[2]: '{PIN_A}' is also allow[0]",
            id="allow-duplicate",
        ),
        pytest.param(
            {"allow": f'"{PIN_A}"'},
            f"exit[0].allow: expected an array, got '{PIN_A}'",
            id="allow-not-a-list",
        ),
        pytest.param(
            {"allow_destinations": '["10.0.0.0/8"]', "target": "10.0.0.7:80"},
            "exit[0].allow_destinations: only meaningful with target = 'socks5' or"
            " 'http-connect' (a fixed target is the only destination)",
            id="destinations-with-fixed-target",
        ),
        pytest.param(
            {"allow_destinations": "[]"},
            "exit[0].allow_destinations: empty; leave the key out for the default policy"
            " (any destination but loopback, link-local and unspecified addresses)",
            id="destinations-empty",
        ),
        pytest.param(
            {"allow_destinations": '["10.0.0.0/8", "10.0.0.1/8"]'},
            "exit[0].allow_destinations[1]: expected an address or CIDR, optionally with"
            " :port, got '10.0.0.1/8' (10.0.0.1/8 has host bits set)",
            id="destinations-host-bits",
        ),
        pytest.param(
            {"allow_destinations": '["::ffff:10.0.0.0/104"]'},
            "exit[0].allow_destinations[0]: '::ffff:10.0.0.0/104' is IPv4-mapped; write the"
            " IPv4 address or network instead",
            id="destinations-v4-mapped",
        ),
        pytest.param(
            {"allow_destinations": '["example.com:443"]'},
            "exit[0].allow_destinations[0]: expected an address or CIDR, optionally with"
            " :port, got 'example.com:443' ('example.com' does not appear to be an IPv4 or"
            " IPv6 network)",
            id="destinations-name",
        ),
        pytest.param(
            {"allow_destinations": '["10.0.0.1:0"]'},
            "exit[0].allow_destinations[0]: expected a port 1-65535 in '10.0.0.1:0'",
            id="destinations-port-0",
        ),
        pytest.param(
            {"min_tls": "1.3"},
            "exit[0].min_tls: expected one of '1.2', '1.3' (in quotes), got 1.3",
            id="min-tls-number",
        ),
        pytest.param(
            {"ktls": '"on"'},
            "exit[0].ktls: expected one of 'auto', 'off', 'require', got 'on'",
            id="ktls-on",
        ),
        pytest.param({"verify": "false"}, "exit[0]: unknown key 'verify'", id="unknown-key"),
    ]


@pytest.mark.parametrize(("extra", "message"), exit_errors())
def test_exit_errors_name_the_field(
    identity_files: tuple[Path, Path], extra: dict[str, str | None], message: str
) -> None:
    # name, listen, target and allow may be None (left out); other keys are raw TOML.
    named = {k: v for k, v in extra.items() if k in ("name", "listen", "target", "allow")}
    raw = {k: v for k, v in extra.items() if k not in named}
    with pytest.raises(ConfigError) as info:
        parse_config(exit_table(*identity_files, **named, **raw))
    assert str(info.value) == message


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_exit_identity_files_must_exist(tmp_path: Path, missing: str) -> None:
    files = {"cert": tmp_path / "node.crt", "key": tmp_path / "node.key"}
    files["cert" if missing == "key" else "key"].write_text("")
    with pytest.raises(ConfigError) as info:
        parse_config(exit_table(files["cert"], files["key"]))
    assert str(info.value) == f"exit[0].{missing}: file not found: {files[missing]}"


def test_exit_ca_must_exist(identity_files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(exit_table(*identity_files, ca=f'"{tmp_path / "ca.pem"}"'))
    assert str(info.value) == f"exit[0].ca: file not found: {tmp_path / 'ca.pem'}"


def test_exit_cert_is_required(identity_files: tuple[Path, Path]) -> None:
    text = exit_table(*identity_files)
    without = "".join(line + "\n" for line in text.splitlines() if not line.startswith("cert"))
    with pytest.raises(ConfigError) as info:
        parse_config(without)
    assert str(info.value) == "exit[0].cert: required key is missing"


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        pytest.param(
            lambda c, k: connector("x", "127.0.0.1:8080") + exit_table(c, k, name="x"),
            "exit[0].name: 'x' is also the name of connector[0]",
            id="name-of-a-connector",
        ),
        pytest.param(
            lambda c, k: exit_table(c, k) + exit_table(c, k, listen="127.0.0.1:9444"),
            "exit[1].name: 'x' is also the name of exit[0]",
            id="name-of-an-exit",
        ),
        pytest.param(
            lambda c, k: connector("a", "127.0.0.1:9443") + exit_table(c, k),
            "exit[0].listen: 127.0.0.1:9443 is also the listen address of connector[0] ('a')",
            id="listen-of-a-connector",
        ),
        pytest.param(
            lambda c, k: (
                exit_table(c, k, listen="[::1]:9443")
                + exit_table(c, k, name="y", listen="[0::0:1]:9443")
            ),
            "exit[1].listen: [::1]:9443 is also the listen address of exit[0] ('x')",
            id="listen-of-an-exit",
        ),
        pytest.param(
            lambda c, k: (
                connector("a", "127.0.0.1:8080")
                + '[gateway]\ninterface = "eth1"\nlisten = ["127.0.0.1:9443", "[::1]:9443"]\n'
                + exit_table(c, k, listen="[::1]:9443")
            ),
            "exit[0].listen: [::1]:9443 is also a gateway.listen address",
            id="listen-of-the-gateway",
        ),
        pytest.param(
            lambda c, k: (
                connector("a", "127.0.0.1:8080")
                + '[gateway]\ninterface = "eth1"\ndefault = "x"\n'
                + exit_table(c, k)
            ),
            "gateway.default: expected 'reject' or a connector name, got 'x'",
            id="gateway-default-is-no-exit",
        ),
    ],
)
def test_exits_share_names_and_addresses_with_connectors(
    identity_files: tuple[Path, Path], tables: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tables(*identity_files))
    assert str(info.value) == message


def test_exit_rules_hold_for_structs_built_in_code(identity_files: tuple[Path, Path]) -> None:
    cert, key = (str(p) for p in identity_files)
    base = {"name": "x", "listen": "127.0.0.1:1", "cert": cert, "key": key}
    with pytest.raises(ConfigError) as info:
        Exit(**base, target="socks5")
    assert str(info.value).startswith("allow: required unless ca is given")
    with pytest.raises(ConfigError) as info:
        Exit(**base, allow=(PIN_A,), target="10.0.0.1:80", allow_destinations=("10.0.0.0/8",))
    assert str(info.value).startswith("allow_destinations: only meaningful with target")
    x = Exit(**base, allow=(PIN_B,), target="10.0.0.1:80")
    assert Config(exits=(x,)).exits == (x,)
