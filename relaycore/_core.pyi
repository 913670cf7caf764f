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
        max_pipes: int = -1,
        pipe_size: int = 262144,
    ) -> None: ...
    def add_route(
        self, listen_fd: int, connector_id: int, upstream_host: str, upstream_port: int
    ) -> None:
        """Accept on listen_fd (bound, listening; the loop owns it from now on) and relay
        each connection to upstream_host (an IPv4 or IPv6 literal):upstream_port."""
    def run(self, timeout_ms: int) -> None:
        """Serve until timeout_ms elapsed or a signal arrived (its Python handler has run
        when this returns; an exception it raised propagates)."""
    def stop_accepting(self) -> None:
        """Stop accepting and close the loop's listener fds; relayed connections go on."""
    @property
    def active(self) -> int:
        """Connections open now."""
    def counters(self) -> dict[str, int]:
        """Snapshot of the worker's counters (names in docs/ERRORS.md)."""
    def pop_errors(self) -> list[tuple[int, str, int, str, str]]:
        """Error events since the last call: (connector_id, cause, errno, client, upstream)."""
    def close(self) -> None:
        """Abort every connection and release every fd. Idempotent."""

def set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends signum when the parent exits."""
