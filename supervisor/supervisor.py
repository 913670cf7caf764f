"""The supervisor: binds, forks workers, respawns them, reloads, drains.

It never touches a client byte. Its main loop sleeps in select() on a self-pipe that
signal handlers write to (signal.set_wakeup_fd), plus the ready pipes of workers that
are starting, so every event is handled in the loop and never inside a handler.

Generations: a config generation is one set of workers (one per slot) forked from one
config. SIGHUP loads the file again; if it is valid, a new generation is forked on the
same sockets and, once every new worker is accepting, the old generation is told to
drain (SIGTERM: stop accepting, finish what is in flight). The sockets outlive both, so
no connection is refused across a reload or a crash.
"""

import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field

from relaycore import logs, tls, worker
from relaycore.addresses import HostPort
from relaycore.config import Config, load_config
from relaycore.errors import ConfigError, StartupError, WorkerFailedError

from .listeners import ListenerKey, ListenerSet
from .restart import MAX_FAST_CRASHES, RestartPolicy

log = logging.getLogger("relaycore.supervisor")

READY_TIMEOUT_S = 10.0
KILL_GRACE_S = 5.0
_HANDLED = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


@dataclass
class Child:
    pid: int
    slot: int
    generation: int
    started: float
    ready_fd: int
    ready: bool = False
    draining: bool = False


@dataclass
class Generation:
    number: int
    config: Config
    specs: dict[int, worker.WorkerSpec] = field(default_factory=dict)


