"""A throwaway CA and one server certificate it issues, made with the `openssl` command line.

For `relaycore demo` and bench/ only: the keys are unencrypted files in a temp dir and the
certificates live two days. EC P-256 keys, because RSA key generation alone takes longer
than this whole PKI. Every file is written into `directory`: `ca.pem`, `ca.key`,
`server.pem`, `server.key` (and the scratch `openssl.cnf`, `server.csr`).

The product does not depend on tests/, so this is a small copy of the idea of
tests/support/pki.py, not an import of it.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from relaycore.errors import StartupError

OPENSSL = "openssl"
VALID_DAYS = 2

# Our own config, so that neither the system's openssl.cnf nor its defaults change what is
# made. `{alt}` is the server certificate's subjectAltName.
_CONFIG = """\
[req]
distinguished_name = req_dn
prompt = no

[req_dn]

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {alt}
"""

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class DemoPki:
    """The CA certificate (what `ca` in a connector points at) and the server's own."""

    ca: Path
    ca_key: Path
    cert: Path
    key: Path
    server_name: str


def make_demo_pki(
    directory: Path, server_name: str = "localhost", *, ca_name: str = "relaycore demo CA"
) -> DemoPki:
    """A new CA and a server certificate for `server_name` (a DNS name or an IP address),
    in `directory` (created if needed). Raises StartupError with one line if openssl is
    missing or fails."""
    if shutil.which(OPENSSL) is None:
        raise StartupError(
            "the `openssl` command is needed to make a throwaway CA: apt-get install openssl"
        )
    directory.mkdir(parents=True, exist_ok=True)
    try:
        alt = f"IP:{ipaddress.ip_address(server_name)}"
    except ValueError:
        alt = f"DNS:{server_name}"
    config = directory / "openssl.cnf"
    config.write_text(_CONFIG.format(alt=alt))
    pki = DemoPki(
        ca=directory / "ca.pem",
        ca_key=directory / "ca.key",
        cert=directory / "server.pem",
        key=directory / "server.key",
        server_name=server_name,
    )
    days = str(VALID_DAYS)
    _openssl(
        "req", "-x509", "-new", *_EC_KEY, "-keyout", str(pki.ca_key), "-out", str(pki.ca),
        "-subj", f"/CN={ca_name}", "-days", days, "-config", str(config),
        "-extensions", "ca_ext",
    )  # fmt: skip
    csr = directory / "server.csr"
    _openssl(
        "req", "-new", *_EC_KEY, "-keyout", str(pki.key), "-out", str(csr),
        "-subj", f"/CN={server_name}", "-config", str(config),
    )  # fmt: skip
    # A random positive 127-bit serial, so that no serial file is needed.
    serial = hex(secrets.randbits(127) | 1 << 120)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki.ca), "-CAkey", str(pki.ca_key),
        "-set_serial", serial, "-days", days, "-extfile", str(config),
        "-extensions", "server_ext", "-out", str(pki.cert),
    )  # fmt: skip
    return pki


def _openssl(*args: str) -> str:
    try:
        result = subprocess.run(
            [OPENSSL, *args], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartupError(f"openssl {args[0]} failed: {exc}") from exc
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise StartupError(f"openssl {args[0]} failed (exit {result.returncode}): {last}")
    return result.stdout
