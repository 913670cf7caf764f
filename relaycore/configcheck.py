"""Checks of single config values that the Structs in relaycore.config run: names,
certificate names, pins and the files a key names. Each raises ConfigError with the key
it was given ("ca: file not found: /etc/x.pem"); the Struct's place completes the path."""

import base64
import binascii
import errno
import ipaddress
import os
import re
import stat

from relaycore import protocol
from relaycore.addresses import is_dns_name
from relaycore.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # connectors' and exits' `name`
IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")  # a network interface
# `sha256/` and the base64 of 32 bytes: 43 characters and one '=' of padding.
PIN = re.compile(r"sha256/([A-Za-z0-9+/]{43}=)")
# What OpenSSL looks up in a hashed CA directory: <subject hash>.<n> (.r<n>: a CRL).
HASHED_CERT = re.compile(r"[0-9a-f]{8}\.[0-9]+")
# sizeof(sockaddr_un.sun_path) less its NUL, and the longest name of a control socket
# that run_dir holds.
SUN_PATH_MAX = 107
LONGEST_SOCKET = max(
    (protocol.EVENTS_SOCKET, protocol.CONTROL_SOCKET, protocol.STATS_SOCKET, protocol.ADMIN_SOCKET),
    key=len,
)


def tls_host(text: str) -> str | None:
    """`text` as a certificate name: an IP literal normalised, a DNS name without its
    trailing dot (SNI never has one); None if it is neither."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text.removesuffix(".") if is_dns_name(text) else None
    # A zone (fe80::1%eth0) picks an interface; no certificate can name one.
    return None if getattr(ip, "scope_id", None) else str(ip)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_readable(key: str, path: str, *, directory_ok: bool) -> None:
    # Now rather than when the first device connects: a typo in a path is a config error,
    # not a stream of failed handshakes.
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{key}: file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    is_dir = stat.S_ISDIR(mode)
    if not (stat.S_ISREG(mode) or (is_dir and directory_ok)):
        kind = "a file or a directory" if directory_ok else "a file"
        raise ConfigError(f"{key}: not {kind}: {path}")
    # Opening is the only test that holds for root, ACLs and security modules alike; a
    # directory of hashed certificates must also be searchable to be read.
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        if is_dir and not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None


def check_ca(key: str, path: str) -> None:
    """`path` is a readable PEM file (OpenSSL checks that it holds a certificate when the
    context is built) or a directory in which OpenSSL can find a CA: without a hashed
    name in it, every handshake would fail with "unable to get local issuer certificate"."""
    check_readable(key, path, directory_ok=True)
    if not os.path.isdir(path):
        return
    try:
        names = os.listdir(path)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    if not any(HASHED_CERT.fullmatch(name) for name in names):
        raise ConfigError(
            f"{key}: no certificate in directory {path}: OpenSSL looks a CA up by its subject"
            " hash (files named HHHHHHHH.0); run `openssl rehash` on it, or give a PEM file"
        )


def check_run_dir(key: str, path: str) -> None:
    """The control sockets in run_dir are AF_UNIX: their paths must fit in sun_path, or
    the supervisor cannot bind them."""
    longest = len(os.fsencode(os.path.join(path, LONGEST_SOCKET)))
    if longest > SUN_PATH_MAX:
        raise ConfigError(
            f"{key}: {path!r} is too long: the control sockets in it need paths of at most"
            f" {SUN_PATH_MAX} bytes (this one makes {longest})"
        )


def check_pins(key: str, pins: tuple[str, ...]) -> None:
    seen: dict[str, int] = {}
    for i, pin in enumerate(pins):
        if pin_digest(pin) is None:
            raise ConfigError(
                f"{key}[{i}]: expected sha256/<base64 of a 32-byte SHA-256>, got {pin!r}"
            )
        # One pin pasted twice where a backup pin was meant: a key rotation would then
        # lock the relay (or the entry node) out.
        if (j := seen.setdefault(pin, i)) != i:
            raise ConfigError(f"{key}[{i}]: {pin!r} is also {key}[{j}]")


def pin_digest(pin: str) -> bytes | None:
    if not (m := PIN.fullmatch(pin)):
        return None
    try:
        digest = base64.b64decode(m[1], validate=True)
    except binascii.Error:
        return None
    # Only the canonical spelling: in a non-canonical one the last character carries bits
    # that decoding drops, so two different-looking pins would be the same key.
    return digest if base64.b64encode(digest).decode() == m[1] else None


ALPN_MAX = 8  # protocols in an alpn list (the loop counts each)


def check_alpn(key: str, protocols: tuple[str, ...]) -> None:
    """ALPN protocol ids (RFC 7301): 1-255 printable ASCII characters each, no two alike,
    at most ALPN_MAX."""
    if len(protocols) > ALPN_MAX:
        raise ConfigError(f"{key}: at most {ALPN_MAX} protocols, got {len(protocols)}")
    seen: dict[str, int] = {}
    for i, name in enumerate(protocols):
        if not 1 <= len(name) <= 255 or not all("!" <= ch <= "~" for ch in name):
            raise ConfigError(
                f"{key}[{i}]: expected 1-255 printable ASCII characters, no spaces, got {name!r}"
            )
        if (j := seen.setdefault(name, i)) != i:
            raise ConfigError(f"{key}[{i}]: {name!r} is also {key}[{j}]")


def check_pq(pq: str, groups: str | None) -> None:
    """With `groups` written, it is the offer and `pq` must agree with it: "require" needs
    a post-quantum group in it (X25519MLKEM768, ...), "off" none. Without it `pq` picks
    the list (docs/CONFIG.md)."""
    if groups is None:
        return
    has_pq = "MLKEM" in groups.upper()
    if pq == "require" and not has_pq:
        raise ConfigError(
            f'pq: "require", but groups = {groups!r} offers no post-quantum group'
            " (e.g. X25519MLKEM768)"
        )
    if pq == "off" and has_pq:
        raise ConfigError(f'pq: "off", but groups = {groups!r} offers a post-quantum group')
