"""`relaycore identity` as a user runs it: the files it makes, their modes, and the pin it
prints, checked against the openssl command line the docs give for computing a pin."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

PIN_PIPELINE = (
    "openssl x509 -in node.crt -pubkey -noout | openssl pkey -pubin -outform der"
    " | openssl dgst -sha256 -binary | base64"
)


def relaycore(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaycore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def openssl_pin(directory: Path) -> str:
    """The pin as docs/CONFIG.md says to compute it, with the real openssl."""
    out = subprocess.run(
        ["sh", "-c", PIN_PIPELINE],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return "sha256/" + out.stdout.strip()


def openssl_text(*args: str) -> str:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout


def init(directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    out = relaycore("identity", "--init", str(directory), *options)
    assert out.returncode == 0, out.stderr
    return out


def test_init_makes_a_p256_key_and_certificate_and_prints_only_the_pin(tmp_path: Path) -> None:
    node = tmp_path / "node"
    out = init(node, "--cn", "entry-1", "--days", "30")
    pin = out.stdout
    assert pin.endswith("\n")
    assert pin.count("\n") == 1  # the pin line alone on stdout
    assert pin.strip() == openssl_pin(node)
    assert len(pin.strip()) == len("sha256/") + 44
    # stderr says what was made and where the pin goes.
    assert str(node / "node.key") in out.stderr
    assert str(node / "node.crt") in out.stderr
    assert "`allow`" in out.stderr
    assert "`pin`" in out.stderr
    assert stat.S_IMODE(os.stat(node).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(node / "node.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(node / "node.crt").st_mode) == 0o644
    assert sorted(os.listdir(node)) == ["node.crt", "node.key"]  # no scratch left behind
    key_text = openssl_text("pkey", "-in", str(node / "node.key"), "-noout", "-text")
    assert "ASN1 OID: prime256v1" in key_text, key_text
    assert "NIST CURVE: P-256" in key_text, key_text
    cert_text = openssl_text("x509", "-in", str(node / "node.crt"), "-noout", "-text")
    assert "CN = entry-1" in cert_text or "CN=entry-1" in cert_text, cert_text
    # Self-signed: the key's own certificate verifies against itself.
    openssl_text("verify", "-CAfile", str(node / "node.crt"), str(node / "node.crt"))
    # The certificate and the key belong together.
    cert_pub = openssl_text("x509", "-in", str(node / "node.crt"), "-pubkey", "-noout")
    key_pub = openssl_text("pkey", "-in", str(node / "node.key"), "-pubout")
    assert cert_pub == key_pub


def test_init_can_make_an_ed25519_identity(tmp_path: Path) -> None:
    node = tmp_path / "node"
    pin = init(node, "--key-type", "ed25519").stdout.strip()
    assert pin == openssl_pin(node)
    key_text = openssl_text("pkey", "-in", str(node / "node.key"), "-noout", "-text")
    assert key_text.startswith("ED25519 Private-Key"), key_text
    cert_text = openssl_text("x509", "-in", str(node / "node.crt"), "-noout", "-text")
    assert "Signature Algorithm: ED25519" in cert_text, cert_text
    openssl_text("verify", "-CAfile", str(node / "node.crt"), str(node / "node.crt"))
    cert_pub = openssl_text("x509", "-in", str(node / "node.crt"), "-pubkey", "-noout")
    assert cert_pub == openssl_text("pkey", "-in", str(node / "node.key"), "-pubout")
    assert stat.S_IMODE(os.stat(node / "node.key").st_mode) == 0o600


def expires_within(cert: Path, seconds: int) -> bool:
    done = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(seconds)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode == 1


def test_the_certificate_lasts_the_days_asked_for(tmp_path: Path) -> None:
    init(tmp_path / "a", "--days", "2")
    cert = tmp_path / "a" / "node.crt"
    assert not expires_within(cert, 86400)
    assert expires_within(cert, 2 * 86400 + 3600)


def test_cn_defaults_to_the_host_name(tmp_path: Path) -> None:
    init(tmp_path / "node")
    subject = openssl_text("x509", "-in", str(tmp_path / "node" / "node.crt"), "-noout", "-subject")
    assert socket.gethostname() in subject, subject


def test_each_identity_has_its_own_pin(tmp_path: Path) -> None:
    a = init(tmp_path / "a").stdout
    b = init(tmp_path / "b").stdout
    assert a != b


def test_the_pin_of_a_directory_or_a_certificate(tmp_path: Path) -> None:
    pin = init(tmp_path / "node").stdout
    for path in (tmp_path / "node", tmp_path / "node" / "node.crt"):
        out = relaycore("identity", str(path))
        assert out.returncode == 0, out.stderr
        assert out.stdout == pin
        assert out.stderr == ""


def test_an_existing_identity_is_never_overwritten(tmp_path: Path) -> None:
    node = tmp_path / "node"
    pin = init(node).stdout
    before = {name: (node / name).read_bytes() for name in ("node.key", "node.crt")}
    out = relaycore("identity", "--init", str(node))
    assert out.returncode == 3, out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith(f"relaycore: error: {node / 'node.key'}: already exists")
    assert "--force" in out.stderr
    assert "Traceback" not in out.stderr
    assert {name: (node / name).read_bytes() for name in before} == before
    # One file alone is refused too: it would be half of a new identity.
    (node / "node.key").unlink()
    out = relaycore("identity", "--init", str(node))
    assert out.returncode == 3
    assert f"{node / 'node.crt'}: already exists" in out.stderr
    assert not (node / "node.key").exists()
    # --force replaces both, and the pin changes.
    forced = relaycore("identity", "--init", str(node), "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout != pin
    assert forced.stdout.strip() == openssl_pin(node)
    assert stat.S_IMODE(os.stat(node / "node.key").st_mode) == 0o600


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir(mode=0o750)
    os.chmod(node, 0o750)
    init(node)
    assert stat.S_IMODE(os.stat(node).st_mode) == 0o750


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["{tmp}/nope"], "relaycore: error: {tmp}/nope: file not found\n", id="no-such-path"
        ),
        pytest.param(
            ["{tmp}"],
            "relaycore: error: {tmp}/node.crt: file not found"
            " (make one with relaycore identity --init {tmp})\n",
            id="directory-without-identity",
        ),
        pytest.param(
            ["{tmp}/not-a-cert"],
            "relaycore: error: {tmp}/not-a-cert: ",
            id="not-a-certificate",
        ),
        pytest.param(
            ["--init", "{tmp}/not-a-cert"],
            "relaycore: error: {tmp}/not-a-cert: not a directory\n",
            id="init-on-a-file",
        ),
        pytest.param(
            ["--init", "{tmp}/n", "--cn", ""],
            "relaycore: error: --cn: expected 1-64 printable ASCII characters, got ''\n",
            id="empty-cn",
        ),
        pytest.param(
            ["--init", "{tmp}/n", "--cn", "nœud"],
            "relaycore: error: --cn: expected 1-64 printable ASCII characters, got 'nœud'\n",
            id="non-ascii-cn",
        ),
        pytest.param(
            ["--init", "{tmp}/n", "--cn", "x" * 65],
            f"relaycore: error: --cn: expected 1-64 printable ASCII characters, got '{'x' * 65}'\n",
            id="long-cn",
        ),
        pytest.param(
            ["--init", "{tmp}/n", "--days", "0"],
            "relaycore: error: --days: expected 1-36500, got 0\n",
            id="zero-days",
        ),
    ],
)
def test_bad_paths_and_values_are_one_clear_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "not-a-cert").write_text("hello\n")
    out = relaycore("identity", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert out.returncode == 3, out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith(message.replace("{tmp}", str(tmp_path))), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--init", "a", "b"],
        ["--force", "a"],
        ["--cn", "x", "a"],
        ["--days", "3", "a"],
        ["--key-type", "ed25519", "a"],
        ["--init", "a", "--key-type", "rsa"],
    ],
)
def test_usage_errors(args: list[str]) -> None:
    out = relaycore("identity", *args)
    assert out.returncode == 2
    assert "usage: relaycore identity" in out.stderr


def test_help_explains_the_pin_exchange() -> None:
    out = relaycore("identity", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for words in (
        "--init DIR",
        "node.key (mode 0600)",
        "node.crt",
        "sha256/<base64>",
        "`allow` of the [[exit]]",
        "`pin` of the [[connector]]",
        "verify = false",
        "--key-type",
        "--force",
        "--cn NAME",
        "--days N",
        "exit codes:",
    ):
        assert words in text, words
