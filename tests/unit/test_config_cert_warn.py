"""`cert_warn_days`, a connector's TLS key: days before the server certificate's notAfter
from which the relay logs cert_expiring (0: never)."""

from __future__ import annotations

import pytest
from config_files import connector

from relaycore.config import parse_config
from relaycore.errors import ConfigError


def test_default_is_14_days_and_0_turns_it_off() -> None:
    assert parse_config(connector(tls=None)).connectors[0].cert_warn_days == 14
    assert parse_config(connector(tls=None, cert_warn_days="0")).connectors[0].cert_warn_days == 0
    assert parse_config(connector(tls=None, cert_warn_days="60")).connectors[0].cert_warn_days == 60


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "connector[0].cert_warn_days: expected an integer >= 0, got -1"),
        ("3651", "connector[0].cert_warn_days: expected an integer <= 3650, got 3651"),
        ("1.5", "connector[0].cert_warn_days: expected an integer, got 1.5"),
    ],
)
def test_bad_values_are_refused_with_the_path(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(connector(tls=None, cert_warn_days=value))
    assert str(err.value) == message


def test_it_needs_tls() -> None:
    with pytest.raises(
        ConfigError, match=r"^connector\[0\]\.cert_warn_days: only meaningful with tls = true$"
    ):
        parse_config(connector(tls="false", cert_warn_days="14"))
