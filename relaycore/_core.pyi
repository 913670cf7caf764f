# Stub of the compiled module relaycore._core (ext/_core.pyx). `make lint` checks it
# against the built module with mypy's stubtest; keep the two in step.

from typing import Any

from typing_extensions import disjoint_base

CAUSES: tuple[str, ...]
"""Every failure cause, in the order of the loop's enum; counted as errors_<cause>."""
GROUPS: tuple[str, ...]
"""The key-exchange groups handshakes are counted by, as group_<group>."""
OPENSSL_VERSION: str
"""The OpenSSL this module runs, e.g. "OpenSSL 3.5.9 29 Sep 2026" (its own copy when
linked statically; Python's ssl module may run another)."""
OPENSSL_ORIGIN: str
"""Where setup.py found it: "static, Debian 13 libssl-dev 3.5.9-1~deb13u1", "system 3.5.1"."""

@disjoint_base
class ErrorEvent:
    """One failed connection, as the loop recorded it; made only by Loop.pop_errors."""

    @property
    def route(self) -> int:
        """Its route id."""
    @property
    def cause(self) -> str:
        """One of CAUSES (docs/ERRORS.md)."""
    @property
    def errno(self) -> int:
        """The errno behind the failure, or 0."""
    @property
    def client(self) -> str:
        """The device's address, "ip:port" ("[ip]:port" for IPv6, "?" if unknown)."""
    @property
    def upstream(self) -> str:
        """Where it went, the same way ("-" when that was never decided)."""
    @property
    def reason(self) -> str:
        """One human line."""
    @property
    def destination(self) -> str:
        """The device's original destination (gateway), or the address a proxy exit
        dialled, else ""."""

@disjoint_base
class Loop:
    """One worker's epoll loop: accepts on its listeners, relays bytes in C.

    Route ids are dense, 0.. in the order the add_* methods make them; they index
    route_counters() and name the route of each ErrorEvent.

    splice: "auto" promotes streaming directions to splice(2), "off" never splices,
    "always" splices every direction from its first byte (pool permitting).

    io: "epoll" (the default), or "io_uring", an experiment: relaying connections (plain
    copy with splice "off", TLS in user space) receive by multishot recv into provided
    buffers (uring_buffers of 16 KiB, shared) and send in batches; the rest stays on epoll.
    OSError when the kernel cannot (io_uring disabled, or older than 5.19).
    """

    def __init__(
        self,
        *,
        max_connections: int = 10000,
        splice: str = "auto",
        io: str = "epoll",
        connect_timeout_ms: int = 10000,
        idle_timeout_ms: int = 900000,
        handshake_timeout_ms: int = 10000,
        max_pipes: int = -1,
        pipe_size: int = 262144,
        uring_buffers: int = 1024,
    ) -> None: ...
    def add_upstream(
        self,
        host: str,
        port: int,
        tls: TLSClientContext | None = None,
        *,
        proxy_protocol: int = 0,
        accept_proxy: bool = False,
        http_host: str | None = None,
    ) -> int:
        """A route to host (an IP literal):port, over TLS made with `tls` when given.
        proxy_protocol 1 or 2: a PROXY header first upstream; accept_proxy: connections
        start with a balancer's PROXY header; http_host: the Host HTTP/1.x requests get
        (TLS, kTLS off)."""
    def set_upstream_addresses(self, route: int, addresses: list[tuple[str, int]]) -> None:
        """The upstream (or fixed exit target) of `route` is now these (IP literal, port)
        pairs, tried in order (at most 8). Connections in flight keep theirs."""
    def upstream_addresses(self, route: int) -> list[str]:
        """The addresses of `route`, "ip:port", the one new connections start with first."""
    def add_passthrough(self) -> int:
        """A route to each connection's original destination, plain (gateway only)."""
    def add_reject(self) -> int:
        """A route that resets each connection and records why (cause no_route)."""
    def add_exit(
        self,
        tls: TLSServerContext,
        target: str,
        host: str = "",
        port: int = 0,
        *,
        accept_proxy: bool = False,
    ) -> int:
        """A tunnel exit route. Connections are TLS from entry nodes, authenticated by
        `tls`. target: "fixed" (relay plain TCP to host, an IP literal, :port), "socks5" or
        "http-connect" (the entry names the destination; names are resolved off the loop)."""
    def allow_destination(self, route: int, network: str, port: int = 0) -> None:
        """Proxy exits: also allow destinations in `network` and `port` (0: any). With
        none added, any destination but loopback, link-local and unspecified addresses and
        the addresses of this host (the kernel's local routes)."""
    def add_listener(self, listen_fd: int, route: int) -> None:
        """Accept on listen_fd (the loop owns it from now on); connections take `route`."""
    def add_gateway_listener(self, listen_fd: int) -> None:
        """Accept on listen_fd (the loop owns it from now on); each connection takes the
        route its original destination matches (set_gateway first)."""
    def set_gateway(self, default_route: int, reject_route: int) -> None:
        """What an unmatched original destination gets, and what a connection that was
        not redirected gets (a reject route)."""
    def add_match(self, route: int, network: str, port: int = 0) -> None:
        """Original destinations in `network` and `port` (0: any) take `route`; tried in
        the order added (most specific first)."""
    def run(self, timeout_ms: int) -> None:
        """Serve until timeout_ms elapsed or a signal arrived (its Python handler has run
        when this returns; an exception it raised propagates)."""
    def stop_accepting(self) -> None:
        """Stop accepting and close the loop's listener fds; relayed connections go on."""
    @property
    def active(self) -> int:
        """Connections open now."""
    @property
    def ktls_rekey(self) -> bool | None:
        """Whether the kernel rekeys kTLS, so that TLS 1.3 is offloaded; None until the
        first route that may use kTLS was added (the probe runs then, once)."""
    @property
    def io(self) -> str:
        """ "io_uring" if the relaying connections move their bytes on an io_uring."""
    def uring_stats(self) -> dict[str, int] | None:
        """io = "io_uring": connections adopted by the ring so far, its requests in flight,
        its receive buffers (given to the kernel so far, at most, free), and the receives
        that ended for want of them; None on epoll."""
    def route_counters(self) -> list[dict[str, int]]:
        """The counters of each route's connections, indexed by route id (docs/ERRORS.md)."""
    def worker_counters(self) -> dict[str, int]:
        """What belongs to the worker rather than a route (pipes, pauses, drops)."""
    def counters(self) -> dict[str, int]:
        """Every route's counters summed, then the worker's (for tests and logs)."""
    def route_certs(self) -> list[dict[str, Any] | None]:
        """Per route id, the certificate a connector's upstream presented in its latest
        handshakes, or None (no handshake yet, or not a TLS connector): {"pin": 32-byte
        SHA-256 of the DER SubjectPublicKeyInfo, "not_after": Unix time, "issuer" and
        "subject": RFC 2253 text, "seen": Unix time of the latest handshake,
        "key_changes": handshakes that presented another key than the one before,
        "previous_pin": the key before the latest change (b"" if none)}."""
    def pop_errors(self) -> list[ErrorEvent]:
        """The ErrorEvents recorded since the last call, oldest first."""
    def close(self) -> None:
        """Abort every connection and release every fd. Idempotent."""

