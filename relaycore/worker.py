"""The worker process: runs one relaycore._core.Loop on inherited listeners.

Python runs here only between turns of the loop (every TICK_MS): to notice signals,
to log error events, and to drain on SIGTERM. The supervisor forks this process and
calls `serve()`, which never returns.
"""

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from relaycore import _core
from relaycore.capabilities import ktls_unavailable
from relaycore.gateway import PASSTHROUGH
from relaycore.protocol import SetLogLevel
from relaycore.reporting import ErrorEvent, Reporter

log = logging.getLogger("relaycore.worker")

TICK_MS = 200


# Names of the gateway's own routes in counters and error events (not valid connector
# names, so they cannot clash).
PASSTHROUGH_NAME = "(passthrough)"
GATEWAY_NAME = "(gateway)"


@dataclass(frozen=True)
class Upstream:
    """Connector `connector_id`'s upstream, resolved, with its TLS context (None: plain)."""

    connector_id: int
    name: str
    ip: str
    port: int
    tls: _core.TLSClientContext | None


@dataclass(frozen=True)
class ExitSpec:
    """A tunnel exit: TLS from entry nodes on its listeners, relayed to a target."""

    connector_id: int
    name: str
    tls: _core.TLSServerContext
    target: str  # "fixed", "socks5" or "http-connect"
    host: str  # fixed: the target's IP, resolved at start; proxies: ""
    port: int  # fixed: the target's port; proxies: 0
    # Proxies: the destinations allowed, (network, port or 0 = any). Empty: the default
    # policy of the loop (anything but loopback, link-local and unspecified).
    destinations: Sequence[tuple[str, int]]
    listen_fds: Sequence[int]


def exit_connector_id(connectors: int, index: int) -> int:
    """The connector id of the `index`-th exit: after the connectors and the gateway's two
    pseudo-connectors (reserved whether or not there is a gateway), so ids never clash."""
    return connectors + 2 + index


