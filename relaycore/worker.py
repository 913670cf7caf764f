"""The worker process: runs one relaycore._core.Loop on inherited listeners.

Python runs here only between turns of the loop (every TICK_MS): to notice signals,
to pass on error records, and to drain on SIGTERM. The supervisor forks this process and
calls `serve()` with the worker's plan (relaycore.plan), which never returns.
"""

import logging
import os
import signal
import time
from types import FrameType

from relaycore import _core
from relaycore.capabilities import ktls_summary
from relaycore.identity import format_pin
from relaycore.plan import (
    ExitRoute,
    PassthroughRoute,
    RejectRoute,
    Route,
    UpstreamRoute,
    WorkerPlan,
)
from relaycore.protocol import ControlMessage, ErrorRecord, SetLogLevel, UpstreamCert
from relaycore.render import error_line
from relaycore.reporting import ControlSubscriber, Reporter, merge_records
from relaycore.upkeep import Upkeep

log = logging.getLogger("relaycore.worker")

TICK_MS = 200


class LoopUnavailable(Exception):
    """The worker's loop cannot be made on this kernel as configured."""


def serve(plan: WorkerPlan, ready_fd: int) -> None:
    """Run the worker until it has drained after SIGTERM, then exit the process."""
    code = 1
    try:
        _serve(plan, ready_fd)
        code = 0
    except LoopUnavailable as exc:
        log.error("worker cannot start: %s", exc)
    except BaseException:
        log.exception("worker failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _serve(plan: WorkerPlan, ready_fd: int) -> None:
    drain = _DrainFlag()
    signal.signal(signal.SIGTERM, drain.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The supervisor forked us with these blocked; a SIGTERM that came meanwhile is
    # delivered now, to our handler, and the worker drains at once.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    _core.set_parent_death_signal(signal.SIGTERM)

    shared = plan.plan
    try:
        loop = _core.Loop(
            max_connections=shared.loop.max_connections,
            splice=shared.loop.splice,
            io=shared.loop.io,
            connect_timeout_ms=shared.loop.connect_timeout_ms,
            handshake_timeout_ms=shared.loop.handshake_timeout_ms,
            idle_timeout_ms=shared.loop.idle_timeout_ms,
        )
    except OSError as exc:
        # The kernel refused what the config asks (io = "io_uring" where io_uring is
        # disabled): the operator's to fix, said in one line, not a traceback.
        raise LoopUnavailable(exc.strerror or str(exc)) from None
    apply_plan(loop, plan)
    if plan.uses_tls:
        # Once per worker: which connections will be offloaded (ktls = auto); the
        # per-connection outcome is counted (ktls_conns, ktls_declined).
        log.info("kernel TLS %s", ktls_summary())
    reporter = None
    control = None
    if shared.stats_interval_s > 0:
        reporter = Reporter(shared.run_dir, plan.slot, shared.generation, shared.stats_interval_s)
    elif shared.resolve_interval_s > 0 and shared.names():
        # No reports, but names move: the supervisor's lookups still reach this worker.
        control = ControlSubscriber(shared.run_dir)
    # Ready only once everything the worker holds exists (its fds included).
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    # Python's turn comes every tick; a report interval shorter than that shortens it.
    interval_ms = round(shared.stats_interval_s * 1000)
    tick_ms = min(TICK_MS, max(10, interval_ms)) if reporter else TICK_MS
    deadline = None
    upkeep = Upkeep()
    try:
        while True:
            loop.run(tick_ms)
            upkeep.tick(loop.counters())
            records = _error_records(loop, plan)
            if reporter is None:
                # One line per (connector, cause, upstream) per tick, with a count: a
                # flood of refused connects is a few lines, not thousands.
                for record in merge_records({}, records).values():
                    log.warning("%s", error_line(record))
                if control is not None:
                    _obey(loop, plan, control.messages())
            else:
                reporter.collect(records)
                _obey(loop, plan, reporter.control())
                if reporter.due():
                    reporter.report(
                        _route_counters(loop, plan),
                        _worker_counters(loop, reporter, upkeep),
                        _route_certs(loop, plan),
                    )
            if drain.requested and deadline is None:
                loop.stop_accepting()
                if reporter is not None:
                    reporter.draining()
                deadline = time.monotonic() + shared.drain_timeout_s
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
            reporter.collect(_error_records(loop, plan))
            reporter.bye(
                _route_counters(loop, plan),
                _worker_counters(loop, reporter, upkeep),
                _route_certs(loop, plan),
            )
            reporter.close()
        if control is not None:
            control.close()
        loop.close()
        upkeep.close()
    log.info(
        "exiting: accepted=%d bytes_in=%d bytes_out=%d spliced=%d",
        counters["accepted"],
        counters["bytes_in"],
        counters["bytes_out"],
        counters["bytes_spliced"],
    )


def _obey(loop: _core.Loop, plan: WorkerPlan, messages: list[ControlMessage]) -> None:
    """Act on what the supervisor said, between two turns of the loop."""
    for message in messages:
        if isinstance(message, SetLogLevel):
            logging.getLogger("relaycore").setLevel(message.level.upper())
        elif message.generation == plan.plan.generation:
            # Connections in flight keep their sockets; new ones dial these.
            try:
                loop.set_upstream_addresses(message.route, message.addresses)
            except ValueError as e:
                log.warning("ignoring addresses for route %d: %s", message.route, e)
                continue
            log.debug("route %d: upstream addresses %s", message.route, message.addresses)


def apply_plan(loop: _core.Loop, plan: WorkerPlan) -> None:
    """Give the loop the plan's routes, match table and listeners: the one place where a
    plan becomes loop calls. Routes go in route-id order, so each gets its id."""
    for route_id, route in enumerate(plan.plan.routes):
        index = _add_route(loop, route)
        assert index == route_id, f"route {route.name}: the loop made it {index}, not {route_id}"
        if isinstance(route, ExitRoute):
            for network, port in route.destinations:
                loop.allow_destination(route_id, network, port)
        if isinstance(route, UpstreamRoute | ExitRoute) and len(route.addresses) > 1:
            loop.set_upstream_addresses(route_id, list(route.addresses))
    g = plan.plan.gateway
    if g is not None:
        loop.set_gateway(g.default_route, g.reject_route)
        for m in g.matches:
            loop.add_match(m.route, m.network, m.port)
        for fd in plan.gateway_listeners:
            loop.add_gateway_listener(fd)
    for fd, route_id in plan.listeners:
        loop.add_listener(fd, route_id)


def _worker_counters(loop: _core.Loop, reporter: Reporter, upkeep: Upkeep) -> dict[str, int]:
    return {**loop.worker_counters(), "reports_dropped": reporter.dropped, **upkeep.counters()}


class _DrainFlag:
    requested = False

    def set(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _add_route(loop: _core.Loop, route: Route) -> int:
    """Add `route` as the loop's next route; returns the id the loop gave it."""
    match route:
        case UpstreamRoute():
            return loop.add_upstream(
                route.host,
                route.port,
                route.tls,
                proxy_protocol=route.proxy_protocol,
                accept_proxy=route.accept_proxy,
                http_host=route.http_host,
            )
        case PassthroughRoute():
            return loop.add_passthrough()
        case RejectRoute():
            return loop.add_reject()
        case ExitRoute():
            return loop.add_exit(
                route.tls, route.target, route.host, route.port, accept_proxy=route.accept_proxy
            )


def _route_counters(loop: _core.Loop, plan: WorkerPlan) -> dict[str, dict[str, int]]:
    """{route name: its counters in this worker}."""
    return {
        route.name: counters
        for route, counters in zip(plan.plan.routes, loop.route_counters(), strict=True)
    }


def _route_certs(loop: _core.Loop, plan: WorkerPlan) -> dict[str, UpstreamCert]:
    """{connector name: the certificate its upstream presented}, for those with one."""
    return {
        route.name: UpstreamCert(
            pin=format_pin(seen["pin"]),
            not_after=seen["not_after"],
            issuer=seen["issuer"],
            subject=seen["subject"],
            seen=seen["seen"],
            key_changes=seen["key_changes"],
            previous_pin=format_pin(seen["previous_pin"]) if seen["previous_pin"] else "",
        )
        for route, seen in zip(plan.plan.routes, loop.route_certs(), strict=True)
        if seen is not None
    }


def _error_records(loop: _core.Loop, plan: WorkerPlan) -> list[ErrorRecord]:
    """The loop's error events since the last call, each as an ErrorRecord of count 1:
    the one place where a failure from the loop becomes the record that the supervisor,
    `relaycore logs` and every log line carry."""
    now = time.time()
    return [
        ErrorRecord(
            connector=plan.plan.routes[e.route].name,
            cause=e.cause,
            upstream=e.upstream,
            reason=e.reason,
            count=1,
            first=now,
            last=now,
            client=e.client,
            destination=e.destination,
            worker=plan.slot,
            generation=plan.plan.generation,
        )
        for e in loop.pop_errors()
    ]
