"""The CLI as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from support.relay import relay_config

from relaycore import __version__, _core
from relaycore.lab.base import free_port


def relaycore(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaycore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_version():
    out = relaycore("--version")
    assert out.returncode == 0
    # The version, and the OpenSSL the data path runs (not Python's ssl module's).
    assert out.stdout.strip() == (
        f"relaycore {__version__} with {_core.OPENSSL_VERSION} ({_core.OPENSSL_ORIGIN})"
    )
    major, minor = map(int, _core.OPENSSL_VERSION.split()[1].split(".")[:2])
    assert (major, minor) >= (3, 5), _core.OPENSSL_VERSION


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["demo"]])
def test_help_answers_for_every_command(command):
    out = relaycore(*command, "--help")
    assert out.returncode == 0
    assert "usage: relaycore" in out.stdout
    assert "exit codes:" in out.stdout


def test_no_command_is_a_usage_error():
    out = relaycore()
    assert out.returncode == 2
    assert "required: COMMAND" in out.stderr


def test_check_accepts_a_good_file(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(relay_config(run_dir=tmp_path, listen_port=8080, upstream_port=9000))
    out = relaycore("check", "-c", str(path))
    assert out.returncode == 0, out.stderr
    assert f"{path}: ok" in out.stdout
    assert "t: 127.0.0.1:8080 -> 127.0.0.1:9000 (plain)" in out.stdout


def test_check_rejects_a_bad_file_with_the_field_path(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(
        relay_config(run_dir=tmp_path, listen_port=8080, upstream_port=9000).replace(
            'listen = "127.0.0.1:8080"', 'listen = "8080"'
        )
    )
    out = relaycore("check", "-c", str(path))
    assert out.returncode == 3
    assert out.stderr.startswith("relaycore: error: connector[0].listen: ")
    assert "Traceback" not in out.stderr


def test_run_with_a_missing_file_exits_3(tmp_path):
    out = relaycore("run", "-c", str(tmp_path / "nope.toml"))
    assert out.returncode == 3
    assert "file not found" in out.stderr


def test_run_on_an_address_in_use_exits_4(tmp_path):
    port = free_port()
    # A socket without SO_REUSEPORT blocks the whole port for the relay.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        path = tmp_path / "relay.toml"
        path.write_text(relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=9))
        out = relaycore("run", "-c", str(path))
    assert out.returncode == 4
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
