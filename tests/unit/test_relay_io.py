"""relaycore.lab.relay.with_relay_io, which puts a test session's io mode (`pytest
--io=io_uring`) into the configs its relays run: in [relay] when the file has it, a
[relay] of its own when not, and never over what the file says."""

from __future__ import annotations

import tomllib

import pytest
from config_files import ONE

from relaycore.config import parse_config
from relaycore.lab.relay import with_relay_io


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(ONE, id="no-relay-table"),
        pytest.param("[relay]\nworkers = 1\n\n" + ONE, id="relay-table"),
        pytest.param("[relay] # the process\nworkers = 1\n" + ONE, id="header-comment"),
        pytest.param(ONE + "\n[relay]", id="relay-last-no-newline"),
    ],
)
def test_the_mode_lands_in_relay_and_nothing_else_moves(text: str) -> None:
    changed = with_relay_io(text, "io_uring")
    assert parse_config(changed).relay.io == "io_uring"
    before, after = tomllib.loads(text), tomllib.loads(changed)
    assert after == {**before, "relay": {**before.get("relay", {}), "io": "io_uring"}}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('[relay]\nio = "epoll"\n' + ONE, id="io-set"),
        pytest.param("[relay\n" + ONE, id="not-toml"),
        pytest.param("relay.workers = 1\n" + ONE, id="dotted-keys"),
        pytest.param("relay = 3\n" + ONE, id="relay-not-a-table"),
    ],
)
def test_a_file_that_says_otherwise_is_left_as_written(text: str) -> None:
    assert with_relay_io(text, "io_uring") == text
