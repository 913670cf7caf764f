# Hand-written stub of the compiled module relaycore._core (ext/_core.pyx).
# Contract for relaycore.worker and the tests; keep in step with ext/.

class Loop:
    """One worker's epoll loop: accepts on its listeners, relays bytes in C.

    splice: "auto" promotes streaming directions to splice(2), "off" never splices,
    "always" splices every direction from its first byte (pool permitting).
    """

    def __init__(
        self,
        *,
        max_connections: int = 10000,
        splice: str = "auto",
        connect_timeout_ms: int = 10000,
        idle_timeout_ms: int = 900000,
        handshake_timeout_ms: int = 10000,
        max_pipes: int = -1,
        pipe_size: int = 262144,
    ) -> None: ...
    def add_route(
        self,
        listen_fd: int,
        connector_id: int,
        upstream_host: str,
        upstream_port: int,
        tls: TLSClientContext | None = None,
    ) -> None:
        """Accept on listen_fd (bound, listening; the loop owns it from now on) and relay
        each connection to upstream_host (an IPv4 or IPv6 literal):upstream_port, over
        TLS made with `tls` when given."""
    def run(self, timeout_ms: int) -> None:
        """Serve until timeout_ms elapsed or a signal arrived (its Python handler has run
        when this returns; an exception it raised propagates)."""
    def stop_accepting(self) -> None:
        """Stop accepting and close the loop's listener fds; relayed connections go on."""
    @property
    def active(self) -> int:
        """Connections open now."""
    def counters(self) -> dict[str, int]:
        """Snapshot of the worker's counters, all connectors together (names in
        docs/ERRORS.md)."""
    def connector_counters(self) -> dict[int, dict[str, int]]:
        """{connector_id: counters of its connections in this worker, with "active"}."""
    def worker_counters(self) -> dict[str, int]:
        """What belongs to the worker rather than a connector (pipes, pauses, drops)."""
    def pop_errors(self) -> list[tuple[int, str, int, str, str, str, str]]:
        """Error events since the last call: (connector_id, cause, errno, client,
        upstream, reason, original_destination); the last is "" outside gateway mode."""
    def add_upstream(
        self,
        connector_id: int,
        upstream_host: str,
        upstream_port: int,
        tls: TLSClientContext | None = None,
    ) -> int:
        """A route to a connector's upstream; returns its index."""
    def add_passthrough(self, connector_id: int) -> int:
        """A route that relays plain TCP to each connection's original destination."""
    def add_reject(self, connector_id: int) -> int:
        """A route that resets each connection and records why (cause no_route)."""
    def add_listener(self, listen_fd: int, route: int) -> None:
        """Accept on listen_fd; connections take `route`, or with -1 (gateway) the route
        their original destination matches."""
    def set_gateway(self, default_route: int, reject_route: int) -> None:
        """What an unmatched original destination gets, and what a connection that was
        not redirected gets (a reject route)."""
    def add_match(self, route: int, network: str, port: int = 0) -> None:
        """Original destinations in `network` and `port` (0: any) take `route`; tried in
        the order added (most specific first)."""
    def add_exit(
        self,
        connector_id: int,
        tls: TLSServerContext,
        target: str,
        host: str = "",
        port: int = 0,
    ) -> int:
        """A tunnel exit route; returns its index (give it listeners with add_listener).
        Connections are TLS from entry nodes, authenticated by `tls`. target: "fixed"
        (relay plain TCP to host, an IP literal, :port), "socks5" or "http-connect" (the
        entry names the destination; domain names are resolved here, off the loop)."""
    def allow_destination(self, route: int, network: str, port: int = 0) -> None:
        """Proxy exits: also allow destinations in `network` and `port` (0: any). With
        none added, any destination but loopback, link-local and unspecified addresses."""
    def close(self) -> None:
        """Abort every connection and release every fd. Idempotent."""

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
    ) -> None: ...
    @property
    def cached_sessions(self) -> int:
        """Sessions waiting in this context's cache."""

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

def set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends signum when the parent exits."""
