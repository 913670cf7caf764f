"""`[relay] io = "io_uring"` end to end: `relaycore run` with the experimental io_uring
data path relays an echo over a TLS upstream and over a plain one, many connections at
once through two workers, and every byte comes back as it was sent (SHA-256 at both ends).

The config says io_uring itself, so this runs on it whatever `pytest --io` says; a kernel
that cannot (io_uring disabled, or older than 6.1) makes the relay refuse to start, and
the test fails with the kernel's reason: io_uring was asked for and is not there.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from control import cli_json
from support.clients import Result, connect, exchange
from support.data import KiB, RandomStream
from support.relay import SERVER_NAME, TLSFiles, relay_process
from support.servers import HOST, EchoServer, tls_server_context

from relaycore.lab.base import free_port

pytestmark = pytest.mark.timeout(120)

CONNS = 48  # per connector, all open at once
SIZE = 96 * KiB  # each connection's bytes, sent in random 1 B .. 64 KiB writes


def config(
    run_dir: Path, files: TLSFiles, tls_port: int, tls_up: int, plain_port: int, up: int
) -> str:
    return (
        f'[relay]\nworkers = 2\nrun_dir = "{run_dir}"\nio = "io_uring"\nsplice = "off"\n'
        "[stats]\ninterval_s = 0.2\n\n"
        f'[[connector]]\nname = "tls"\nlisten = "{HOST}:{tls_port}"\n'
        f'upstream = "{HOST}:{tls_up}"\nserver_name = "{SERVER_NAME}"\n'
        f'ca = "{files.pki.ca_cert}"\n\n'
        f'[[connector]]\nname = "plain"\nlisten = "{HOST}:{plain_port}"\n'
        f'upstream = "{HOST}:{up}"\ntls = false\n'
    )


def echo_through(port: int, seed: int) -> Result:
    sock = connect(port)
    try:
        return exchange(sock, RandomStream(SIZE, seed), chunk_seed=seed, timeout=60)
    finally:
        sock.close()


def test_echo_over_tls_and_plain_upstreams_on_io_uring(tmp_path: Path) -> None:
    files = TLSFiles.make(tmp_path / "pki")
    tls_port, plain_port = free_port(), free_port()
    with (
        EchoServer(tls=tls_server_context(files.server.chain, files.server.key)) as tls_up,
        EchoServer() as plain_up,
        relay_process(
            config(tmp_path / "run", files, tls_port, tls_up.port, plain_port, plain_up.port),
            tmp_path,
        ) as relay,
    ):
        assert cli_json("status", "-c", str(relay.config_path))["io"] == "io_uring"
        jobs = [(port, seed) for port in (tls_port, plain_port) for seed in range(CONNS)]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            results = list(pool.map(lambda job: echo_through(*job), jobs))
        for (port, seed), r in zip(jobs, results, strict=True):
            which = "tls" if port == tls_port else "plain"
            assert r.error is None, (which, seed, r, relay.tail(20))
            assert r.eof, (which, seed, r)
            assert (r.sent, r.received) == (SIZE, SIZE), (which, seed, r)
            assert r.digest == r.sent_digest, f"{which} connection {seed}: bytes differ"
        assert relay.stop() == 0, relay.output()
