"""Node identities for tunnel mode: a key and a self-signed certificate per node, known to
the other node by its pin.

No CA is involved. Each node makes its own identity (`relaycore identity --init DIR`) and
the two operators exchange pins: an exit lists its entry nodes' pins in `allow`, an entry
connector lists its exit's pin in `pin`. A pin is `sha256/` and the base64 of the SHA-256
of the certificate's DER SubjectPublicKeyInfo, the value `openssl x509 -pubkey | openssl
pkey -pubin -outform der | openssl dgst -sha256 -binary | base64` prints.

The key and certificate are made by the compiled module (OpenSSL) in a fresh directory
beside their final place, then moved there: a node never holds a key without its
certificate, nor an old certificate beside a new key.
"""

import base64
import errno
import os
import stat
import tempfile
from dataclasses import dataclass

from relaycore import _core
from relaycore.errors import ConfigError

KEY_FILE = "node.key"
CERT_FILE = "node.crt"
DEFAULT_DAYS = 3650
MAX_DAYS = 36500
MAX_CN = 64
KEY_TYPES = ("p256", "ed25519")  # the first is the default


@dataclass(frozen=True)
class Identity:
    key: str
    cert: str
    pin: str


def format_pin(digest: bytes) -> str:
    """The config's spelling of a pin digest: `sha256/<base64>`."""
    return "sha256/" + base64.b64encode(digest).decode()


def create(
    directory: str, common_name: str, days: int, *, force: bool, key_type: str = KEY_TYPES[0]
) -> Identity:
    """Make DIR/node.key (0600) and DIR/node.crt, creating DIR (0700) if it is missing.
    Existing files are replaced only with `force`: a new key changes the node's pin, and
    every peer that has the old one stops accepting this node. Raises ConfigError."""
    # X.509's upper bound for a common name. ASCII, because the certificate stores it as
    # such; printable, because it shows in logs and in openssl's output.
    cn_ok = common_name.isascii() and common_name.isprintable()
    if not (cn_ok and 1 <= len(common_name) <= MAX_CN):
        raise ConfigError(
            f"--cn: expected 1-{MAX_CN} printable ASCII characters, got {common_name!r}"
        )
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"--days: expected 1-{MAX_DAYS}, got {days}")
    if key_type not in KEY_TYPES:
        raise ConfigError(f"--key-type: expected {' or '.join(KEY_TYPES)}, got {key_type!r}")
    _make_directory(directory)
    key, cert = os.path.join(directory, KEY_FILE), os.path.join(directory, CERT_FILE)
    if not force:
        for path in (key, cert):
            if os.path.lexists(path):
                raise ConfigError(
                    f"{path}: already exists; a new identity changes this node's pin, which"
                    " its peers have in their configs (--force replaces it)"
                )
    try:
        scratch = tempfile.mkdtemp(prefix=".identity-", dir=directory)
    except OSError as e:
        raise ConfigError(f"{directory}: cannot write: {e.strerror}") from None
    try:
        new_key, new_cert = os.path.join(scratch, KEY_FILE), os.path.join(scratch, CERT_FILE)
        try:
            digest = _core.make_identity(new_key, new_cert, common_name, days, key_type)
        except ValueError as e:
            raise ConfigError(f"{directory}: cannot make an identity: {e}") from None
        except OSError as e:
            raise ConfigError(f"{directory}: cannot write: {e.strerror or e}") from None
        # Whatever the umask: the key is the node's secret, the certificate is public.
        os.chmod(new_key, 0o600)
        os.chmod(new_cert, 0o644)
        _install(new_cert, cert, force=force)
        try:
            _install(new_key, key, force=force)
        except ConfigError:
            if not force:
                os.unlink(cert)  # ours, just linked: not half an identity
            raise
    finally:
        for name in os.listdir(scratch):
            os.unlink(os.path.join(scratch, name))
        os.rmdir(scratch)
    return Identity(key=key, cert=cert, pin=format_pin(digest))


def pin_of(path: str) -> str:
    """The pin of a certificate file, or of DIR/node.crt for a directory. Raises
    ConfigError."""
    cert = os.path.join(path, CERT_FILE) if os.path.isdir(path) else path
    try:
        mode = os.stat(cert).st_mode
    except FileNotFoundError:
        hint = f" (make one with relaycore identity --init {path})" if cert != path else ""
        raise ConfigError(f"{cert}: file not found{hint}") from None
    except OSError as e:
        raise ConfigError(f"{cert}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{cert}: not a file")
    try:
        return format_pin(_core.spki_pin(cert))
    except OSError as e:
        raise ConfigError(f"{cert}: cannot read: {e.strerror}") from None
    except ValueError as e:
        # The compiled module names the file itself, in most of its messages.
        message = str(e)
        path_first = message if message.startswith(f"{cert}:") else f"{cert}: {message}"
        raise ConfigError(path_first) from None


def _make_directory(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{directory}: not a directory") from None
    except OSError as e:
        raise ConfigError(f"{directory}: cannot create: {e.strerror}") from None


def _install(new: str, final: str, *, force: bool) -> None:
    if force:
        try:
            os.replace(new, final)
        except OSError as e:
            raise ConfigError(f"{final}: cannot replace: {e.strerror}") from None
        return
    # link() fails if `final` appeared since we looked: never overwrite without --force.
    try:
        os.link(new, final)
    except FileExistsError:
        raise ConfigError(f"{final}: already exists (--force replaces it)") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise ConfigError(f"{final}: cannot write: {e.strerror}") from None
        # A file system without hard links: the check before generating has to do.
        os.rename(new, final)