class Supervisor:
    def __init__(self, config_path: str, config: Config) -> None:
        self.config_path = config_path
        self.listeners = ListenerSet()
        self.children: dict[int, Child] = {}
        self.policies: dict[int, RestartPolicy] = {}
        self.respawn_at: dict[int, float] = {}
        self.pending: list[int] = []
        self.stopping = False
        self.current, _ = self._build(config, 1)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- main loop ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain. 0 on a clean stop; raises
        WorkerFailedError when a worker keeps crashing, StartupError when none starts."""
        self._make_run_dir(self.current.config.relay.run_dir)
        self._install_signals()
        try:
            self._start(self.current)
            while not (self.stopping and not self.children):
                self._wait_events()
                self._handle_signals()
                self._respawn_due()
        except BaseException:
            self._kill_all(signal.SIGKILL)
            raise
        finally:
            self.listeners.close()
        log.info("stopped")
        return 0

    def _wait_events(self) -> None:
        timeout = 1.0
        if self.respawn_at:
            timeout = max(0.0, min(timeout, min(self.respawn_at.values()) - time.monotonic()))
        starting = {c.ready_fd: c for c in self.children.values() if c.ready_fd >= 0}
        try:
            readable, _, _ = select.select([self._wake_r, *starting], [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wake_r:
                _drain_pipe(fd)
            else:
                self._on_ready(starting[fd])

    def _handle_signals(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGHUP and not self.stopping:
                self.reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._stop()

    # -- generations --------------------------------------------------------------------

    def _build(self, config: Config, number: int) -> tuple[Generation, list[ListenerKey]]:
        """Bind what the config needs and fix every worker's spec. Returns the generation
        and the listeners it bound anew. Raises StartupError."""
        addrs = [c.listen_addr for c in config.connectors]
        workers = config.relay.workers
        upstreams = [_resolve(c.name, c.upstream_addr) for c in config.connectors]
        contexts = [
            tls.client_context(c, k) if c.tls else None for k, c in enumerate(config.connectors)
        ]
        tls.check_ktls_requirements(config.connectors)
        added = self.listeners.ensure(addrs, workers)
        tls.warn_insecure(config.connectors)
        gen = Generation(number, config)
        for slot in range(workers):
            routes = [
                worker.Route(
                    listen_fd=self.listeners.fd(c.listen_addr, slot),
                    connector_id=k,
                    connector_name=c.name,
                    upstream_ip=upstreams[k][0],
                    upstream_port=upstreams[k][1],
                    tls=contexts[k],
                )
                for k, c in enumerate(config.connectors)
            ]
            gen.specs[slot] = worker.WorkerSpec(
                slot=slot,
                generation=number,
                routes=routes,
                max_connections=config.relay.max_connections,
                splice=config.relay.splice,
                connect_timeout_ms=round(config.timeouts.connect_s * 1000),
                handshake_timeout_ms=round(config.timeouts.handshake_s * 1000),
                idle_timeout_ms=round(config.timeouts.idle_s * 1000),
                drain_timeout_s=config.relay.drain_timeout_s,
            )
        return gen, added

    def _start(self, gen: Generation) -> None:
        children = [self._spawn(gen.specs[slot]) for slot in gen.specs]
        if not self._wait_ready(children):
            raise StartupError("workers did not start (see the lines above)")
        self._announce(gen)

    def reload(self) -> None:
        """Fork a generation from the file as it is now; keep the running one if the file
        is bad or the new workers do not come up."""
        old = self.current
        try:
            config = load_config(self.config_path)
            gen, added = self._build(config, old.number + 1)
        except (ConfigError, StartupError) as e:
            log.error("reload rejected, generation %d stays: %s", old.number, e)
            return
        children = [self._spawn(gen.specs[slot]) for slot in gen.specs]
        if not self._wait_ready(children):
            for c in children:
                c.draining = True
                _kill(c.pid, signal.SIGKILL)
            self.listeners.close(added)
            log.error("reload failed: new workers did not start; generation %d stays", old.number)
            return
        self.current = gen
        for c in self.children.values():
            if c.generation == old.number:
                c.draining = True
                _kill(c.pid, signal.SIGTERM)
        addrs = [c.listen_addr for c in config.connectors]
        # The old workers keep their own copies until they stop accepting.
        self.listeners.close(self.listeners.unused(addrs, config.relay.workers))
        self.respawn_at.clear()
        self._announce(gen)

    def _announce(self, gen: Generation) -> None:
        listening = ", ".join(
            f"{c.name} {c.listen_addr} -> {c.upstream_addr}" for c in gen.config.connectors
        )
        log.info(
            "ready generation=%d workers=%d config=%s: %s",
            gen.number,
            len(gen.specs),
            self.config_path,
            listening,
        )

    # -- workers --------------------------------------------------------------------

    def _spawn(self, spec: worker.WorkerSpec) -> Child:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        # Blocked across fork so that no signal reaches the child while it still runs
        # the supervisor's handlers; the worker unblocks once its own are in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(spec, ready_r, ready_w)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        os.close(ready_w)
        child = Child(pid, spec.slot, spec.generation, time.monotonic(), ready_r)
        self.children[pid] = child
        log.debug("worker %d g%d forked, pid %d", spec.slot, spec.generation, pid)
        return child

    def _become_worker(self, spec: worker.WorkerSpec, ready_r: int, ready_w: int) -> None:
        try:
            signal.set_wakeup_fd(-1)
            for signum in _HANDLED:
                signal.signal(signum, signal.SIG_DFL)
            keep = {r.listen_fd for r in spec.routes}
            inherited = [ready_r, self._wake_r, self._wake_w, *self.listeners.fds()]
            inherited += [c.ready_fd for c in self.children.values() if c.ready_fd >= 0]
            for fd in inherited:
                if fd not in keep:
                    os.close(fd)
            logs.set_role(f"worker {spec.slot} g{spec.generation}")
            worker.serve(spec, ready_w)
        finally:
            os._exit(1)

    def _on_ready(self, child: Child) -> None:
        data = os.read(child.ready_fd, 1)
        os.close(child.ready_fd)
        child.ready_fd = -1
        child.ready = data == b"r"
        if child.ready:
            log.debug("worker %d g%d (pid %d) ready", child.slot, child.generation, child.pid)

    def _wait_ready(self, children: list[Child]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while any(c.ready_fd >= 0 for c in children):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
            fds = {c.ready_fd: c for c in children if c.ready_fd >= 0}
            try:
                readable, _, _ = select.select(list(fds), [], [], timeout)
            except InterruptedError:
                continue
            for fd in readable:
                self._on_ready(fds[fd])
        return all(c.ready for c in children)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            if child.ready_fd >= 0:
                os.close(child.ready_fd)
            how = _describe_exit(status)
            if child.draining or self.stopping:
                log.info("worker %d g%d (pid %d) %s", child.slot, child.generation, pid, how)
                continue
            self._crashed(child, how)

    def _crashed(self, child: Child, how: str) -> None:
        policy = self.policies.setdefault(child.slot, RestartPolicy())
        delay = policy.on_exit(time.monotonic() - child.started)
        if delay is None:
            raise WorkerFailedError(
                f"worker {child.slot} died {MAX_FAST_CRASHES} times in a row right after"
                f" starting (last: {how}); giving up"
            )
        log.warning(
            "worker %d g%d (pid %d) %s; respawning in %.1f s",
            child.slot,
            child.generation,
            child.pid,
            how,
            delay,
        )
        self.respawn_at[child.slot] = time.monotonic() + delay

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot, at in list(self.respawn_at.items()):
            if at <= now and not self.stopping:
                del self.respawn_at[slot]
                self._spawn(self.current.specs[slot])

    # -- stopping -------------------------------------------------------------------

    def _stop(self) -> None:
        if self.stopping:
            log.warning("second stop signal: killing workers now")
            self._kill_all(signal.SIGKILL)
            return
        self.stopping = True
        self.respawn_at.clear()
        log.info("stopping: draining %d workers", len(self.children))
        for c in self.children.values():
            c.draining = True
        self._kill_all(signal.SIGTERM)
        # Once the workers close their copies too, the sockets are gone and new devices
        # are refused at once instead of waiting in a backlog nobody will accept from.
        self.listeners.close()
        # A worker enforces drain_timeout_s itself; this is the backstop for one that hangs.
        deadline = time.monotonic() + self.current.config.relay.drain_timeout_s + KILL_GRACE_S
        signal.signal(signal.SIGALRM, lambda *_: self._kill_all(signal.SIGKILL))
        signal.setitimer(signal.ITIMER_REAL, max(0.1, deadline - time.monotonic()))

    def _kill_all(self, signum: int) -> None:
        for pid in self.children:
            _kill(pid, signum)

    def _make_run_dir(self, path: str) -> None:
        # Owner only: the control sockets that will live here carry admin commands.
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)
        except OSError as e:
            raise StartupError(f"run_dir {path}: {e.strerror}") from e

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in _HANDLED:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.pending.append(signum)


def _resolve(name: str, addr: HostPort) -> tuple[str, int]:
    # Upstream names are resolved once per generation: a reload picks up DNS changes.
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise StartupError(f"connector {name}: cannot resolve {addr.host}: {e.strerror}") from e
    ip, port = infos[0][4][:2]
    return str(ip), int(port)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
