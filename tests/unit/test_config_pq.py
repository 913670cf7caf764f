"""`pq` on connectors and exits: its default, its values, and how it agrees with `groups`."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_files import connector
from test_config_exit import exit_table, identity_files  # noqa: F401 (a fixture)

from relaycore.config import parse_config
from relaycore.errors import ConfigError
from relaycore.render import config_summary


def test_prefer_is_the_default() -> None:
    c = parse_config(connector(tls=None)).connectors[0]
    assert (c.pq, c.groups) == ("prefer", None)


@pytest.mark.parametrize("pq", ["prefer", "require", "off"])
def test_each_value_is_accepted_and_shown_when_not_the_default(pq: str) -> None:
    cfg = parse_config(connector(tls=None, pq=f'"{pq}"'))
    assert cfg.connectors[0].pq == pq
    line = config_summary(cfg).splitlines()[1]
    assert line.endswith("ktls auto)" if pq == "prefer" else f"ktls auto, pq {pq})"), line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"tls": None, "pq": '"yes"'},
            "connector[0].pq: expected one of 'off', 'prefer', 'require', got 'yes'",
        ),
        (
            {"tls": None, "pq": '"require"', "groups": '"X25519:P-256"'},
            "connector[0].pq: \"require\", but groups = 'X25519:P-256' offers no post-quantum"
            " group (e.g. X25519MLKEM768)",
        ),
        (
            {"tls": None, "pq": '"off"', "groups": '"X25519MLKEM768:X25519"'},
            "connector[0].pq: \"off\", but groups = 'X25519MLKEM768:X25519' offers a"
            " post-quantum group",
        ),
        ({"tls": "false", "pq": '"off"'}, "connector[0].pq: only meaningful with tls = true"),
    ],
)
def test_bad_values_and_disagreements_are_one_line(
    extra: dict[str, str | None], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(connector(**extra))
    assert str(info.value) == message


def test_groups_with_a_pq_group_may_require_it() -> None:
    c = parse_config(
        connector(tls=None, pq='"require"', groups='"X25519MLKEM768:SecP256r1MLKEM768"')
    ).connectors[0]
    assert (c.pq, c.groups) == ("require", "X25519MLKEM768:SecP256r1MLKEM768")


def test_exit_pq(identity_files: tuple[Path, Path]) -> None:  # noqa: F811
    cert, key = identity_files
    assert parse_config(exit_table(cert, key)).exits[0].pq == "prefer"
    cfg = parse_config(exit_table(cert, key, pq='"require"'))
    assert cfg.exits[0].pq == "require"
    assert config_summary(cfg).splitlines()[1].endswith(", pq require)")
    with pytest.raises(ConfigError, match=r"^exit\[0\]\.pq: expected one of"):
        parse_config(exit_table(cert, key, pq='"always"'))
