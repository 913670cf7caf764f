"""Worker processes as the supervisor sees them: fork one, hear that it is ready, reap the
ones that exited, and say how they ended. Policy (when to respawn, when to give up) is
the supervisor's; this module only does the process work.

A worker is a plain os.fork() of the supervisor (never multiprocessing's spawn): it keeps
stdio, its slot's listening sockets and its ready pipe, closes every other fd it
inherited (the supervisor's ZeroMQ sockets, the run_dir lock, other workers' pipes), and
writes one byte, "r", to the ready pipe once it accepts.
"""

import logging
import os
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from relaycore import logs, worker
from relaycore.plan import WorkerPlan

log = logging.getLogger("relaycore.supervisor")


@dataclass
class Child:
    pid: int
    slot: int
    generation: int
    started: float  # time.monotonic() at fork
    ready_fd: int  # -1 once the ready byte came (or the pipe closed)
    ready: bool = False
    draining: bool = False


def fork_worker(spec: WorkerPlan, handled: Sequence[int]) -> Child:
    """Fork the worker of `spec`. `handled`: the signals the supervisor handles, blocked
    across the fork so that none reaches the child while it still runs the supervisor's
    handlers (the worker unblocks them once its own are in place)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        pid = os.fork()
        if pid == 0:
            _become_worker(spec, ready_w, handled)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    os.close(ready_w)
    generation = spec.plan.generation
    log.debug("worker %d g%d forked, pid %d", spec.slot, generation, pid)
    return Child(pid, spec.slot, generation, time.monotonic(), ready_r)


def _become_worker(spec: WorkerPlan, ready_w: int, handled: Sequence[int]) -> None:
    try:
        signal.set_wakeup_fd(-1)
        for signum in handled:
            signal.signal(signum, signal.SIG_DFL)
        keep = sorted({0, 1, 2, ready_w, *spec.listen_fds})
        for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(low + 1, high)
        logs.set_role(f"worker {spec.slot} g{spec.plan.generation}")
        worker.serve(spec, ready_w)
    finally:
        os._exit(1)


def read_ready(child: Child) -> None:
    """The child's ready pipe is readable: its one byte (or EOF: it died first)."""
    data = os.read(child.ready_fd, 1)
    os.close(child.ready_fd)
    child.ready_fd = -1
    child.ready = data == b"r"
    if child.ready:
        log.debug("worker %d g%d (pid %d) ready", child.slot, child.generation, child.pid)


def serving_slots(children: Iterable[Child], generation: int) -> set[int]:
    """The slots of `generation` whose worker is ready and not draining."""
    return {c.slot for c in children if c.generation == generation and c.ready and not c.draining}


def exited() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has exited, without waiting."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
