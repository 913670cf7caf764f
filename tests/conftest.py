"""Fixtures for every tier. The autouse fixture fails a test that leaves fds (or threads)
behind: every socket, pipe, server and relay a test opens must be closed when it ends.

`pytest --io=io_uring` runs the suite on the loop's experimental io_uring data path
(`make test-uring`): every Loop the tests make (support.relay.LoopThread) and every
config a `relaycore run` of theirs reads (relaycore.lab.relay.RelayProcess) get that io
mode. Tests of what only the epoll loop does (`epoll_only`: its syscalls, its owned buffers) and the
kTLS tests (kTLS connections stay on epoll) are skipped then."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import support.relay

from relaycore.lab.relay import RelayProcess

SETTLE_TIMEOUT = 3.0

# A shell that starts `make test` in the background (a CI runner's `cmd &`, nohup) starts
# it with SIGINT ignored, and an ignored signal stays ignored across exec: the CLIs the
# tests stop with Ctrl-C (SIGINT) would never see it. A handler of our own is reset to
# the default in every child, so the children get Ctrl-C as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--io",
        choices=("epoll", "io_uring"),
        default="epoll",
        help="the loop's io mode for every relay the tests run (default: epoll)",
    )


def pytest_configure(config: pytest.Config) -> None:
    io = config.getoption("io")
    support.relay.LOOP_IO = io
    RelayProcess.default_io = None if io == "epoll" else io


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    io = config.getoption("io")
    if io == "epoll":
        return
    why = {
        "ktls": f"kTLS connections stay on epoll: nothing of io = {io!r} to test",
        "epoll_only": f"tests what only the epoll loop does, not io = {io!r}",
    }
    for item in items:
        for marker, reason in why.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def _fd_table() -> dict[str, str]:
    table = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    return table


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    """Fail the test if the process has more fds (or live threads) after it than before.

    Threads a test started get a bounded moment to finish and close what they hold."""
    proc = psutil.Process()
    threads_before = set(threading.enumerate())
    fds_before = proc.num_fds()
    table_before = _fd_table()
    yield
    deadline = time.monotonic() + SETTLE_TIMEOUT
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(max(0.0, deadline - time.monotonic()))
    settle = threading.Event()
    fds_after = proc.num_fds()
    while fds_after > fds_before and time.monotonic() < deadline:
        settle.wait(0.02)
        fds_after = proc.num_fds()
    leaked_threads = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    if fds_after > fds_before:
        table_after = _fd_table()
        new = {fd: target for fd, target in table_after.items() if table_before.get(fd) != target}
        pytest.fail(f"fd leak: {fds_before} fds before the test, {fds_after} after; new: {new}")
    if leaked_threads:
        pytest.fail(f"threads still running after the test: {leaked_threads}")
