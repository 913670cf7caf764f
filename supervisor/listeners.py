"""Listening sockets: N SO_REUSEPORT sockets per address, bound before any fork.

The supervisor holds every listening socket for its whole life and never accepts on
them. A socket is destroyed only when its last fd closes, so a worker that crashes or
drains does not take the connections queued on its socket with it: the next worker on
that slot (or the next generation) accepts them (docs/HOTPATH.md §4).
"""

import errno
import socket

from relaycore.addresses import HostPort
from relaycore.errors import StartupError

BACKLOG = 4096  # capped by net.core.somaxconn

ListenerKey = tuple[HostPort, int]  # (address, worker slot)


def bind_reuseport(addr: HostPort) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "[::]:80" means IPv6 only; "0.0.0.0:80" can then be configured beside it.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((addr.host, addr.port))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        hint = ""
        if e.errno == errno.EADDRINUSE:
            hint = " (another process is listening there without SO_REUSEPORT)"
        elif e.errno == errno.EADDRNOTAVAIL:
            hint = " (no interface on this machine has that address)"
        raise StartupError(f"cannot listen on {addr}: {e.strerror}{hint}") from e
    return sock


class ListenerSet:
    """The supervisor's sockets, keyed by (address, slot), kept across reloads."""

    def __init__(self) -> None:
        self._sockets: dict[ListenerKey, socket.socket] = {}

    def ensure(self, addrs: list[HostPort], workers: int) -> list[ListenerKey]:
        """Bind what is missing for `workers` slots of each address. Returns the keys it
        bound (so a failed reload can close exactly those). All or nothing."""
        added: list[ListenerKey] = []
        try:
            for addr in addrs:
                for slot in range(workers):
                    if (addr, slot) not in self._sockets:
                        self._sockets[addr, slot] = bind_reuseport(addr)
                        added.append((addr, slot))
        except StartupError:
            self.close(added)
            raise
        return added

    def fd(self, addr: HostPort, slot: int) -> int:
        return self._sockets[addr, slot].fileno()

    def fds(self) -> list[int]:
        return [s.fileno() for s in self._sockets.values()]

    def unused(self, addrs: list[HostPort], workers: int) -> list[ListenerKey]:
        wanted = {(a, s) for a in addrs for s in range(workers)}
        return [k for k in self._sockets if k not in wanted]

    def close(self, keys: list[ListenerKey] | None = None) -> None:
        for key in list(self._sockets) if keys is None else keys:
            sock = self._sockets.pop(key, None)
            if sock is not None:
                sock.close()
