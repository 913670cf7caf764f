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

import errno
import functools
import logging
import os
import select
import signal
import time
from dataclasses import dataclass

import zmq

from relaycore import gateway, logs, protocol, rundir, tls, worker
from relaycore.addresses import parse_host_port
from relaycore.capabilities import ktls_summary, openssl_summary
from relaycore.config import Config, load_config
from relaycore.errors import ConfigError, StartupError, WorkerFailedError
from relaycore.plan import Plan, WorkerPlan, compile_plan
from relaycore.render import error_line

from .aggregate import Aggregator
from .control import ControlPlane
from .listeners import ListenerKey, ListenerSet
from .metrics import MetricsServer, render
from .restart import MAX_FAST_CRASHES, RestartPolicy

log = logging.getLogger("relaycore.supervisor")

READY_TIMEOUT_S = 10.0
STATS_PERIOD_S = 1.0  # how often stats are published (and Prometheus sees new numbers)
DRAIN_CONFIRM_S = 2.0  # how long a reload waits for the old workers to stop accepting
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


@dataclass(frozen=True)
class Generation:
    number: int
    config: Config
    plan: Plan
    workers: dict[int, WorkerPlan]  # by slot


class Supervisor:
    def __init__(self, config_path: str, config: Config) -> None:
        self.config_path = config_path
        self.listeners = ListenerSet()
        self.children: dict[int, Child] = {}
        self.policies: dict[int, RestartPolicy] = {}
        self.respawn_at: dict[int, float] = {}
        self.pending: list[int] = []
        self.stopping = False
        self.started = time.time()
        self.aggregator = Aggregator()
        self.plane: ControlPlane | None = None
        self.metrics: MetricsServer | None = None
        self._next_stats = 0.0
        self._drained: set[int] = set()
        self.current, _ = self._build(config, 1)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- main loop ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain. 0 on a clean stop; raises
        WorkerFailedError when a worker keeps crashing, StartupError when none starts."""
        config = self.current.config
        lock_fd = rundir.claim(config.relay.run_dir)
        self._install_signals()
        try:
            self._manage_rules(None, config)
            self.plane = ControlPlane(config.relay.run_dir, config.stats.publish)
            if config.stats.prometheus is not None:
                self.metrics = MetricsServer(
                    parse_host_port(config.stats.prometheus, require_ip=True),
                    lambda: render(self._stats(), self.aggregator.reports_dropped()),
                )
            self._start(self.current)
            while not (self.stopping and not self.children):
                self._wait_events()
                self._handle_signals()
                self._respawn_due()
                self._publish_stats()
        except BaseException:
            self._kill_all(signal.SIGKILL)
            raise
        finally:
            self._remove_rules(self.current.config)
            self.listeners.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.plane is not None:
                self.plane.close()
            os.close(lock_fd)
        log.info("stopped")
        return 0

    def _wait_events(self) -> None:
        assert self.plane is not None
        now = time.monotonic()
        deadlines = [self._next_stats, now + 1.0, *self.respawn_at.values()]
        timeout_ms = max(0, round((min(deadlines) - now) * 1000))
        starting = {c.ready_fd: c for c in self.children.values() if c.ready_fd >= 0}
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        for fd in starting:
            poller.register(fd, zmq.POLLIN)
        poller.register(self.plane.events, zmq.POLLIN)
        poller.register(self.plane.admin, zmq.POLLIN)
        metrics_fds = self.metrics.fds() if self.metrics is not None else []
        for fd in metrics_fds:
            poller.register(fd, zmq.POLLIN)
        try:
            ready = dict(poller.poll(timeout_ms))
        except zmq.ZMQError as e:
            if e.errno == errno.EINTR:
                return
            raise
        if self._wake_r in ready:
            _drain_pipe(self._wake_r)
        for fd, child in starting.items():
            if fd in ready:
                self._on_ready(child)
        if self.plane.events in ready:
            self._on_worker_messages()
        if self.plane.admin in ready:
            self._on_admin()
        if self.metrics is not None:
            for fd in metrics_fds:
                if fd in ready:
                    self.metrics.on_readable(fd)
            self.metrics.expire(time.monotonic())

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
        """Compile the config (relaycore.plan) and bind what it needs. Returns the
        generation and the listeners it bound anew. Raises ConfigError, StartupError."""
        plan = compile_plan(config, number)
        added = self.listeners.ensure(plan.addresses, plan.workers)
        tls.warn_insecure(config.connectors)
        workers = {
            slot: plan.for_slot(slot, functools.partial(self.listeners.fd, slot=slot))
            for slot in range(plan.workers)
        }
        return Generation(number, config, plan, workers), added

    def _start(self, gen: Generation) -> None:
        children = [self._spawn(w) for w in gen.workers.values()]
        if not self._wait_ready(children):
            raise StartupError("workers did not start (see the lines above)")
        self._announce(gen)

    def reload(self) -> str | None:
        """Fork a generation from the file as it is now; keep the running one if the file
        is bad or the new workers do not come up. Returns why it did not reload, or None."""
        old = self.current
        try:
            config = load_config(self.config_path)
            if config.relay.run_dir != old.config.relay.run_dir:
                raise ConfigError("relay.run_dir: cannot change on reload (restart instead)")
            gen, added = self._build(config, old.number + 1)
        except (ConfigError, StartupError) as e:
            log.error("reload rejected, generation %d stays: %s", old.number, e)
            return str(e)
        children = [self._spawn(w) for w in gen.workers.values()]
        if not self._wait_ready(children):
            for c in children:
                c.draining = True
                _kill(c.pid, signal.SIGKILL)
            self.listeners.close(added)
            log.error("reload failed: new workers did not start; generation %d stays", old.number)
            return "the new workers did not start (see the supervisor's log)"
        try:
            # Only once the new workers serve: the kernel must not send devices to a
            # listener or a port the running generation does not have.
            self._manage_rules(old.config, config)
        except StartupError as e:
            for c in children:
                c.draining = True
                _kill(c.pid, signal.SIGKILL)
            self.listeners.close(added)
            log.error("reload rejected, generation %d stays: %s", old.number, e)
            return str(e)
        self.current = gen
        old_pids = []
        for c in self.children.values():
            if c.generation == old.number:
                c.draining = True
                self.aggregator.draining(c.pid)
                _kill(c.pid, signal.SIGTERM)
                old_pids.append(c.pid)
        if config.stats.interval_s > 0:
            # Say "reloaded" only once every new connection goes to the new generation.
            self._wait_drained(old_pids)
        # The old workers keep their own copies until they stop accepting.
        self.listeners.close(self.listeners.unused(gen.plan.addresses, gen.plan.workers))
        self.respawn_at.clear()
        self._announce(gen)
        return None

    def _announce(self, gen: Generation) -> None:
        listening = ", ".join(
            [
                f"{c.name} {c.listen_addr or 'gateway'} -> {c.upstream_addr}"
                for c in gen.config.connectors
            ]
            + [f"{x.name} exit {x.listen_addr} -> {x.target}" for x in gen.config.exits]
        )
        log.info(
            "ready generation=%d workers=%d config=%s: %s",
            gen.number,
            len(gen.workers),
            self.config_path,
            listening,
        )

    # -- workers --------------------------------------------------------------------

    def _spawn(self, spec: WorkerPlan) -> Child:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        # Blocked across fork so that no signal reaches the child while it still runs
        # the supervisor's handlers; the worker unblocks once its own are in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(spec, ready_w)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        os.close(ready_w)
        generation = spec.plan.generation
        child = Child(pid, spec.slot, generation, time.monotonic(), ready_r)
        self.children[pid] = child
        self.aggregator.started(pid, spec.slot, generation, time.time())
        log.debug("worker %d g%d forked, pid %d", spec.slot, generation, pid)
        return child

    def _become_worker(self, spec: WorkerPlan, ready_w: int) -> None:
        try:
            signal.set_wakeup_fd(-1)
            for signum in _HANDLED:
                signal.signal(signum, signal.SIG_DFL)
            # Everything but stdio, this worker's listeners and its ready pipe: the
            # supervisor's ZeroMQ sockets, the run_dir lock, other workers' pipes.
            keep = sorted({0, 1, 2, ready_w, *spec.listen_fds})
            for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
                os.closerange(low + 1, high)
            logs.set_role(f"worker {spec.slot} g{spec.plan.generation}")
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
            self.aggregator.exited(pid, time.time())
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
                self._spawn(self.current.workers[slot])

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
            self.aggregator.draining(c.pid)
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

    # -- control plane --------------------------------------------------------------------

    def _wait_drained(self, pids: list[int]) -> None:
        assert self.plane is not None
        deadline = time.monotonic() + DRAIN_CONFIRM_S
        waiting = set(pids)
        while waiting - self._drained and time.monotonic() < deadline:
            if self.plane.events.poll(max(1, round((deadline - time.monotonic()) * 1000))):
                self._on_worker_messages()
            waiting = {p for p in waiting if p in self.children}  # those that died are done
        if waiting - self._drained:
            log.warning("old workers %s did not confirm draining in time", sorted(waiting))

    def _on_worker_messages(self) -> None:
        assert self.plane is not None
        for message in self.plane.worker_messages():
            if isinstance(message, protocol.WorkerDraining):
                self._drained.add(message.pid)
            elif isinstance(message, protocol.CounterReport):
                self.aggregator.counters(message)
            elif isinstance(message, protocol.ErrorBatch):
                self.aggregator.errors(message.records)
                for r in message.records:
                    self.plane.publish(protocol.TOPIC_LOG, r)
                    log.warning("%s", error_line(r))

    def _on_admin(self) -> None:
        assert self.plane is not None
        request = self.plane.admin_request()
        if request is None:
            return
        reply: protocol.AdminReply
        if isinstance(request, protocol.StatusRequest):
            reply = self._status()
        elif isinstance(request, protocol.StatsRequest):
            reply = self._stats()
        elif isinstance(request, protocol.LogsRequest):
            reply = protocol.LogsReply(
                records=self.aggregator.recent_errors(request.connector, request.limit)
            )
        elif isinstance(request, protocol.ReloadRequest):
            error = self.reload() if not self.stopping else "relaycore is stopping"
            reply = protocol.ReloadReply(
                ok=error is None, generation=self.current.number, error=error or ""
            )
        else:
            level = request.level.lower()
            if level not in ("debug", "info", "warning", "error"):
                reply = protocol.ErrorReply(message=f"unknown log level {request.level!r}")
            else:
                logging.getLogger("relaycore").setLevel(level.upper())
                self.plane.tell_workers(protocol.SetLogLevel(level=level))
                reply = protocol.OkReply()
        self.plane.reply(reply)

    def _status(self) -> protocol.StatusReply:
        return protocol.StatusReply(
            pid=os.getpid(),
            started=self.started,
            config_path=os.path.abspath(self.config_path),
            generation=self.current.number,
            splice=self.current.config.relay.splice,
            ktls=ktls_summary(),
            workers=self.aggregator.live_workers(),
            openssl=openssl_summary(),
        )

    def _stats(self) -> protocol.StatsReport:
        names = self.current.plan.stats_names
        return self.aggregator.stats(names, self.current.number, time.time())

    def _publish_stats(self) -> None:
        if time.monotonic() < self._next_stats or self.plane is None:
            return
        self._next_stats = time.monotonic() + STATS_PERIOD_S
        self.aggregator.retire(time.time())
        names = self.current.plan.stats_names
        report = self.aggregator.stats(names, self.current.number, time.time(), advance=True)
        self.plane.publish(protocol.TOPIC_STATS, report)

    # -- gateway rules -----------------------------------------------------------------

    def _manage_rules(self, old: Config | None, new: Config) -> None:
        """Load the new config's nftables rules if it manages them (and drop the old
        ones if it no longer does). Raises StartupError with nft's words."""
        try:
            if new.gateway is not None and new.gateway.manage_rules:
                gateway.apply_rules(gateway.config_rules(new))
                log.info("nftables rules applied (table inet %s)", gateway.TABLE)
            elif old is not None and old.gateway is not None and old.gateway.manage_rules:
                gateway.remove_rules()
        except RuntimeError as e:
            raise StartupError(f"gateway rules: {e}") from e

    def _remove_rules(self, config: Config) -> None:
        if config.gateway is not None and config.gateway.manage_rules:
            try:
                gateway.remove_rules()
                log.info("nftables rules removed")
            except RuntimeError as e:
                log.error("could not remove the gateway rules: %s", e)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in _HANDLED:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.pending.append(signum)


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
