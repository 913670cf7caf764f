"""A throwaway PKI made with the `openssl` command line: a CA, the server and client
certificates it issues (valid, expired or not yet valid), self-signed certificates that no
CA vouches for, and node identities as `relaycore identity --init` makes them.

For the demo, the tests and bench/ only: keys are unencrypted files in a temp dir. EC P-256
keys by default, because RSA key generation alone takes longer than a whole EC PKI. The
certificates come from openssl rather than from relaycore, so that what the relay trusts
or rejects is checked against another implementation's idea of it.

Certificates are signed with `openssl ca` rather than `openssl x509 -req`: OpenSSL 3.0's
x509 can only start a certificate now (`-days`, no `-not_before` before 3.4), while `ca`
takes any -startdate/-enddate, which an expired or not-yet-valid certificate needs. `ca`
keeps a small database (ca.db/index.txt) next to the CA: one Pki must not issue from two
threads at once.

Every file lives in the Pki's directory: `ca.pem`, `ca.key`, and `<name>.pem`, `<name>.key`,
`<name>-chain.pem` for each certificate issued. openssl failing (or missing) raises
StartupError with its last line; arguments that cannot make a certificate, ValueError.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from relaycore.errors import StartupError
from relaycore.identity import CERT_FILE, KEY_FILE

OPENSSL = "openssl"
OPENSSL_TIMEOUT = 60.0
# Every certificate starts this much before the time asked for, so that a peer whose clock
# lags a little (a test VM) accepts a certificate made a moment ago.
CLOCK_SLACK = timedelta(hours=1)
# The CA starts a year ago, so that it covers any expired certificate a test asks for.
CA_START = timedelta(days=-365)
CA_DAYS = 3650
SERVER_PKI_DAYS = 30  # make_server_pki: beyond the default cert_warn_days
IDENTITY_TIMEOUT = 30.0

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_KEY_TYPES = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-newkey", "rsa:2048"],
}

# Our own config, so that neither the system's openssl.cnf nor its defaults (extensions
# `openssl req` adds, the policy `openssl ca` applies) change what is made.
_CONFIG = """\
[ca]
default_ca = lab_ca

[lab_ca]
database = ca.db/index.txt
new_certs_dir = ca.db/new
certificate = ca.pem
private_key = ca.key
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
# A serial from 159 random bits, so that no serial file is needed or shared.
rand_serial = yes

[policy_any]
commonName = supplied

[req]
distinguished_name = req_dn
prompt = no

[req_dn]

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""


