"""Upstreams that never serve: a listener whose accept queue is full (a connect to it
stays in SYN_SENT until the connector gives up) and a port that refuses (RST at once).
Loopback only; each releases its sockets when its block ends.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
from collections.abc import Iterator
from typing import Self

from relaycore.lab.base import HOST


class BlackholeListener:
    """A listener on 127.0.0.1 (or another loopback `host`, on `port`) that never accepts,
    with its accept queue full, so that a further connect() stays in SYN_SENT (Linux drops
    SYNs to a listener whose accept queue is full) until the connector gives up. No packet
    leaves loopback."""

    def __init__(self, max_fill: int = 16, *, host: str = HOST, port: int = 0) -> None:
        self._fillers: list[socket.socket] = []
        self.host = host
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._lsock.bind((host, port))
            self._lsock.listen(0)
            self.port: int = self._lsock.getsockname()[1]
            self._fill(max_fill)
        except BaseException:
            self.close()
            raise

    def _fill(self, max_fill: int) -> None:
        for _ in range(max_fill):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.setblocking(False)
            err = probe.connect_ex((self.host, self.port))
            if err not in (0, errno.EINPROGRESS):
                probe.close()
                raise OSError(err, "blackhole fill connect failed")
            with selectors.DefaultSelector() as sel:
                sel.register(probe, selectors.EVENT_WRITE)
                ready = sel.select(timeout=0.3)
            if ready and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                self._fillers.append(probe)
                continue
            probe.close()  # its SYN was dropped: the queue is full
            return
        raise RuntimeError(f"accept queue still not full after {max_fill} connections")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for sock in self._fillers:
            sock.close()
        self._fillers.clear()
        self._lsock.close()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound (so nobody else takes it) but not
    listening, so a SYN to it gets RST."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()
