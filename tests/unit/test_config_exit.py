"""[[exit]] tables: the far end of a tunnel, its identity, who may connect and where to."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from config_files import PIN_A, PIN_B, connector

from relaycore.addresses import HostPort
from relaycore.config import Config, Exit, parse_config
from relaycore.errors import ConfigError
from relaycore.render import config_summary

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
    (tmp_path / "0123abcd.0").write_text("a hashed name: not parsed here\n")
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
            " (any destination but the exit host's own addresses, loopback included, and"
            " link-local and unspecified ones)",
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
