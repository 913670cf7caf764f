"""A connector's TLS keys: defaults, every key, the files they name, and the errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from config_files import ONE, PIN_A, PIN_B, connector

from relaycore.config import Connector, parse_config
from relaycore.errors import ConfigError
from relaycore.render import config_summary

# -- TLS keys ------------------------------------------------------------------------------


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
    (tmp_path / "0123abcd.0").write_text("a hashed name: not parsed here\n")
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