@dataclass(frozen=True)
class GatewaySpec:
    listen_fds: Sequence[int]
    # (connector_id or gateway.PASSTHROUGH, network, port), most specific first
    matches: Sequence[tuple[int, str, int]]
    default: int | None  # connector_id, or None: reject


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, fixed at fork time (one config generation)."""

    slot: int
    generation: int
    upstreams: Sequence[Upstream]  # index = connector_id
    listeners: Sequence[tuple[int, int]]  # (listen fd, connector_id)
    gateway: GatewaySpec | None
    max_connections: int
    splice: str
    connect_timeout_ms: int
    handshake_timeout_ms: int
    idle_timeout_ms: int
    drain_timeout_s: float
    run_dir: str
    stats_interval_s: float  # 0: no reports; the worker logs its error events itself
    exits: Sequence[ExitSpec] = ()

    @property
    def listen_fds(self) -> list[int]:
        gateway = list(self.gateway.listen_fds) if self.gateway is not None else []
        exits = [fd for x in self.exits for fd in x.listen_fds]
        return [fd for fd, _ in self.listeners] + gateway + exits


def serve(spec: WorkerSpec, ready_fd: int) -> None:
    """Run the worker until it has drained after SIGTERM, then exit the process."""
    code = 1
    try:
        _serve(spec, ready_fd)
        code = 0
    except BaseException:
        log.exception("worker failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _serve(spec: WorkerSpec, ready_fd: int) -> None:
    drain = _DrainFlag()
    signal.signal(signal.SIGTERM, drain.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The supervisor forked us with these blocked; a SIGTERM that came meanwhile is
    # delivered now, to our handler, and the worker drains at once.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    _core.set_parent_death_signal(signal.SIGTERM)

    loop = _core.Loop(
        max_connections=spec.max_connections,
        splice=spec.splice,
        connect_timeout_ms=spec.connect_timeout_ms,
        handshake_timeout_ms=spec.handshake_timeout_ms,
        idle_timeout_ms=spec.idle_timeout_ms,
    )
    names = _add_routes(loop, spec)
    if spec.exits or any(u.tls is not None for u in spec.upstreams):
        # Once per worker: whether TLS 1.2 connections will be offloaded (ktls = auto);
        # the per-connection outcome is counted (ktls_conns, ktls_declined).
        missing = ktls_unavailable()
        log.info("kernel TLS %s", f"unavailable ({missing})" if missing else "available")
    reporter = None
    if spec.stats_interval_s > 0:
        reporter = Reporter(spec.run_dir, spec.slot, spec.generation, names, spec.stats_interval_s)
    # Ready only once everything the worker holds exists (its fds included).
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    # Python's turn comes every tick; a report interval shorter than that shortens it.
    tick_ms = min(TICK_MS, max(10, round(spec.stats_interval_s * 1000))) if reporter else TICK_MS
    deadline = None
    try:
        while True:
            loop.run(tick_ms)
            if reporter is None:
                _log_errors(_pop_errors(loop), names)
            else:
                reporter.collect(_pop_errors(loop))
                for message in reporter.control():
                    if isinstance(message, SetLogLevel):
                        logging.getLogger("relaycore").setLevel(message.level.upper())
                if reporter.due():
                    reporter.report(_route_counters(loop), _worker_counters(loop, reporter))
            if drain.requested and deadline is None:
                loop.stop_accepting()
                if reporter is not None:
                    reporter.draining()
                deadline = time.monotonic() + spec.drain_timeout_s
                log.info("draining %d connections", loop.active)
            if deadline is not None:
                if loop.active == 0:
                    break
                if time.monotonic() >= deadline:
                    log.warning("drain timeout: aborting %d connections", loop.active)
                    break
    finally:
        counters = loop.counters()
        if reporter is not None:
            reporter.collect(_pop_errors(loop))
            reporter.bye(_route_counters(loop), _worker_counters(loop, reporter))
            reporter.close()
        loop.close()
    log.info(
        "exiting: accepted=%d bytes_in=%d bytes_out=%d spliced=%d",
        counters["accepted"],
        counters["bytes_in"],
        counters["bytes_out"],
        counters["bytes_spliced"],
    )


def _add_routes(loop: _core.Loop, spec: WorkerSpec) -> dict[int, str]:
    """Give the loop its routes and listeners; returns the name of each route id."""
    names: dict[int, str] = {}
    route = {}
    for u in spec.upstreams:
        route[u.connector_id] = loop.add_upstream(u.ip, u.port, u.tls)
        names[route[u.connector_id]] = u.name
    if spec.gateway is not None:
        route[PASSTHROUGH] = loop.add_passthrough()
        names[route[PASSTHROUGH]] = PASSTHROUGH_NAME
        reject = loop.add_reject()
        names[reject] = GATEWAY_NAME
        g = spec.gateway
        loop.set_gateway(reject if g.default is None else route[g.default], reject)
        for target, network, port in g.matches:
            loop.add_match(route[target], network, port)
        for fd in g.listen_fds:
            loop.add_gateway_listener(fd)
    for fd, connector_id in spec.listeners:
        loop.add_listener(fd, route[connector_id])
    for x in spec.exits:
        names[_add_exit(loop, x)] = x.name
    return names


def _add_exit(loop: _core.Loop, x: ExitSpec) -> int:
    route = loop.add_exit(x.tls, x.target, x.host, x.port)
    for network, port in x.destinations:
        loop.allow_destination(route, network, port)
    for fd in x.listen_fds:
        loop.add_listener(fd, route)
    return route


def _route_counters(loop: _core.Loop) -> dict[int, dict[str, int]]:
    return dict(enumerate(loop.route_counters()))


def _pop_errors(loop: _core.Loop) -> list[ErrorEvent]:
    # The events as reporting's tuples, keyed by route id (H2's rewrite takes ErrorEvent).
    return [
        (e.route, e.cause, e.errno, e.client, e.upstream, e.reason, e.destination)
        for e in loop.pop_errors()
    ]


def _worker_counters(loop: _core.Loop, reporter: Reporter) -> dict[str, int]:
    return {**loop.worker_counters(), "reports_dropped": reporter.dropped}


class _DrainFlag:
    requested = False

    def set(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _log_errors(events: list[ErrorEvent], names: dict[int, str]) -> None:
    # One line per (connector, cause, upstream, reason) per tick, with a count: a flood
    # of refused connects is a few lines, not thousands.
    if not events:
        return
    counts: Counter[tuple[int, str, str, str]] = Counter()
    last_client: dict[tuple[int, str, str, str], str] = {}
    for connector_id, cause, _err, client, upstream, reason, _destination in events:
        key = (connector_id, cause, upstream, reason)
        counts[key] += 1
        last_client[key] = client
    for key, count in counts.items():
        connector_id, cause, upstream, reason = key
        log.warning(
            "connector %s: %s: upstream %s: %s%s (client %s)",
            names.get(connector_id, connector_id),
            cause,
            upstream,
            reason,
            f" (x{count})" if count > 1 else "",
            last_client[key],
        )
