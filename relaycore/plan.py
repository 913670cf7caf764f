"""Config -> what each worker runs: the one compile step between the file and the loop.

`compile_plan` runs in the supervisor, once per config generation and before any fork:
it resolves upstream and fixed exit target names (so a reload picks up DNS changes),
builds the TLS contexts (a certificate OpenSSL refuses stops the start, or the reload,
with the key at fault) and gives every route its id. `Plan.for_slot` then adds one worker
slot's listening fds. The worker applies its WorkerPlan to its Loop in one place
(relaycore.worker.apply_plan) and names counters and error events from `routes`; nothing
else turns a config into loop calls.

Route ids are the loop's: dense from 0, in the order the worker adds the routes, and each
route has the name it goes by in counters, stats and error records:

    0 .. C-1        the connectors, in config order
    C, C+1          with a [gateway] only: PASSTHROUGH_ROUTE "(passthrough)", relaying
                    plain TCP to the original destination, and REJECT_ROUTE "(gateway)",
                    a reset and a no_route event
    then            the exits, in config order

Connectors come first so that connector[k] of the file is route k; the gateway's two
routes follow them because they complete the connectors' match table (a match names a
connector or passthrough, never an exit); exits come last because nothing refers to
them but their own listeners.
"""

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from relaycore import _core, gateway, tls
from relaycore.addresses import HostPort
from relaycore.config import Config
from relaycore.errors import StartupError
from relaycore.gateway import PASSTHROUGH_ROUTE, REJECT_ROUTE


@dataclass(frozen=True)
class UpstreamRoute:
    """A connector: relay to its upstream, over TLS made with `tls` (None: plain TCP)."""

    name: str
    host: str  # an IP literal: resolved when the plan was made
    port: int
    tls: _core.TLSClientContext | None


@dataclass(frozen=True)
class PassthroughRoute:
    """Gateway: plain TCP to each connection's original destination."""

    name: str = PASSTHROUGH_ROUTE


@dataclass(frozen=True)
class RejectRoute:
    """Gateway: a reset and a no_route event, for what nothing serves."""

    name: str = REJECT_ROUTE


@dataclass(frozen=True)
class ExitRoute:
    """A tunnel exit: TLS from entry nodes, authenticated by `tls`, relayed to a target."""

    name: str
    tls: _core.TLSServerContext
    target: Literal["fixed", "socks5", "http-connect"]
    host: str  # fixed: the target's IP, resolved when the plan was made; proxies: ""
    port: int  # fixed: the target's port; proxies: 0
    # Proxies: the destinations allowed, (network, port or 0 = any). Empty: the default
    # policy of the loop (anything but loopback, link-local, unspecified and the exit host's
    # own addresses).
    destinations: tuple[tuple[str, int], ...]


Route = UpstreamRoute | PassthroughRoute | RejectRoute | ExitRoute


@dataclass(frozen=True)
class Match:
    """Original destinations in `network` (and `port`, 0 = any) take route `route`."""

    route: int
    network: str
    port: int


@dataclass(frozen=True)
class GatewayPlan:
    """How the gateway listeners pick a route for each intercepted connection."""

    default_route: int  # for an original destination no match covers
    reject_route: int  # for a connection that was not redirected
    matches: tuple[Match, ...]  # most specific first, as the loop tries them
    listen: tuple[HostPort, ...]


@dataclass(frozen=True)
class LoopSettings:
    """The Loop's keyword arguments."""

    max_connections: int
    splice: str
    connect_timeout_ms: int
    handshake_timeout_ms: int
    idle_timeout_ms: int


