"""The lab PKI (relaycore/lab/pki.py), checked by the `openssl` command line rather than
by itself: the TLS tests trust what it makes, so it must be what OpenSSL thinks it is."""

import subprocess
from pathlib import Path

import pytest

from relaycore.config import parse_config
from relaycore.lab.pki import Issued, Pki, make_pki, self_signed


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)


def verify(pki: Pki, issued: Issued, *options: str) -> subprocess.CompletedProcess[str]:
    return openssl("verify", "-CAfile", str(pki.ca_cert), *options, str(issued.cert))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_server_certificate_verifies_for_its_names(pki: Pki) -> None:
    server = pki.issue("server", dns=["localhost", "relay.test"], ips=["127.0.0.1", "::1"])
    for check in (
        ["-verify_hostname", "localhost"],
        ["-verify_hostname", "relay.test"],
        ["-verify_ip", "127.0.0.1"],
        ["-verify_ip", "::1"],
    ):
        result = verify(pki, server, "-purpose", "sslserver", *check)
        assert result.returncode == 0, (check, result.stderr)
    wrong = verify(pki, server, "-verify_hostname", "other.test")
    assert wrong.returncode != 0
    assert "hostname mismatch" in wrong.stderr
    # A client certificate is not a server's: the EKU says which side a key may play.
    assert "unsuitable certificate purpose" in verify(pki, server, "-purpose", "sslclient").stderr


def test_client_certificate_verifies_as_a_client_only(pki: Pki) -> None:
    client = pki.issue("client", client=True)
    assert verify(pki, client, "-purpose", "sslclient").returncode == 0
    assert "unsuitable certificate purpose" in verify(pki, client, "-purpose", "sslserver").stderr


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_key_matches_certificate_and_chain_holds_both(pki: Pki, key_type: str) -> None:
    issued = pki.issue(f"match-{key_type}", dns=["localhost"], key_type=key_type)
    assert verify(pki, issued, "-purpose", "sslserver").returncode == 0
    from_cert = openssl("x509", "-in", str(issued.cert), "-pubkey", "-noout").stdout
    from_key = openssl("pkey", "-in", str(issued.key), "-pubout").stdout
    assert from_cert == from_key != ""
    assert issued.chain.read_bytes() == issued.cert.read_bytes() + pki.ca_cert.read_bytes()
    algorithm = openssl("x509", "-in", str(issued.cert), "-noout", "-text").stdout
    assert ("id-ecPublicKey" if key_type == "ec" else "rsaEncryption") in algorithm


def test_expired_certificate(pki: Pki) -> None:
    old = pki.issue("old", dns=["localhost"], not_before_days=-10, days=-5)
    result = verify(pki, old)
    assert result.returncode != 0
    assert "certificate has expired" in result.stderr


def test_not_yet_valid_certificate(pki: Pki) -> None:
    future = pki.issue("future", dns=["localhost"], not_before_days=1, days=30)
    result = verify(pki, future)
    assert result.returncode != 0
    assert "certificate is not yet valid" in result.stderr


def test_self_signed_certificate_is_vouched_for_by_nobody(pki: Pki, tmp_path: Path) -> None:
    rogue = self_signed(tmp_path, "rogue", dns=["localhost"])
    assert rogue.chain == rogue.cert
    result = verify(pki, rogue)
    assert result.returncode != 0
    assert "self-signed certificate" in result.stderr


def test_hashed_dir_is_a_ca_path(pki: Pki) -> None:
    server = pki.issue("hashed", dns=["localhost"])
    result = openssl("verify", "-CApath", str(pki.hashed_dir()), str(server.cert))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_spki_pin_is_the_openssl_pipeline(pki: Pki, key_type: str) -> None:
    issued = pki.issue(f"pin-{key_type}", dns=["localhost"], key_type=key_type)
    pipeline = subprocess.run(
        [
            "sh",
            "-ec",
            'openssl x509 -in "$1" -pubkey -noout | openssl pkey -pubin -outform der'
            " | openssl dgst -sha256 -binary | base64",
            "sh",
            str(issued.cert),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    pin = issued.spki_pin()
    assert pin == "sha256/" + pipeline.stdout.strip()
    # The form the config's `pin` accepts.
    connector = '[[connector]]\nname = "a"\nlisten = "127.0.0.1:1"\nupstream = "a.test:1"\n'
    assert len(parse_config(connector + f'pin = ["{pin}"]\n').connectors[0].pin_digests[0]) == 32


def test_issue_refuses_what_it_cannot_make(pki: Pki) -> None:
    with pytest.raises(ValueError, match="must be after"):
        pki.issue("never", not_before_days=-5, days=-5)
    with pytest.raises(ValueError, match="CA's own files"):
        pki.issue("ca")
    with pytest.raises(ValueError, match="file stem"):
        pki.issue("../escape")
    with pytest.raises(ValueError, match="key_type"):
        pki.issue("dsa", key_type="dsa")