@dataclass(frozen=True)
class Issued:
    """A certificate and its key. `chain` is the certificate followed by the CA's (what a
    server or a client presents); for a self-signed certificate, the certificate alone."""

    cert: Path
    key: Path
    chain: Path

    def spki_pin(self) -> str:
        """`sha256/<base64>` of the DER SubjectPublicKeyInfo: the form of a `pin` in the
        config, as `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der |
        openssl dgst -sha256 -binary | base64` computes it."""
        # The PEM "PUBLIC KEY" block is exactly the DER SubjectPublicKeyInfo in base64.
        pem = _openssl("x509", "-in", str(self.cert), "-pubkey", "-noout")
        body = re.search(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", pem, re.S)
        if body is None:
            raise StartupError(f"no public key in {self.cert}")
        der = base64.b64decode("".join(body[1].split()))
        return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass(frozen=True)
class Pki:
    """A CA in `directory` (see make_pki) and what it issues."""

    directory: Path
    ca_cert: Path
    ca_key: Path

    def issue(
        self,
        name: str,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        client: bool = False,
        days: int = 30,
        not_before_days: int = 0,
        key_type: str = "ec",
    ) -> Issued:
        """Sign a new key for `name` (also the subject CN and the file stem).

        A server certificate (serverAuth) by default, a client one (clientAuth) with
        `client`. `dns` and `ips` become the subjectAltName; a server certificate without
        either has none, which hostname checks reject.

        Validity runs from `not_before_days` to `days`, both counted in days from now and
        either may be negative: the default is now .. +30; `not_before_days=-10, days=-5`
        is expired; `not_before_days=1` is not yet valid.
        """
        if name == "ca":
            raise ValueError("'ca' names the CA's own files")
        if days <= not_before_days:
            raise ValueError(f"days ({days}) must be after not_before_days ({not_before_days})")
        key, cert, chain = self._paths(name)
        # The request and the extensions are scratch: kept out of the way in ca.db/.
        ext = self.directory / "ca.db" / f"{name}.ext"
        ext.write_text(_leaf_extensions(dns, ips, client=client, key_type=key_type))
        csr = self.directory / "ca.db" / f"{name}.csr"
        now = datetime.now(UTC).replace(microsecond=0)
        _openssl(
            *_new_key_and_request(name, key, key_type, config=self._config),
            "-out",
            str(csr),
            cwd=self.directory,
        )
        start = now + timedelta(days=not_before_days) - CLOCK_SLACK
        _openssl(
            *self._sign(csr, cert, start, now + timedelta(days=days)),
            "-extfile",
            str(ext),
            cwd=self.directory,
        )
        chain.write_bytes(cert.read_bytes() + self.ca_cert.read_bytes())
        return Issued(cert=cert, key=key, chain=chain)

    def hashed_dir(self) -> Path:
        """A directory holding the CA certificate under its subject hash (`<hash>.0`, as
        `openssl rehash` names it): the other form a `ca` in the config can take."""
        hashed = self.directory / "ca.d"
        hashed.mkdir(exist_ok=True)
        subject_hash = _openssl("x509", "-in", str(self.ca_cert), "-hash", "-noout").strip()
        link = hashed / f"{subject_hash}.0"
        if not link.exists():
            link.symlink_to(self.ca_cert)
        return hashed

    @property
    def _config(self) -> Path:
        return self.directory / "openssl.cnf"

    def _paths(self, name: str) -> tuple[Path, Path, Path]:
        _check_name(name)
        d = self.directory
        return d / f"{name}.key", d / f"{name}.pem", d / f"{name}-chain.pem"

    def _sign(self, csr: Path, cert: Path, start: datetime, end: datetime) -> list[str]:
        return [
            "ca",
            "-batch",
            "-notext",
            "-config",
            str(self._config),
            "-in",
            str(csr),
            "-out",
            str(cert),
            "-startdate",
            _asn1_time(start),
            "-enddate",
            _asn1_time(end),
        ]


def make_pki(directory: Path, name: str = "Test CA", *, days: int = CA_DAYS) -> Pki:
    """A new CA (EC P-256, valid from a year ago until `days` from now) in `directory`,
    which is created if needed. One PKI per directory: a second one would overwrite the
    first."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.db" / "new").mkdir(parents=True, exist_ok=True)
    (directory / "ca.db" / "index.txt").write_text("")
    pki = Pki(directory=directory, ca_cert=directory / "ca.pem", ca_key=directory / "ca.key")
    pki._config.write_text(_CONFIG)
    csr = directory / "ca.db" / "ca.csr"
    _openssl(
        *_new_key_and_request(name, pki.ca_key, "ec", config=pki._config),
        "-out",
        str(csr),
        cwd=directory,
    )
    now = datetime.now(UTC).replace(microsecond=0)
    _openssl(
        *pki._sign(csr, pki.ca_cert, now + CA_START, now + timedelta(days=days)),
        "-selfsign",
        "-keyfile",
        str(pki.ca_key),
        "-extensions",
        "ca_ext",
        cwd=directory,
    )
    return pki


@dataclass(frozen=True)
class ServerPki:
    """A CA and the one server certificate the demo and bench/ need: `ca` is what a
    connector's `ca` points at; the server presents `cert` (the leaf alone) with `key`."""

    ca: Path
    cert: Path
    key: Path
    server_name: str


def make_server_pki(
    directory: Path, server_name: str = "localhost", *, ca_name: str = "relaycore demo CA"
) -> ServerPki:
    """A new CA and a certificate for `server_name` (a DNS name or an IP address) in
    `directory`, both valid for 30 days: longer than a connector's default cert_warn_days
    (14), so that a demo or a bench relay has no certificate to warn about."""
    dns: list[str] = []
    ips: list[str] = []
    try:
        ips.append(str(ipaddress.ip_address(server_name)))
    except ValueError:
        dns.append(server_name)
    pki = make_pki(directory, ca_name, days=SERVER_PKI_DAYS)
    server = pki.issue("server", dns=dns, ips=ips, days=SERVER_PKI_DAYS)
    return ServerPki(ca=pki.ca_cert, cert=server.cert, key=server.key, server_name=server_name)


def self_signed(
    directory: Path,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 30,
    key_type: str = "ec",
) -> Issued:
    """A server certificate signed by its own key, which no CA vouches for: what a peer
    that trusts only some CA must reject ("self-signed certificate")."""
    _check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    config = directory / f"{name}.cnf"
    config.write_text(
        "[req]\ndistinguished_name = req_dn\nprompt = no\n[req_dn]\n[leaf]\n"
        + _leaf_extensions(dns, ips, client=False, key_type=key_type)
    )
    _openssl(
        *_new_key_and_request(name, key, key_type, config=config),
        "-x509",
        "-days",
        str(days),
        "-extensions",
        "leaf",
        "-out",
        str(cert),
        cwd=directory,
    )
    return Issued(cert=cert, key=key, chain=cert)


@dataclass(frozen=True)
class NodeIdentity:
    """A tunnel node's identity as `relaycore identity --init DIR` makes it: DIR/node.key,
    DIR/node.crt (self-signed) and the pin it printed."""

    directory: Path
    pin: str

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE


def make_identity(directory: Path, cn: str, *, key_type: str = "p256") -> NodeIdentity:
    """`relaycore identity --init DIR --cn CN`, run as an operator runs it. Its one line of
    output is the pin, and it must be the pin openssl computes from the certificate it
    wrote: StartupError otherwise (or if the command fails)."""
    argv = [sys.executable, "-m", "relaycore", "identity", "--init", str(directory)]
    argv += ["--cn", cn, "--key-type", key_type]
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=IDENTITY_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StartupError(f"relaycore identity --init {directory}: {exc}") from exc
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 1:
        raise StartupError(
            f"relaycore identity --init {directory}: exit {out.returncode},"
            f" stdout {out.stdout!r}, stderr {out.stderr.strip()!r}"
        )
    identity = NodeIdentity(directory=directory, pin=lines[0])
    computed = Issued(cert=identity.cert, key=identity.key, chain=identity.cert).spki_pin()
    if identity.pin != computed:
        raise StartupError(
            f"relaycore identity printed {identity.pin}, openssl computes {computed}"
        )
    return identity


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"a certificate name is a file stem of A-Z a-z 0-9 _ . -: {name!r}")