@dataclass(frozen=True)
class Plan:
    """One config generation, the same for every worker slot but the listening fds."""

    generation: int
    workers: int
    routes: tuple[Route, ...]  # index = route id
    listen: tuple[tuple[HostPort, int], ...]  # (address, route id): connectors', exits'
    gateway: GatewayPlan | None
    loop: LoopSettings
    drain_timeout_s: float
    run_dir: str
    stats_interval_s: float  # 0: no reports; each worker logs its error records itself

    @property
    def addresses(self) -> list[HostPort]:
        """Every address to bind, once per worker slot."""
        gateway_addrs = list(self.gateway.listen) if self.gateway is not None else []
        connectors = [a for a, r in self.listen if isinstance(self.routes[r], UpstreamRoute)]
        exits = [a for a, r in self.listen if isinstance(self.routes[r], ExitRoute)]
        return connectors + gateway_addrs + exits

    @property
    def stats_names(self) -> list[str]:
        """What stats list first, in the config's order: connectors, then exits (the
        gateway's routes follow when they have counted something, as any other name)."""
        return [r.name for r in self.routes if isinstance(r, UpstreamRoute | ExitRoute)]

    def for_slot(self, slot: int, fd: Callable[[HostPort], int]) -> "WorkerPlan":
        """Worker `slot`'s plan; `fd` gives that slot's socket bound to an address."""
        return WorkerPlan(
            slot=slot,
            plan=self,
            listeners=tuple((fd(addr), route) for addr, route in self.listen),
            gateway_listeners=tuple(
                fd(addr) for addr in (self.gateway.listen if self.gateway is not None else ())
            ),
        )


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one worker needs, fixed at fork time."""

    slot: int
    plan: Plan
    listeners: tuple[tuple[int, int], ...]  # (listening fd, route id)
    gateway_listeners: tuple[int, ...]  # listening fds; the match table picks the route

    @property
    def listen_fds(self) -> list[int]:
        return [fd for fd, _ in self.listeners] + list(self.gateway_listeners)

    @property
    def uses_tls(self) -> bool:
        return any(
            isinstance(r, ExitRoute) or (isinstance(r, UpstreamRoute) and r.tls is not None)
            for r in self.plan.routes
        )


def compile_plan(config: Config, generation: int) -> Plan:
    """The plan of `config` as generation `generation`. Raises ConfigError (a TLS setting
    OpenSSL refuses) or StartupError (a name that does not resolve, kTLS required where
    the kernel has none)."""
    upstreams = [resolve(f"connector {c.name}", c.upstream_addr) for c in config.connectors]
    client_contexts = [
        tls.client_context(c, k) if c.tls else None for k, c in enumerate(config.connectors)
    ]
    exit_targets = [
        ("", 0) if x.target_addr is None else resolve(f"exit {x.name}", x.target_addr)
        for x in config.exits
    ]
    server_contexts = [tls.server_context(x, k) for k, x in enumerate(config.exits)]
    tls.check_ktls_requirements(config.connectors, config.exits)

    routes: list[Route] = [
        UpstreamRoute(c.name, host, port, context)
        for c, (host, port), context in zip(
            config.connectors, upstreams, client_contexts, strict=True
        )
    ]
    gateway_plan = None
    if config.gateway is not None:
        routes += [PassthroughRoute(), RejectRoute()]
        ids = {r.name: k for k, r in enumerate(routes)}
        gateway_plan = GatewayPlan(
            default_route=ids[REJECT_ROUTE]
            if config.gateway.default == "reject"
            else ids[config.gateway.default],
            reject_route=ids[REJECT_ROUTE],
            matches=tuple(
                Match(ids[m.target], str(m.network), m.port) for m in gateway.match_rules(config)
            ),
            listen=tuple(config.gateway.listen_addrs),
        )
    listen = [
        (c.listen_addr, k) for k, c in enumerate(config.connectors) if c.listen_addr is not None
    ]
    for x, (host, port), context in zip(config.exits, exit_targets, server_contexts, strict=True):
        listen.append((x.listen_addr, len(routes)))
        routes.append(
            ExitRoute(
                name=x.name,
                tls=context,
                target=x.target_kind,
                host=host,
                port=port,
                destinations=tuple((str(net), port) for net, port in x.destination_networks),
            )
        )
    return Plan(
        generation=generation,
        workers=config.relay.workers,
        routes=tuple(routes),
        listen=tuple(listen),
        gateway=gateway_plan,
        loop=LoopSettings(
            max_connections=config.relay.max_connections,
            splice=config.relay.splice,
            connect_timeout_ms=round(config.timeouts.connect_s * 1000),
            handshake_timeout_ms=round(config.timeouts.handshake_s * 1000),
            idle_timeout_ms=round(config.timeouts.idle_s * 1000),
        ),
        drain_timeout_s=config.relay.drain_timeout_s,
        run_dir=config.relay.run_dir,
        stats_interval_s=config.stats.interval_s,
    )


def resolve(what: str, addr: HostPort) -> tuple[str, int]:
    """`addr` as (IP literal, port), the first address getaddrinfo gives. `what` names the
    table in the error ("connector acme"). Raises StartupError."""
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise StartupError(f"{what}: cannot resolve {addr.host}: {e.strerror}") from e
    ip, port = infos[0][4][:2]
    return str(ip), int(port)
