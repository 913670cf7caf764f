"""Backpressure through a real `relaycore run` (1 worker): a client that stops reading
while the upstream streams 256 MiB must not make the worker buffer the stream. The worker
holds at most one buffer or pipe per direction, so its RSS stays flat and the upstream
blocks; when the client reads again, every byte arrives intact."""

from __future__ import annotations

import socket
import threading

import psutil
import pytest
from support.clients import Reader, connect
from support.data import MiB
from support.relay import SPLICE_UNAVAILABLE, relay_config, relay_process
from support.servers import SourceServer, tls_server_context

from relaycore.lab.base import free_port
from relaycore.lab.pki import make_pki

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TOTAL = 256 * MiB
STALL_S = 5.0
RSS_GROWTH_LIMIT = 8 * MiB
WARMUP = MiB


@pytest.mark.parametrize("path", ["copy", "splice", "tls"])
def test_stalled_reader_keeps_worker_memory_flat(tmp_path, path):
    if path == "splice" and SPLICE_UNAVAILABLE:
        pytest.skip(SPLICE_UNAVAILABLE)
    tls = None
    if path == "tls":
        pki = make_pki(tmp_path / "pki")
        server = pki.issue("upstream", dns=["localhost"])
        tls = tls_server_context(server.chain, server.key)
    with SourceServer(TOTAL, seed=901, tls=tls) as up:
        listen_port = free_port()
        config = relay_config(
            run_dir=tmp_path / "run",
            listen_port=listen_port,
            upstream_port=up.port,
            splice="always" if path == "splice" else "off",
        )
        if tls is not None:
            # The userspace TLS pump: SSL_read must stop while the device is full.
            config = config.replace(
                "tls = false", f'server_name = "localhost"\nca = "{pki.ca_cert}"'
            )
        with relay_process(config, tmp_path) as relay:
            [worker_pid] = relay.worker_pids(expected=1)
            worker = psutil.Process(worker_pid)
            with connect(listen_port) as sock:
                reader = Reader(sock)
                reader.read(WARMUP, timeout=20)
                [rec] = up.wait_connections(1)
                rss_before = worker.memory_info().rss
                # The client deliberately reads nothing for STALL_S (not a synchronisation).
                threading.Event().wait(STALL_S)
                rss_after = worker.memory_info().rss
                sent_by_upstream = rec.sent
                reader.read_to_eof(timeout=120)
                sock.shutdown(socket.SHUT_WR)  # lets the upstream's reader finish
                rec.wait(20)
            output = relay.output()
    growth = rss_after - rss_before
    assert growth < RSS_GROWTH_LIMIT, (
        f"worker RSS grew {growth / MiB:.1f} MiB while the client stalled\n{output}"
    )
    assert sent_by_upstream < TOTAL // 4, (
        f"upstream pushed {sent_by_upstream / MiB:.0f} MiB into a stalled client: not blocked"
    )
    assert reader.eof, reader.received
    assert reader.received == TOTAL, reader.received
    assert reader.hexdigest() == rec.sent_digest(), "stream corrupted after the stall"
    assert rec.error is None, rec
    assert rec.send_error is None, rec
