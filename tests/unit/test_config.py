"""The config file: every key, its default, and the one line a mistake in it gets (the
path of the key at fault first). test_config_tls.py has the TLS keys of a connector,
test_config_exit.py the [[exit]] tables."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from config_files import ONE, connector

from relaycore.addresses import HostPort, parse_host_port
from relaycore.config import Config, Connector, load_config, parse_config
from relaycore.errors import ConfigError
from relaycore.render import config_summary

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
    assert (cfg.relay.max_connections, cfg.relay.splice, cfg.relay.io) == (10_000, "auto", "epoll")
    assert (cfg.timeouts.connect_s, cfg.timeouts.handshake_s, cfg.timeouts.idle_s) == (
        10.0,
        10.0,
        900.0,
    )
    assert parse_config("[relay]\n[timeouts]\n" + ONE) == cfg


@pytest.mark.parametrize("io", ["epoll", "io_uring"])
def test_io_takes_either_loop(io: str) -> None:
    assert parse_config(f'[relay]\nio = "{io}"\n' + ONE).relay.io == io


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
            '[relay]\nio = "uring"\n' + ONE,
            "relay.io: expected one of 'epoll', 'io_uring', got 'uring'",
            id="bad-io",
        ),
        pytest.param(
            "[relay]\nio = 1\n" + ONE,
            "relay.io: expected one of 'epoll', 'io_uring' (in quotes), got 1",
            id="io-not-a-string",
        ),
        pytest.param(
            '[relay]\nrun_dir = ""\n' + ONE,
            "relay.run_dir: expected a string of length >= 1, got ''",
            id="empty-run-dir",
        ),
        pytest.param("relay = 3\n" + ONE, "relay: expected a table, got 3", id="relay-not-table"),
        pytest.param(
            "[timeouts]\nidle_s = -1\n" + ONE,
            "timeouts.idle_s: expected a number >= 0.001, got -1",
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
            "timeouts.handshake_s: expected a number >= 0.001, got 0",
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
