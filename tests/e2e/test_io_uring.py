"""`[relay] io = "io_uring"` end to end: `relaycore run` with the experimental io_uring
data path relays an echo over a TLS upstream and over a plain one, many connections at
once through two workers, and every byte comes back as it was sent (SHA-256 at both ends).

The config says io_uring itself, so this runs on it whatever `pytest --io` says. A kernel
that cannot (io_uring disabled, or older than 5.19) makes the relay refuse to start with
one line naming the kernel's reason, which the last test checks by disabling io_uring
(kernel.io_uring_disabled) for a moment.
"""

from __future__ import annotations

import subprocess
import sys
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


IO_URING_DISABLED = Path("/proc/sys/kernel/io_uring_disabled")


def test_a_kernel_that_refuses_io_uring_is_one_clear_line(tmp_path):
    if not IO_URING_DISABLED.exists():
        pytest.skip("this kernel has no kernel.io_uring_disabled")
    (tmp_path / "run").mkdir(mode=0o700)
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nworkers = 1\nrun_dir = "{tmp_path / "run"}"\nio = "io_uring"\n\n'
        f'[[connector]]\nname = "t"\nlisten = "{HOST}:{free_port()}"\n'
        f'upstream = "{HOST}:{free_port()}"\ntls = false\n'
    )
    before = IO_URING_DISABLED.read_text()
    IO_URING_DISABLED.write_text("2\n")  # 2: io_uring_setup fails with EPERM for everyone
    try:
        run = subprocess.run(
            [sys.executable, "-m", "relaycore", "run", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        IO_URING_DISABLED.write_text(before)
    assert run.returncode != 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert (
        'worker cannot start: io_uring: Operation not permitted (io = "io_uring" needs'
        in run.stderr
    ), run.stderr
    assert "workers did not start" in run.stderr, run.stderr
