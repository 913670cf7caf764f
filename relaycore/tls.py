"""TLS settings of a connector or an exit -> the compiled context its workers use.

Contexts are built once per config generation, in the supervisor, before forking: a
certificate or key that OpenSSL refuses stops the start (or the reload) with the path of
the key at fault, and every worker inherits the loaded context instead of reading the
files again per connection.
"""

import logging

from relaycore import _core
from relaycore.capabilities import ktls_unavailable
from relaycore.config import Config, Connector, Exit
from relaycore.errors import ConfigError, StartupError

log = logging.getLogger("relaycore.tls")


def client_context(connector: Connector, index: int) -> _core.TLSClientContext:
    try:
        return _core.TLSClientContext(
            # An IP literal is checked as an IP and sent without SNI (RFC 6066).
            server_name=connector.verify_name,
            ca=connector.ca,
            cert=connector.cert,
            key=connector.key,
            verify=connector.verify,
            min_tls=connector.min_tls,
            ciphers=connector.ciphers,
            ciphersuites=connector.ciphersuites,
            groups=connector.groups,
            pins=list(connector.pin_digests),
            # The Host rewrite reads the device's bytes in user space: no kTLS there.
            ktls="off" if connector.http_host is not None else connector.ktls,
            alpn=list(connector.alpn),
            pq=connector.pq,
        )
    except ValueError as e:
        raise ConfigError(f"connector[{index}].{e}") from e


def server_context(exit_node: Exit, index: int) -> _core.TLSServerContext:
    try:
        return _core.TLSServerContext(
            cert=exit_node.cert,
            key=exit_node.key,
            allow_pins=list(exit_node.allow_digests),
            ca=exit_node.ca,
            min_tls=exit_node.min_tls,
            ktls=exit_node.ktls,
            alpn=list(exit_node.alpn),
            pq=exit_node.pq,
        )
    except ValueError as e:
        raise ConfigError(f"exit[{index}].{e}") from e


def check_contexts(config: Config) -> None:
    """Build every TLS context of `config` and drop it: what OpenSSL refuses (a CA file
    without a certificate, a key that is not the certificate's, an unknown cipher) is the
    ConfigError `run` would stop with. For `relaycore check`, which starts nothing."""
    for k, c in enumerate(config.connectors):
        if c.tls:
            client_context(c, k)
    for k, x in enumerate(config.exits):
        server_context(x, k)


def check_ktls_requirements(
    connectors: tuple[Connector, ...], exits: tuple[Exit, ...] = ()
) -> None:
    """`ktls = "require"` where the kernel cannot offload TLS is a start-up error."""
    wanted = [f"connector {c.name}" for c in connectors if c.tls and c.ktls == "require"]
    wanted += [f"exit {x.name}" for x in exits if x.ktls == "require"]
    if not wanted:
        return
    missing = ktls_unavailable()
    if missing:
        raise StartupError(
            f'{wanted[0]}: ktls = "require" but kernel TLS is unavailable: '
            f'{missing} (load it with `modprobe tls`, or set ktls = "auto")'
        )


def warn_insecure(connectors: tuple[Connector, ...]) -> None:
    for c in connectors:
        if c.tls and c.insecure:
            log.warning(
                "connector %s: verify = false and no pin: the server's certificate is NOT"
                " checked; anyone on the path can impersonate %s",
                c.name,
                c.upstream,
            )
