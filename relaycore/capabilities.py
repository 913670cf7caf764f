"""Probes for optional kernel features and the TLS library, run at start-up, never per
connection."""

import errno
import os
import socket

from relaycore import _core

TCP_ULP = 31  # linux/tcp.h; not exported by the socket module


def ktls_unavailable() -> str | None:
    """None when this kernel accepts the "tls" upper-layer protocol, else why not.

    The authoritative test (docs/HOTPATH.md §1.8): TCP_ULP "tls" on an established loopback
    connection. As root the kernel loads the module on demand; otherwise it must be loaded
    already (modprobe tls)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as client:
            server, _ = listener.accept()
            with server:
                try:
                    client.setsockopt(socket.SOL_TCP, TCP_ULP, b"tls")
                except OSError as e:
                    if e.errno == errno.ENOENT:
                        return 'the kernel has no tls module (TCP_ULP "tls": ENOENT)'
                    return f'TCP_ULP "tls" failed: {os.strerror(e.errno or 0)}'
    return None


def ktls_summary() -> str:
    """What kernel TLS does here, in a few words (`relaycore status`, the workers' log):
    which TLS versions are offloaded, and why TLS 1.3 is not where the kernel cannot rekey
    (docs/HOTPATH.md §1.9)."""
    missing = ktls_unavailable()
    if missing:
        return f"unavailable ({missing})"
    if _core.ktls_probe() == "rekey":
        return "available (TLS 1.2 and 1.3: the kernel rekeys on a KeyUpdate)"
    return "available (TLS 1.2; TLS 1.3 stays in user space: no kernel rekey before Linux 6.14)"


def openssl_summary() -> str:
    """The OpenSSL relaycore's data path runs (not Python's ssl module), and its origin."""
    return f"{_core.OPENSSL_VERSION} ({_core.OPENSSL_ORIGIN})"
