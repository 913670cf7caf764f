"""The supervisor: binds, forks workers, respawns them, reloads, drains.

It never touches a client byte. Its loop sleeps in one poll: a self-pipe that signal
handlers write to (signal.set_wakeup_fd), ready pipes, ZeroMQ and metrics sockets.

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
from dataclasses import dataclass, replace

import zmq

from relaycore import gateway, hostcheck, protocol, rundir, tls
from relaycore.addresses import parse_host_port
from relaycore.capabilities import ktls_summary, openssl_summary
from relaycore.config import Config, load_config
from relaycore.errors import ConfigError, StartupError, WorkerFailedError
from relaycore.notify import Notifier
from relaycore.plan import Plan, WorkerPlan, compile_plan
from relaycore.render import error_line, listening
from relaycore.watch import ConfigWatch, drain, file_sha256

from .aggregate import Aggregator
from .children import Child, describe_exit, exited, fork_worker, kill, read_ready, serving_slots
from .control import ControlPlane
from .listeners import ListenerKey, ListenerSet
from .metrics import MetricsServer, render, render_config
from .names import NameWatcher
from .restart import MAX_FAST_CRASHES, RestartPolicy

log = logging.getLogger("relaycore.supervisor")

READY_TIMEOUT_S = 10.0
STATS_PERIOD_S = 1.0  # how often stats are published (and Prometheus sees new numbers)
DRAIN_CONFIRM_S = 2.0  # how long a reload waits for the old workers to stop accepting
KILL_GRACE_S = 5.0
ADMIN_BATCH = 64  # admin requests answered per wake of the loop
_HANDLED = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Generation:
    number: int
    config: Config
    plan: Plan
    workers: dict[int, WorkerPlan]  # by slot


class Supervisor:
    def __init__(
        self, config_path: str, config: Config, *, watch: ConfigWatch | None = None
    ) -> None:
        # Before anything is opened or forked: the workers inherit the limit.
        hostcheck.raise_fd_limit()
        self.config_path = config_path
        self.watch = watch  # --watch: reload when the file's content changes
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
        self.names: NameWatcher | None = None
        self._next_stats = 0.0
        self._drained: set[int] = set()
        self._notice_quiet: dict[tuple[str, str, str], float] = {}  # notice key -> until
        self.notify = Notifier()
        # The config in force, for /metrics: its bytes' SHA-256, when it was loaded, and
        # whether the latest reload took.
        self.config_sha256 = _config_sha256(config_path)
        self.config_loaded = time.time()
        self.last_reload_ok = True
        self.reloading = False  # a reload is bringing up its generation (/readyz says 503)
        self.serving = False  # the first generation came up
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
            self.names = NameWatcher(config.relay.resolve_interval_s, self._wake_w)
            self.names.watch(self.current.plan)
            self.names.start()
            if config.stats.prometheus is not None:
                self.metrics = MetricsServer(
                    parse_host_port(config.stats.prometheus, require_ip=True),
                    lambda: (
                        render(
                            self._stats(),
                            self.aggregator.reports_dropped(),
                            self.aggregator.worker_totals(),
                        )
                        + render_config(self.config_sha256, self.last_reload_ok, self.config_loaded)
                    ),
                )
                self.metrics.add_page("/healthz", self._healthz)
                self.metrics.add_page("/readyz", self._readyz)
            self._start(self.current)
            self.serving = True
            self.notify.ready(self._status_line())
            while not (self.stopping and not self.children):
                self._wait_events()
                self._handle_signals()
                self._respawn_due()
                self._publish_stats()
        except BaseException:
            self._kill_all(signal.SIGKILL)
            raise
        finally:
            if self.names is not None:
                self.names.stop()
            self._remove_rules(self.current.config)
            self.listeners.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.plane is not None:
                self.plane.close()
            self.notify.close()
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
        metrics_fds = self._metrics_fds()
        for fd in metrics_fds:
            poller.register(fd, zmq.POLLIN)
        watch_fd = self.watch.fileno() if self.watch is not None else None
        if watch_fd is not None:
            poller.register(watch_fd, zmq.POLLIN)
        try:
            ready = dict(poller.poll(timeout_ms))
        except zmq.ZMQError as e:
            if e.errno == errno.EINTR:
                return
            raise
        if self._wake_r in ready:
            drain(self._wake_r)
            self._on_names()
        for fd, child in starting.items():
            if fd in ready:
                read_ready(child)
        if self.plane.events in ready:
            self._on_worker_messages()
        if self.plane.admin in ready:
            # Several per wake: requests queued by many peers do not wait a poll each.
            for _ in range(ADMIN_BATCH):
                self._on_admin()
                if not self.plane.admin.poll(0, zmq.POLLIN):
                    break
        self._on_metrics(metrics_fds, set(ready))
        if self.watch is not None and (watch_fd is None or watch_fd in ready):
            self._on_config_change()

    def _on_config_change(self) -> None:
        assert self.watch is not None
        if self.watch.changed() and not self.stopping:
            log.info("config file changed: reloading %s", self.config_path)
            self.reload()

    def _metrics_fds(self) -> list[int]:
        return self.metrics.fds() if self.metrics is not None else []

    def _on_metrics(self, fds: list[int], readable: set[int]) -> None:
        # Also while a start or a reload waits for its workers, so that /healthz answers
        # (a liveness probe must not kill a relay whose reload takes a while).
        if self.metrics is not None:
            for fd in fds:
                if fd in readable:
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
        hostcheck.log_warnings(config)
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
        is bad or the new workers do not come up. Returns why it did not reload, or None.

        systemd hears RELOADING=1 now and READY=1 when it is over, whatever the outcome;
        /readyz says 503 in between."""
        self.reloading = True
        self.notify.reloading()
        if self.watch is not None:
            self.watch.seen()  # a SIGHUP after an edit: the watch need not reload again
        sha256 = _config_sha256(self.config_path)
        try:
            error = self._reload()
            self.last_reload_ok = error is None
            if error is None:
                self.config_sha256, self.config_loaded = sha256, time.time()
            return error
        finally:
            self.reloading = False
            self.notify.ready(self._status_line())

    def _reload(self) -> str | None:
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
                kill(c.pid, signal.SIGKILL)
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
                kill(c.pid, signal.SIGKILL)
            self.listeners.close(added)
            log.error("reload rejected, generation %d stays: %s", old.number, e)
            return str(e)
        self.current = gen
        if self.names is not None:
            self.names.watch(gen.plan)
        old_pids = []
        for c in self.children.values():
            if c.generation == old.number:
                c.draining = True
                self.aggregator.draining(c.pid)
                kill(c.pid, signal.SIGTERM)
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
        log.info(
            "ready generation=%d workers=%d config=%s: %s",
            gen.number,
            len(gen.workers),
            self.config_path,
            listening(gen.config),
        )

    # -- workers --------------------------------------------------------------------

    def _spawn(self, spec: WorkerPlan) -> Child:
        if self.names is not None and spec.plan.generation == self.names.generation:
            # A respawned worker dials what its name resolves to now, not at reload.
            spec = replace(spec, plan=spec.plan.with_addresses(self.names.current()))
        child = fork_worker(spec, _HANDLED)
        self.children[child.pid] = child
        self.aggregator.started(child.pid, child.slot, child.generation, time.time())
        return child

    def _wait_ready(self, children: list[Child]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while any(c.ready_fd >= 0 for c in children):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
            fds = {c.ready_fd: c for c in children if c.ready_fd >= 0}
            metrics_fds = self._metrics_fds()
            try:
                readable, _, _ = select.select([*fds, *metrics_fds], [], [], timeout)
            except InterruptedError:
                continue
            for fd in readable:
                if fd in fds:
                    read_ready(fds[fd])
            self._on_metrics(metrics_fds, set(readable))
        return all(c.ready for c in children)

    def _reap(self) -> None:
        for pid, status in exited():
            child = self.children.pop(pid, None)
            if child is None:
                continue
            if child.ready_fd >= 0:
                os.close(child.ready_fd)
            self.aggregator.exited(pid, time.time())
            how = describe_exit(status)
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
        self.notify.stopping(f"stopping: draining {len(self.children)} workers")
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
            kill(pid, signum)

    # -- control plane --------------------------------------------------------------------

    def _wait_drained(self, pids: list[int]) -> None:
        assert self.plane is not None
        deadline = time.monotonic() + DRAIN_CONFIRM_S
        waiting = set(pids)
        while waiting - self._drained and time.monotonic() < deadline:
            poller = zmq.Poller()
            poller.register(self.plane.events, zmq.POLLIN)
            metrics_fds = self._metrics_fds()
            for fd in metrics_fds:
                poller.register(fd, zmq.POLLIN)
            ready = dict(poller.poll(max(1, round((deadline - time.monotonic()) * 1000))))
            if self.plane.events in ready:
                self._on_worker_messages()
            self._on_metrics(metrics_fds, set(ready))
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
                self._log_events(self.aggregator.certs_seen(message, self._upstreams()))
            elif isinstance(message, protocol.ErrorBatch):
                self._log_events(message.records)

    def _log_events(self, records: list[protocol.ErrorRecord]) -> None:
        """Into the error log, onto the stats socket (topic log), and one line each: a
        WARNING per failure, an INFO per notice (once a while per connector and upstream,
        not once per worker that saw it)."""
        assert self.plane is not None
        self.aggregator.errors(records)
        now = time.monotonic()
        for r in records:
            self.plane.publish(protocol.TOPIC_LOG, r)
            if r.cause not in protocol.NOTICE_CAUSES:
                log.warning("%s", error_line(r))
            elif self._notice_quiet.get(r.key, 0.0) <= now:
                self._notice_quiet[r.key] = now + protocol.NOTICE_QUIET_S
                log.info("%s", error_line(r))

    def _upstreams(self) -> dict[str, str]:
        return {c.name: c.upstream for c in self.current.config.connectors}

    def _on_names(self) -> None:
        """Hand the workers the addresses a round of lookups found; log a name that
        failed to resolve."""
        if self.names is None or self.plane is None:
            return
        tell, failed = self.names.messages(time.time())
        for message in tell:
            self.plane.tell_workers(message)
        self.aggregator.errors(failed)
        for record in failed:
            self.plane.publish(protocol.TOPIC_LOG, record)

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
            io=self.current.config.relay.io,
            ktls=ktls_summary(),
            workers=self.aggregator.live_workers(),
            certs={name: view.cert for name, view in self.aggregator.certs.items()},
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
        warn_days = {c.name: c.cert_warn_days for c in self.current.config.connectors if c.tls}
        self._log_events(self.aggregator.certs_expiring(time.time(), warn_days, self._upstreams()))
        names = self.current.plan.stats_names
        report = self.aggregator.stats(names, self.current.number, time.time(), advance=True)
        self.plane.publish(protocol.TOPIC_STATS, report)
        if not self.stopping and not self.reloading:
            self.notify.status(self._status_line(report))

    # -- health -------------------------------------------------------------------------

    def not_ready(self) -> str | None:
        """Why the relay is not ready (/readyz 503, with this reason), or None: the
        generation in force has every worker slot accepting, and no start, reload or stop
        is under way."""
        if self.stopping:
            return "stopping"
        if not self.serving:
            return "starting"
        if self.reloading:
            return "reloading: the new generation is not serving yet"
        gen = self.current
        missing = sorted(set(gen.workers) - serving_slots(self.children.values(), gen.number))
        if missing:
            return f"worker {missing[0]} of generation {gen.number} is not accepting"
        return None

    def _healthz(self) -> tuple[int, str]:
        # Answering at all is the news: the supervisor's loop turns.
        return 200, f"alive: pid {os.getpid()}, generation {self.current.number}\n"

    def _readyz(self) -> tuple[int, str]:
        why = self.not_ready()
        if why is not None:
            return 503, f"not ready: {why}\n"
        return (
            200,
            f"ready: generation {self.current.number}, {len(self.current.workers)} workers\n",
        )

    def _status_line(self, report: protocol.StatsReport | None = None) -> str:
        """systemd's STATUS=: what `systemctl status relaycore` shows under the unit."""
        if report is None:
            report = self._stats()
        active = sum(c.active for c in report.connectors)
        return (
            f"generation {self.current.number}, {len(report.workers)} workers, {active} connections"
        )

    # -- gateway rules -----------------------------------------------------------------

    def _manage_rules(self, old: Config | None, new: Config) -> None:
        """The nftables rules of the new config, if it manages them (relaycore.gateway).
        Raises StartupError with nft's words."""
        try:
            if gateway.switch_rules(old, new):
                log.info("nftables rules applied (table inet %s)", gateway.TABLE)
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


def _config_sha256(path: str) -> str:
    digest = file_sha256(path)
    return digest.hex() if digest is not None else ""
