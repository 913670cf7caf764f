"""`relaycore check` on files written to break `run`, as a user runs it (issue 16): what
`run` cannot run fails check with one line and exit 3; what it can run but should not
(a private key others may read, an fd limit too low for max_connections) is a warning, at
check and again at run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from control import relaycore
from support.relay import relay_process

from relaycore.lab.base import HOST, free_port
from relaycore.lab.pki import make_pki, make_server_pki


def tls_connector(name: str = "acme", **keys: str) -> str:
    lines = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    return (
        f'[[connector]]\nname = "{name}"\nlisten = "{HOST}:{free_port()}"\n'
        f'upstream = "localhost:9443"\n{lines}'
    )


def check(
    tmp_path: Path, text: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "relay.toml"
    # max_connections: so that the open-files warning stays out of the way of others.
    head = f'[relay]\nrun_dir = "{tmp_path / "run"}"\nmax_connections = 1000\n'
    path.write_text(head + text)
    return relaycore("check", "-c", str(path), wrapper=prefix)


def assert_one_error(out: subprocess.CompletedProcess[str], line: str) -> None:
    assert out.returncode == 3, out
    assert out.stderr == f"relaycore: error: {line}\n"
    assert out.stdout == ""


def test_deeply_nested_toml_exits_3_with_one_line(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_error(
        relaycore("check", "-c", str(path)), f"{path}: invalid TOML: nested too deeply"
    )
    assert_one_error(relaycore("run", "-c", str(path)), f"{path}: invalid TOML: nested too deeply")


def test_a_timeout_under_a_millisecond_fails_check(tmp_path):
    out = check(tmp_path, "[timeouts]\nhandshake_s = 0.0004\n" + tls_connector())
    assert_one_error(out, "timeouts.handshake_s: expected a number >= 0.001, got 0.0004")


@pytest.mark.parametrize("content", ["", "no certificate here\n"], ids=["empty", "garbage"])
def test_a_ca_file_without_a_certificate_fails_check(tmp_path, content):
    ca = tmp_path / "ca.pem"
    ca.write_text(content)
    out = check(tmp_path, tls_connector(ca=str(ca)))
    assert out.returncode == 3, out
    assert out.stderr.startswith(f"relaycore: error: connector[0].ca: cannot load {ca}: ")
    assert "no certificate or crl found" in out.stderr


def test_an_empty_ca_directory_fails_check(tmp_path):
    ca = tmp_path / "ca.d"
    ca.mkdir()
    out = check(tmp_path, tls_connector(ca=str(ca)))
    assert out.returncode == 3, out
    assert out.stderr.startswith(
        f"relaycore: error: connector[0].ca: no certificate in directory {ca}"
    )


def test_a_key_that_does_not_match_its_certificate_fails_check(tmp_path):
    pki = make_pki(tmp_path / "pki")
    one, other = pki.issue("one", client=True), pki.issue("other", client=True)
    out = check(tmp_path, tls_connector(cert=str(one.cert), key=str(other.key)))
    assert out.returncode == 3, out
    assert out.stderr.startswith("relaycore: error: connector[0].key: ")


@pytest.mark.parametrize(
    ("mode", "who"), [(0o644, "every user"), (0o640, "group")], ids=["world", "group"]
)
def test_a_private_key_others_may_read_is_a_warning_at_check(tmp_path, mode, who):
    pki = make_pki(tmp_path / "pki")
    client = pki.issue("device", client=True)
    client.key.chmod(mode)
    out = check(tmp_path, tls_connector(cert=str(client.cert), key=str(client.key)))
    assert out.returncode == 0, out
    [warning] = [line for line in out.stderr.splitlines() if "WARNING" in line]
    assert f"connector acme: key {client.key} may be read by {who}" in warning
    assert f"(mode {mode:04o})" in warning
    client.key.chmod(0o600)
    assert (
        "WARNING"
        not in check(tmp_path, tls_connector(cert=str(client.cert), key=str(client.key))).stderr
    )


def test_a_private_key_others_may_read_is_a_warning_at_run(tmp_path):
    server = make_server_pki(tmp_path / "server")
    server.key.chmod(0o644)
    port = free_port()
    text = (
        f'[relay]\nworkers = 1\nmax_connections = 1000\nrun_dir = "{tmp_path / "run"}"\n'
        f'[[exit]]\nname = "out"\nlisten = "{HOST}:{port}"\ncert = "{server.cert}"\n'
        f'key = "{server.key}"\nallow = ["sha256/{"A" * 43}="]\ntarget = "{HOST}:9"\n'
    )
    with relay_process(text, tmp_path) as relay:
        relay.wait_line(rf"WARNING exit out: key {server.key} may be read by every user", 5)


def test_an_fd_limit_too_low_for_max_connections_is_a_warning(tmp_path):
    text = "[relay]\nworkers = 1\nmax_connections = 1000\n" + tls_connector()
    path = tmp_path / "relay.toml"
    path.write_text(text.replace("[relay]\n", f'[relay]\nrun_dir = "{tmp_path / "run"}"\n', 1))
    out = relaycore("check", "-c", str(path), wrapper=("prlimit", "--nofile=256"))
    assert out.returncode == 0, out
    [warning] = [line for line in out.stderr.splitlines() if "WARNING" in line]
    assert "open files: the limit is 256" in warning
    assert "max_connections = 1000 needs" in warning
    assert (
        "WARNING"
        not in relaycore("check", "-c", str(path), wrapper=("prlimit", "--nofile=4096")).stderr
    )
