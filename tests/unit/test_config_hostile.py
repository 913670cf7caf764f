"""Config files written to break `relaycore run`: each gets the one line of a ConfigError
from the parser, never a crash in a worker or an unexpected exception (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_files import ONE, connector

from relaycore.config import parse_config
from relaycore.errors import ConfigError
from relaycore.lab.pki import make_pki


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a = " + "[" * 5000 + "]" * 5000 + "\n", id="arrays"),
        pytest.param("a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n", id="inline-tables"),
        pytest.param("[relay]\nrun_dir = " + "[" * 5000 + "]" * 5000 + "\n" + ONE, id="in-a-key"),
    ],
)
def test_deeply_nested_toml_is_one_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value) == "<string>: invalid TOML: nested too deeply"


def test_nesting_that_a_config_might_have_still_parses() -> None:
    # The limit is far above anything a relay's file nests: an array of tables in a table.
    assert parse_config("[relay]\nworkers = 1\n" + ONE).relay.workers == 1


@pytest.mark.parametrize("key", ["connect_s", "handshake_s", "idle_s"])
def test_timeouts_under_a_millisecond_are_refused(key: str) -> None:
    # The loop counts in milliseconds: 0.0004 s rounds to 0, which it cannot run.
    with pytest.raises(ConfigError) as info:
        parse_config(f"[timeouts]\n{key} = 0.0004\n" + ONE)
    assert str(info.value) == f"timeouts.{key}: expected a number >= 0.001, got 0.0004"


def test_a_drain_timeout_under_a_millisecond_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[relay]\ndrain_timeout_s = 1e-9\n" + ONE)
    assert str(info.value) == "relay.drain_timeout_s: expected a number >= 0.001, got 1e-09"


def test_a_millisecond_is_the_shortest_timeout() -> None:
    cfg = parse_config("[timeouts]\nconnect_s = 0.001\n" + ONE)
    assert cfg.timeouts.connect_s == 0.001


def test_a_run_dir_too_long_for_its_sockets_is_refused() -> None:
    # The control sockets are AF_UNIX: their paths must fit in sun_path (107 bytes).
    run_dir = "/var/run/" + "r" * 100
    with pytest.raises(ConfigError) as info:
        parse_config(f'[relay]\nrun_dir = "{run_dir}"\n' + ONE)
    assert str(info.value) == (
        f"relay.run_dir: {run_dir!r} is too long: the control sockets in it need paths of"
        " at most 107 bytes (this one makes 122)"
    )


def test_a_run_dir_of_the_longest_length_is_accepted() -> None:
    run_dir = "/" + "r" * (107 - len("/control.sock") - 1)
    assert parse_config(f'[relay]\nrun_dir = "{run_dir}"\n' + ONE).relay.run_dir == run_dir


def test_a_ca_directory_without_hashed_certificates_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "ca.pem").write_text("a certificate OpenSSL never finds here: no hash name\n")
    with pytest.raises(ConfigError) as info:
        parse_config(connector(tls=None, ca=f'"{empty}"'))
    assert str(info.value) == (
        f"connector[0].ca: no certificate in directory {empty}: OpenSSL looks a CA up by"
        " its subject hash (files named HHHHHHHH.0); run `openssl rehash` on it, or give"
        " a PEM file"
    )


def test_a_rehashed_ca_directory_is_accepted(tmp_path: Path) -> None:
    hashed = make_pki(tmp_path / "pki").hashed_dir()
    assert parse_config(connector(tls=None, ca=f'"{hashed}"')).connectors[0].ca == str(hashed)


@pytest.mark.slow
def test_more_routes_than_the_loop_can_number_are_refused() -> None:
    # Gateway connectors need no listen address, so nothing else stops 65,534 of them.
    tables = "".join(
        f'[[connector]]\nname = "c{k}"\nmatch = ["10.{k >> 8}.{k & 255}.1"]\n'
        'upstream = "10.0.0.1:80"\ntls = false\n'
        for k in range(0xFFFF - 1)
    )
    with pytest.raises(ConfigError) as info:
        parse_config('[gateway]\ninterface = "eth0"\n' + tables)
    assert str(info.value) == (
        "connector: at most 65535 connectors and exits in all (a [gateway] takes 2 of them),"
        " got 65536"
    )