def _new_key_and_request(name: str, key: Path, key_type: str, *, config: Path) -> list[str]:
    if key_type not in _KEY_TYPES:
        raise ValueError(f"key_type is one of {sorted(_KEY_TYPES)}, got {key_type!r}")
    return [
        "req",
        "-new",
        *_KEY_TYPES[key_type],
        "-noenc",
        "-keyout",
        str(key),
        "-subj",
        f"/CN={name}",
        "-config",
        str(config),
    ]


def _leaf_extensions(dns: Sequence[str], ips: Sequence[str], *, client: bool, key_type: str) -> str:
    alt = [f"DNS:{d}" for d in dns] + [f"IP:{ipaddress.ip_address(ip)}" for ip in ips]
    # keyEncipherment only for RSA: TLS 1.2's RSA key exchange encrypts with the key, an
    # EC key only ever signs.
    usage = "digitalSignature" + (", keyEncipherment" if key_type == "rsa" else "")
    lines = [
        "basicConstraints = critical, CA:FALSE",
        f"keyUsage = critical, {usage}",
        f"extendedKeyUsage = {'clientAuth' if client else 'serverAuth'}",
        "subjectKeyIdentifier = hash",
        "authorityKeyIdentifier = keyid",
    ]
    if alt:
        lines.append("subjectAltName = " + ", ".join(alt))
    return "".join(line + "\n" for line in lines)


def _asn1_time(t: datetime) -> str:
    # UTCTime, the form `openssl ca -startdate` documents; good for 1950..2049.
    return t.astimezone(UTC).strftime("%y%m%d%H%M%SZ")


def _openssl(*args: str, cwd: Path | None = None) -> str:
    if shutil.which(OPENSSL) is None:
        raise StartupError(
            "the `openssl` command is needed to make a throwaway CA: apt-get install openssl"
        )
    try:
        result = subprocess.run(
            [OPENSSL, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=OPENSSL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartupError(f"openssl {args[0]} failed: {exc}") from exc
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise StartupError(f"openssl {args[0]} failed (exit {result.returncode}): {last}")
    return result.stdout
