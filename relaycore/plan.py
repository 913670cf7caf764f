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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from relaycore import _core, gateway, tls
from relaycore.addresses import HostPort
from relaycore.config import Config
from relaycore.errors import StartupError
from relaycore.gateway import PASSTHROUGH_ROUTE, REJECT_ROUTE

Address = tuple[str, int]  # (IP literal, port)


@dataclass(frozen=True)
class UpstreamRoute:
    """A connector: relay to its upstream, over TLS made with `tls` (None: plain TCP)."""

    name: str
    host: str  # an IP literal: resolved when the plan was made (the first address)
    port: int
    tls: _core.TLSClientContext | None
    more_addresses: tuple[Address, ...] = ()  # the name's other addresses, in order
    resolve: HostPort | None = None  # the name to resolve again; None: an IP literal
    proxy_protocol: int = 0  # PROXY header version sent first, 0: none
    accept_proxy: bool = False
    http_host: str | None = None  # the Host that HTTP/1.x requests get; None: untouched

    @property
    def addresses(self) -> tuple[Address, ...]:
        return ((self.host, self.port), *self.more_addresses)


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
    more_addresses: tuple[Address, ...] = ()  # fixed: the target name's other addresses
    resolve: HostPort | None = None  # fixed: the target's name to resolve again
    accept_proxy: bool = False

    @property
    def addresses(self) -> tuple[Address, ...]:
        return ((self.host, self.port), *self.more_addresses) if self.target == "fixed" else ()


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
    io: str
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
    resolve_interval_s: float = 0.0  # 0: names are resolved only when a plan is made

    def names(self) -> dict[int, HostPort]:
        """{route id: the name its upstream or fixed target resolves from}, for the routes
        whose addresses come from a name (relaycore.resolver resolves them again)."""
        return {
            k: r.resolve
            for k, r in enumerate(self.routes)
            if isinstance(r, UpstreamRoute | ExitRoute) and r.resolve is not None
        }

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

    def with_addresses(self, addresses: Mapping[int, tuple[Address, ...]]) -> "Plan":
        """This plan with the upstreams of these route ids going to these addresses (the
        supervisor's later lookups of their names), for the workers it forks from now on."""
        routes = list(self.routes)
        for k, found in addresses.items():
            r = routes[k]
            if isinstance(r, UpstreamRoute | ExitRoute) and found and found != r.addresses:
                routes[k] = replace(
                    r, host=found[0][0], port=found[0][1], more_addresses=tuple(found[1:])
                )
        return replace(self, routes=tuple(routes))

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
    upstreams = [resolve_all(f"connector {c.name}", c.upstream_addr) for c in config.connectors]
    client_contexts = [
        tls.client_context(c, k) if c.tls else None for k, c in enumerate(config.connectors)
    ]
    exit_targets = [
        [("", 0)] if x.target_addr is None else resolve_all(f"exit {x.name}", x.target_addr)
        for x in config.exits
    ]
    server_contexts = [tls.server_context(x, k) for k, x in enumerate(config.exits)]
    tls.check_ktls_requirements(config.connectors, config.exits)

    routes: list[Route] = [
        UpstreamRoute(
            c.name,
            *addresses[0],
            context,
            more_addresses=tuple(addresses[1:]),
            resolve=_name(c.upstream_addr),
            proxy_protocol=c.proxy_version,
            accept_proxy=c.accept_proxy,
            http_host=c.http_host_value,
        )
        for c, addresses, context in zip(config.connectors, upstreams, client_contexts, strict=True)
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
    for x, addresses, context in zip(config.exits, exit_targets, server_contexts, strict=True):
        listen.append((x.listen_addr, len(routes)))
        routes.append(
            ExitRoute(
                name=x.name,
                tls=context,
                target=x.target_kind,
                host=addresses[0][0],
                port=addresses[0][1],
                destinations=tuple((str(net), port) for net, port in x.destination_networks),
                more_addresses=tuple(addresses[1:]),
                resolve=None if x.target_addr is None else _name(x.target_addr),
                accept_proxy=x.accept_proxy,
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
            io=config.relay.io,
            connect_timeout_ms=round(config.timeouts.connect_s * 1000),
            handshake_timeout_ms=round(config.timeouts.handshake_s * 1000),
            idle_timeout_ms=round(config.timeouts.idle_s * 1000),
        ),
        drain_timeout_s=config.relay.drain_timeout_s,
        run_dir=config.relay.run_dir,
        stats_interval_s=config.stats.interval_s,
        resolve_interval_s=config.relay.resolve_interval_s,
    )


# The loop tries at most this many addresses of a name (UPSTREAM_MAX_ADDRS in ext/).
MAX_ADDRESSES = 8


def lookup(addr: HostPort) -> list[Address]:
    """Every address of `addr` as (IP literal, port), in getaddrinfo's order, no two alike,
    at most MAX_ADDRESSES. Blocks for as long as the resolver takes. Raises
    socket.gaierror."""
    found: list[Address] = []
    for info in socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM):
        ip, port = info[4][:2]
        if (str(ip), int(port)) not in found:
            found.append((str(ip), int(port)))
    return found[:MAX_ADDRESSES]


def resolve_all(what: str, addr: HostPort) -> list[Address]:
    """lookup(addr); `what` names the table in the error ("connector acme"). Raises
    StartupError."""
    try:
        found = lookup(addr)
    except socket.gaierror as e:
        raise StartupError(f"{what}: cannot resolve {addr.host}: {e.strerror}") from e
    if not found:
        raise StartupError(f"{what}: {addr.host} has no address")
    return found


def _name(addr: HostPort) -> HostPort | None:
    """`addr` if its host is a name to resolve again, None for an IP literal."""
    return addr if addr.family == socket.AF_UNSPEC else None
