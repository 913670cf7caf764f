"""Fixtures for every tier. The autouse fixture fails a test that leaves fds (or threads)
behind: every socket, pipe, server and relay a test opens must be closed when it ends."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

SETTLE_TIMEOUT = 3.0

# A shell that starts `make test` in the background (a CI runner's `cmd &`, nohup) starts
# it with SIGINT ignored, and an ignored signal stays ignored across exec: the CLIs the
# tests stop with Ctrl-C (SIGINT) would never see it. A handler of our own is reset to
# the default in every child, so the children get Ctrl-C as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