@disjoint_base
class TLSClientContext:
    """An SSL_CTX for one connector. Raises ValueError("<key>: <reason>") when OpenSSL
    refuses a setting (<key> is the config key at fault)."""

    def __init__(
        self,
        *,
        server_name: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        verify: bool = True,
        min_tls: str = "1.2",
        ciphers: str | None = None,
        ciphersuites: str | None = None,
        groups: str | None = None,
        pins: list[bytes] | tuple[bytes, ...] = (),
        ktls: str = "auto",
        pq: str = "prefer",
        alpn: list[str] | tuple[str, ...] = (),
    ) -> None: ...
    @property
    def cached_sessions(self) -> int:
        """Sessions waiting in this context's cache."""

@disjoint_base
class TLSServerContext:
    """An SSL_CTX for one tunnel exit: its identity (cert, key) and who may connect: a
    client certificate whose key is in `allow_pins` (32-byte SHA-256 of the DER
    SubjectPublicKeyInfo) or that chains to `ca`. Raises ValueError("<key>: <reason>")."""

    def __init__(
        self,
        *,
        cert: str,
        key: str,
        allow_pins: list[bytes] | tuple[bytes, ...] = (),
        ca: str | None = None,
        min_tls: str = "1.2",
        ktls: str = "auto",
        pq: str = "prefer",
        alpn: list[str] | tuple[str, ...] = (),
    ) -> None: ...

def make_identity(
    key_path: str, cert_path: str, common_name: str, days: int = 3650, key_type: str = "p256"
) -> bytes:
    """A new key (key_type "p256": ECDSA P-256, or "ed25519"; written 0600) and a
    self-signed certificate for it; returns the pin digest (SHA-256 of the DER
    SubjectPublicKeyInfo). Raises OSError, ValueError."""

def spki_pin(cert_path: str) -> bytes:
    """The pin digest of the first certificate in a PEM file. Raises ValueError."""

def parse_socks5(data: bytes) -> tuple[int, int, str, int]:
    """The exit's SOCKS5 parser on the first bytes of a stream (greeting and request):
    (status, consumed, host, port). status 0: incomplete; 1: complete (consumed: the
    greeting and the request); < 0: refused, -status is the code the exit answers with
    (255: no acceptable method in the greeting, else a SOCKS5 reply code)."""

def parse_http_connect(data: bytes) -> tuple[int, int, str, int]:
    """The exit's HTTP CONNECT parser: (status, consumed, host, port). status 0:
    incomplete; 1: complete; < 0: refused, -status is the HTTP status of the reply."""

def parse_proxy_header(data: bytes) -> tuple[int, int, str, str, str]:
    """The PROXY protocol parser: (status, consumed, source, destination, reason). status
    0: incomplete; 1: complete (source, destination "ip:port", "" for UNKNOWN/LOCAL);
    -1: refused, reason says why."""

def build_proxy_header(
    version: int, source: str, source_port: int, destination: str, destination_port: int
) -> bytes:
    """The PROXY header (version 1 or 2) a connector sends ("" addresses: unknown)."""

def http_rewrite(data: bytes, host: str, piece: int = 65536) -> tuple[bytes, int, str]:
    """The Host rewrite over a device's byte stream, fed `piece` bytes at a time:
    (forwarded, consumed, reason); reason "" or why the stream was refused."""

def ktls_probe() -> str:
    """Kernel TLS here: "rekey" (TLS 1.2 and 1.3 offloaded; Linux 6.14 rekeys on a
    KeyUpdate), "no-rekey" (TLS 1.2 only), or why it is unavailable."""

def set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends signum when the parent exits."""
