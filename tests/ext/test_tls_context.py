"""TLSClientContext refuses a bad setting with ValueError("<key>: <reason>"), where <key>
is the config key at fault and <reason> OpenSSL's words, and a refusal leaves nothing
behind that colours the next context's errors."""

from __future__ import annotations

from typing import Any

import pytest
from support.relay import TLSFiles

from relaycore._core import TLSClientContext


def files(tls_files: TLSFiles) -> dict[str, str]:
    return {
        "chain": str(tls_files.client.chain),
        "key": str(tls_files.client.key),
        "other_key": str(tls_files.server.key),
        "ca": str(tls_files.pki.ca_cert),
        "missing": str(tls_files.pki.directory / "missing.pem"),
    }


CASES: list[tuple[str, dict[str, str], str, str]] = [
    # (id, kwargs with {placeholders}, key prefix, words in the reason)
    ("cert-missing", {"cert": "{missing}", "key": "{key}"}, "cert", "No such file"),
    ("cert-not-pem", {"cert": "{key}", "key": "{key}"}, "cert", "cannot load"),
    ("key-mismatch", {"cert": "{chain}", "key": "{other_key}"}, "key", "key values mismatch"),
    ("key-missing", {"cert": "{chain}", "key": "{missing}"}, "key", "No such file"),
    ("key-not-a-key", {"cert": "{chain}", "key": "{ca}"}, "key", "cannot load"),
    ("key-without-cert", {"key": "{key}"}, "key", "cert and key go together"),
    ("cert-without-key", {"cert": "{chain}"}, "key", "cert and key go together"),
    ("ca-missing", {"ca": "{missing}"}, "ca", "No such file"),
    ("ciphers", {"ciphers": "NO-SUCH-CIPHER"}, "ciphers", "no cipher match"),
    ("ciphersuites", {"ciphersuites": "TLS_NO_SUCH_SUITE"}, "ciphersuites", "no cipher match"),
    ("groups", {"groups": "no-such-group"}, "groups", ""),
    ("min_tls", {"min_tls": "1.1"}, "min_tls", "'1.1'"),
    ("ktls", {"ktls": "maybe"}, "ktls", "'maybe'"),
]


@pytest.mark.parametrize(
    ("kwargs", "key", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_setting_names_its_key(tls_files, kwargs, key, words):
    paths = files(tls_files)
    resolved: dict[str, Any] = {k: v.format(**paths) for k, v in kwargs.items()}
    with pytest.raises(ValueError) as info:
        TLSClientContext(**resolved)
    message = str(info.value)
    assert message.startswith(f"{key}: "), message
    assert words in message, message


@pytest.mark.parametrize(
    "pins", [[b"short"], [b"x" * 33], [bytes(32)] * 100], ids=["short", "long", "too-many"]
)
def test_bad_pins(pins):
    with pytest.raises(ValueError, match=r"^pin: "):
        TLSClientContext(pins=pins)


def test_server_name_too_long():
    with pytest.raises(ValueError, match=r"^server_name: "):
        TLSClientContext(server_name="a" * 300)


def test_a_refusal_does_not_leak_into_the_next_error(tls_files):
    """OpenSSL's error queue is emptied by each refusal: the next context's message holds
    only its own errors, and a good context still loads."""
    with pytest.raises(ValueError, match=r"^ciphers: ") as first:
        TLSClientContext(ciphers="NO-SUCH-CIPHER")
    paths = files(tls_files)
    with pytest.raises(ValueError, match=r"^key: ") as second:
        TLSClientContext(cert=paths["chain"], key=paths["other_key"])
    assert "cipher" not in str(second.value), second.value
    assert "mismatch" not in str(first.value), first.value
    ctx = TLSClientContext(ca=paths["ca"], cert=paths["chain"], key=paths["key"])
    assert ctx.cached_sessions == 0


def test_good_settings_load(tls_files):
    paths = files(tls_files)
    ctx = TLSClientContext(
        server_name="relay.test",
        ca=paths["ca"],
        cert=paths["chain"],
        key=paths["key"],
        min_tls="1.3",
        ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
        ciphersuites="TLS_AES_128_GCM_SHA256",
        groups="X25519:P-256",
        pins=[bytes(32)],
        ktls="off",
    )
    assert ctx.cached_sessions == 0
