"""One local client cannot starve Prometheus (issue 16): a client that keeps N connections
open to /metrics, each having sent one byte of a request it never finishes (and opens a
new one whenever the relay drops one), must not cost a real scraper its scrapes."""

from __future__ import annotations

import selectors
import socket
import threading

import pytest
from control import HOST, with_stats
from plane_checks import scrape
from support.relay import relay_config, relay_process
from support.servers import EchoServer

from relaycore.lab.base import free_port

SCRAPES = 20
MAX_RECONNECTS = 20_000  # a bound on the hostile client's work, whatever the relay does


class SlowClients:
    """N connections to `port`, each of which sent one byte; one that the server closes
    is replaced at once, until stop()."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.n = n
        self.opened = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients")

    def __enter__(self) -> SlowClients:
        self._thread.start()
        assert self._ready.wait(10), "the slow clients never all connected"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _open(self, sel: selectors.BaseSelector) -> None:
        sock = socket.create_connection((HOST, self.port), timeout=5)
        sock.sendall(b"G")
        sel.register(sock, selectors.EVENT_READ)
        self.opened += 1

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            try:
                for _ in range(self.n):
                    self._open(sel)
                self._ready.set()
                while not self._stop.is_set() and self.opened < MAX_RECONNECTS:
                    for key, _ in sel.select(timeout=0.05):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        sel.unregister(sock)
                        sock.close()
                        self._open(sel)
            finally:
                for key in list(sel.get_map().values()):
                    key.fileobj.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("hostile", [20, 200])
def test_scrapes_succeed_while_a_client_holds_connections_open(tmp_path, hostile):
    prom = free_port()
    with EchoServer() as echo:
        config = with_stats(
            relay_config(
                run_dir=tmp_path / "run", listen_port=free_port(), upstream_port=echo.port
            ),
            prometheus=f"{HOST}:{prom}",
        )
        with relay_process(config, tmp_path) as relay, SlowClients(prom, hostile):
            for _ in range(SCRAPES):
                code, _, body = scrape(prom)
                assert code == 200, relay.output()
                assert "relaycore_workers 1" in body
