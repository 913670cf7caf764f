"""The config file: TOML decoded by msgspec into frozen Structs, and the one place where a
problem with it becomes a ConfigError.

msgspec checks types, ranges and unknown keys while it decodes; relaycore.explain turns
its words into relaycore's one line, path first, with the value the user wrote. Checks
that need parsing or span several fields run in __post_init__ (single values through
relaycore.configcheck), so that a Struct built in code is held to them too. They raise
ConfigError with a path relative to their own Struct ("listen: ..."); msgspec wraps it,
and the location it adds completes the path. The one check a Struct cannot make, whether
a key was written at all, parse_config makes on the untyped document.
"""

import ipaddress
import os
from typing import Annotated, Literal

import msgspec
import msgspec.structs

from relaycore.addresses import HostPort, parse_host_port
from relaycore.configcheck import (
    IFNAME,
    NAME,
    check_alpn,
    check_ca,
    check_pins,
    check_pq,
    check_readable,
    check_run_dir,
    is_ip,
    pin_digest,
    tls_host,
)
from relaycore.errors import ConfigError
from relaycore.explain import explain, lower_first
from relaycore.gateway import Network, parse_match

MAX_WORKERS = 256
MAX_ROUTES = 0xFFFF  # the loop's route ids are 16-bit
# A week: some bound, because TOML can spell `inf` and a timer in milliseconds cannot hold it.
MAX_SECONDS = 604_800
# A name looked up more often than this is a resolver under load, not a fresher address.
MIN_RESOLVE_INTERVAL_S = 0.1
# The loop counts in milliseconds: anything shorter would round to a timeout of 0.
MIN_SECONDS = 0.001

Seconds = Annotated[float, msgspec.Meta(ge=MIN_SECONDS, le=MAX_SECONDS)]
Splice = Literal["auto", "off", "always"]
Io = Literal["epoll", "io_uring"]
MinTls = Literal["1.2", "1.3"]
Ktls = Literal["auto", "off", "require"]
Pq = Literal["prefer", "require", "off"]
# Paths and OpenSSL lists: "" is never what the user meant, and to OpenSSL an empty list
# can mean "nothing allowed" or "the defaults" depending on the call.
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _default_workers() -> int:
    # The CPUs this process may run on (taskset, cpusets), not all the machine has.
    return min(len(os.sched_getaffinity(0)), MAX_WORKERS) or 1


class Relay(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[relay]`: the process as a whole. `workers` is resolved when the file is loaded."""

    workers: Annotated[int, msgspec.Meta(ge=1, le=MAX_WORKERS)] = msgspec.field(
        default_factory=_default_workers
    )
    run_dir: Annotated[str, msgspec.Meta(min_length=1)] = "/run/relaycore"
    drain_timeout_s: Seconds = 30.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    splice: Splice = "auto"
    # How relaying connections move their bytes: epoll readiness (the design's loop) or,
    # experimental, io_uring (multishot receive into provided buffers, batched sends).
    io: Io = "epoll"
    # Upstream names (and fixed exit targets) are resolved again this often; 0: only at
    # start and on reload.
    resolve_interval_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)] = 30.0

    def __post_init__(self) -> None:
        if 0 < self.resolve_interval_s < MIN_RESOLVE_INTERVAL_S:
            raise ConfigError(
                f"resolve_interval_s: expected 0 (off) or at least {MIN_RESOLVE_INTERVAL_S},"
                f" got {self.resolve_interval_s:g}"
            )
        check_run_dir("run_dir", self.run_dir)


class Timeouts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[timeouts]`, in seconds, for every connector."""

    connect_s: Seconds = 10.0
    handshake_s: Seconds = 10.0
    idle_s: Seconds = 900.0


class Connector(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[connector]]`: accept plain TCP on `listen`, forward to `upstream`, over TLS
    unless `tls` is false.

    The TLS keys are checked here as far as Python can: shapes, ranges, files that exist.
    Whether the certificates parse, the key matches and OpenSSL knows the ciphers is
    checked by the TLS layer when it builds its context, and it raises ConfigError too.
    """

    name: str
    listen: str | None = None  # optional when `match` is given (gateway mode)
    upstream: str
    match: tuple[str, ...] = ()  # gateway mode: original destinations this connector serves
    tls: bool = True
    server_name: str | None = None
    ca: NonEmpty | None = None
    cert: NonEmpty | None = None
    key: NonEmpty | None = None
    verify: bool = True
    min_tls: MinTls = "1.2"
    ciphers: NonEmpty | None = None
    ciphersuites: NonEmpty | None = None
    groups: NonEmpty | None = None
    pin: tuple[str, ...] = ()
    ktls: Ktls = "auto"
    # An event (cert_expiring) when the server's certificate expires sooner; 0: never.
    cert_warn_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 14
    alpn: tuple[str, ...] = ()  # ALPN protocols offered, in order
    http_host: Literal["rewrite"] | None = None  # HTTP/1.x requests get Host: server_name
    pq: Pq = "prefer"
    # Plain connectors too (_PLAIN_KEYS):
    proxy_protocol: Literal["v1", "v2"] | None = None  # a PROXY header before anything else
    accept_proxy: bool = False  # connections start with a balancer's PROXY header

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"name: expected 1-64 of A-Z a-z 0-9 _ . -, got {self.name!r}")
        if self.accept_proxy and self.listen is None:
            raise ConfigError(
                "accept_proxy: needs listen (gateway connections come from nftables, not"
                " from a balancer that sends a PROXY header)"
            )
        for key, require_ip in (("listen", True), ("upstream", False)):
            if getattr(self, key) is None:
                continue
            try:
                parse_host_port(getattr(self, key), require_ip=require_ip)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from e
        if self.listen is None and not self.match:
            raise ConfigError("listen: required unless match is given (gateway mode)")
        for i, text in enumerate(self.match):
            try:
                parse_match(text)
            except ValueError as e:
                raise ConfigError(f"match[{i}]: {e}") from e
        if not self.tls:
            # A TLS key next to tls = false is a contradiction: the user meant one of the
            # two, and guessing wrong either sends plain text or drops their setting.
            # parse_config also catches a TLS key written with its default value.
            for key, default in _TLS_DEFAULTS.items():
                if getattr(self, key) != default:
                    raise ConfigError(f"{key}: only meaningful with tls = true")
            return
        if self.server_name is not None and tls_host(self.server_name) is None:
            raise ConfigError(
                f"server_name: expected a DNS name or an IP address, got {self.server_name!r}"
            )
        if self.ca is not None:
            check_ca("ca", self.ca)
        if (self.cert is None) != (self.key is None):
            missing, given = ("key", "cert") if self.key is None else ("cert", "key")
            raise ConfigError(f"{missing}: required when {given} is set")
        if self.cert is not None and self.key is not None:
            check_readable("cert", self.cert, directory_ok=False)
            check_readable("key", self.key, directory_ok=False)
        check_pins("pin", self.pin)
        check_alpn("alpn", self.alpn)
        if self.http_host is not None and self.ktls == "require":
            raise ConfigError(
                'http_host: the rewrite runs in user space, so ktls = "require" cannot be met'
                ' (leave ktls out, or set "off")'
            )
        check_pq(self.pq, self.groups)

    @property
    def proxy_version(self) -> int:
        """The PROXY protocol version to send: 0 (none), 1 or 2."""
        return {None: 0, "v1": 1, "v2": 2}[self.proxy_protocol]

    @property
    def http_host_value(self) -> str | None:
        """With http_host = "rewrite", the Host every request gets: server_name (the
        upstream host by default), with :port unless the port is 443."""
        if self.http_host is None:
            return None
        name = self.verify_name
        host = f"[{name}]" if ":" in name else name
        port = self.upstream_addr.port
        return host if port == 443 else f"{host}:{port}"

    @property
    def listen_addr(self) -> HostPort | None:
        return None if self.listen is None else parse_host_port(self.listen, require_ip=True)

    @property
    def match_networks(self) -> list[tuple[Network, int]]:
        return [parse_match(text) for text in self.match]

    @property
    def upstream_addr(self) -> HostPort:
        return parse_host_port(self.upstream, require_ip=False)

    @property
    def verify_name(self) -> str:
        """What the server certificate must name: `server_name`, else the upstream host.
        A DNS name loses its trailing dot; an IP literal is normalised (no brackets)."""
        name = tls_host(self.server_name or self.upstream_addr.host)
        assert name is not None  # both were checked when the Struct was made
        return name

    @property
    def sni(self) -> str | None:
        """The server name to send: verify_name, or None when that is an IP literal,
        which RFC 6066 does not allow in SNI (the certificate is then checked against
        the IP address)."""
        name = self.verify_name
        return None if is_ip(name) else name

    @property
    def insecure(self) -> bool:
        """TLS that authenticates nobody: no verification and no pin to stand in for it."""
        return self.tls and not self.verify and not self.pin

    @property
    def pin_digests(self) -> tuple[bytes, ...]:
        """The `pin` entries as raw 32-byte SHA-256 digests of a SubjectPublicKeyInfo."""
        return tuple(d for d in map(pin_digest, self.pin) if d is not None)


# Every other key means something only for TLS; with the value it has when left out.
_PLAIN_KEYS = frozenset(
    {"name", "listen", "upstream", "tls", "match", "proxy_protocol", "accept_proxy"}
)
_TLS_DEFAULTS = {
    f.name: f.default for f in msgspec.structs.fields(Connector) if f.name not in _PLAIN_KEYS
}


# The `target` of an exit that lets the entry node name each connection's destination.
PROXY_TARGETS = ("socks5", "http-connect")


class Exit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[exit]]`: the far end of a tunnel. Accept TLS on `listen` from entry nodes,
    each authenticated by its client certificate (a pin in `allow`, or a chain to `ca`),
    and relay their bytes to `target`: a fixed host:port, or the destination each
    connection asks for in a SOCKS5 or HTTP CONNECT request.

    There is no default for who may connect: an exit anyone can reach is an open proxy
    into the network behind it, which is never what is meant.
    """

    name: str
    listen: str
    cert: NonEmpty
    key: NonEmpty
    allow: tuple[str, ...] = ()
    ca: NonEmpty | None = None
    target: str
    # None: the default policy (anything but loopback, link-local, unspecified and the exit
    # host's own addresses). TOML
    # has no null, so None is only ever "not written"; an empty list is refused.
    allow_destinations: tuple[str, ...] | None = None
    min_tls: MinTls = "1.2"
    ktls: Ktls = "auto"
    alpn: tuple[str, ...] = ()  # ALPN protocols taken, the exit's preference first
    accept_proxy: bool = False  # connections start with a balancer's PROXY header
    pq: Pq = "prefer"

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"name: expected 1-64 of A-Z a-z 0-9 _ . -, got {self.name!r}")
        check_alpn("alpn", self.alpn)
        try:
            parse_host_port(self.listen, require_ip=True)
        except ValueError as e:
            raise ConfigError(f"listen: {e}") from e
        check_readable("cert", self.cert, directory_ok=False)
        check_readable("key", self.key, directory_ok=False)
        check_pins("allow", self.allow)
        if self.ca is not None:
            check_ca("ca", self.ca)
        if not self.allow and self.ca is None:
            raise ConfigError(
                "allow: required unless ca is given: the pins of the entry nodes that may"
                " connect (an exit that anyone can use is an open proxy)"
            )
        self._check_target()

    def _check_target(self) -> None:
        if self.target not in PROXY_TARGETS:
            try:
                parse_host_port(self.target, require_ip=False)
            except ValueError as e:
                if ":" in self.target:
                    raise ConfigError(f"target: {e}") from e
                raise ConfigError(
                    f"target: expected 'socks5', 'http-connect' or host:port, got {self.target!r}"
                ) from e
        if self.allow_destinations is None:
            return
        if self.target not in PROXY_TARGETS:
            raise ConfigError(
                "allow_destinations: only meaningful with target = 'socks5' or"
                " 'http-connect' (a fixed target is the only destination)"
            )
        if not self.allow_destinations:
            # Empty could mean "nothing" or "the default"; either guess surprises someone.
            raise ConfigError(
                "allow_destinations: empty; leave the key out for the default policy"
                " (any destination but the exit host's own addresses, loopback included, and"
                " link-local and unspecified ones)"
            )
        for i, text in enumerate(self.allow_destinations):
            try:
                network, _ = parse_match(text)
            except ValueError as e:
                raise ConfigError(f"allow_destinations[{i}]: {e}") from e
            if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_V4_MAPPED):
                # The exit checks ::ffff:a.b.c.d as the IPv4 address it is (so that the
                # default policy cannot be walked around): such an entry would never match.
                raise ConfigError(
                    f"allow_destinations[{i}]: {text!r} is IPv4-mapped; write the IPv4"
                    " address or network instead"
                )

    @property
    def listen_addr(self) -> HostPort:
        return parse_host_port(self.listen, require_ip=True)

    @property
    def allow_digests(self) -> tuple[bytes, ...]:
        """The `allow` entries as raw 32-byte SHA-256 digests of a SubjectPublicKeyInfo."""
        return tuple(d for d in map(pin_digest, self.allow) if d is not None)

    @property
    def target_kind(self) -> Literal["fixed", "socks5", "http-connect"]:
        if self.target == "socks5":
            return "socks5"
        if self.target == "http-connect":
            return "http-connect"
        return "fixed"

    @property
    def target_addr(self) -> HostPort | None:
        """The fixed target, or None when the entry names the destination (a proxy)."""
        if self.target in PROXY_TARGETS:
            return None
        return parse_host_port(self.target, require_ip=False)

    @property
    def destination_networks(self) -> list[tuple[Network, int]]:
        """`allow_destinations` as (network, port or 0); [] for the default policy."""
        return [parse_match(text) for text in self.allow_destinations or ()]


class Passthrough(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[passthrough]]`: device traffic that bypasses the connectors and reaches its
    original destination (DNS, ping, a firmware server)."""

    protocol: Literal["icmp", "udp", "tcp"]
    ip: str | None = None  # an address or CIDR; default: any
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None

    def __post_init__(self) -> None:
        if self.ip is not None:
            try:
                ipaddress.ip_network(self.ip, strict=True)
            except ValueError as e:
                raise ConfigError(f"ip: expected an address or CIDR, got {self.ip!r} ({e})") from e
        if self.protocol == "icmp" and self.port is not None:
            raise ConfigError("port: icmp has no ports")

    @property
    def network(self) -> Network | None:
        return None if self.ip is None else ipaddress.ip_network(self.ip, strict=True)


class Gateway(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[gateway]`: intercept the devices' TCP on `interface` and serve it here."""

    listen: str | tuple[str, ...] = "0.0.0.0:15001"  # one address, or IPv4 and IPv6
    interface: str
    default: str = "reject"  # or the name of the connector that gets unmatched traffic
    manage_rules: bool = False  # `relaycore run` applies the nftables rules, removes them

    def __post_init__(self) -> None:
        if not self.listen_texts:
            raise ConfigError("listen: at least one address")
        for i, text in enumerate(self.listen_texts):
            try:
                parse_host_port(text, require_ip=True)
            except ValueError as e:
                where = "listen" if isinstance(self.listen, str) else f"listen[{i}]"
                raise ConfigError(f"{where}: {e}") from e
        ports = {parse_host_port(t, require_ip=True).port for t in self.listen_texts}
        if len(ports) != 1:
            # One redirect rule (`redirect to :PORT`) serves IPv4 and IPv6 alike.
            raise ConfigError("listen: every gateway listen address needs the same port")
        if not IFNAME.fullmatch(self.interface):
            raise ConfigError(f"interface: expected an interface name, got {self.interface!r}")

    @property
    def listen_texts(self) -> tuple[str, ...]:
        return (self.listen,) if isinstance(self.listen, str) else self.listen

    @property
    def listen_addrs(self) -> list[HostPort]:
        return [parse_host_port(t, require_ip=True) for t in self.listen_texts]


class Stats(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[stats]`: how workers report, and where else the numbers go."""

    # 0 turns worker reports off (error events are then logged by each worker itself).
    interval_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0
    prometheus: str | None = None  # "127.0.0.1:9464": serve /metrics there
    publish: str | None = None  # "tcp://127.0.0.1:5557": a second stats PUB endpoint

    def __post_init__(self) -> None:
        if self.prometheus is not None:
            try:
                parse_host_port(self.prometheus, require_ip=True)
            except ValueError as e:
                raise ConfigError(f"prometheus: {e}") from e
        if self.publish is not None:
            # Only TCP: ipc and inproc endpoints of the stats socket are relaycore's own.
            host_port = self.publish.removeprefix("tcp://")
            try:
                if host_port == self.publish:
                    raise ValueError(f"expected tcp://host:port, got {self.publish!r}")
                parse_host_port(host_port, require_ip=True)
            except ValueError as e:
                raise ConfigError(f"publish: {e}") from e


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole file. `connectors` is the `[[connector]]` array and `exits` the
    `[[exit]]` one; at least one of the two has a table (an exit node may run only exits)."""

    relay: Relay = msgspec.field(default_factory=Relay)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    stats: Stats = msgspec.field(default_factory=Stats)
    gateway: Gateway | None = None
    passthrough: tuple[Passthrough, ...] = ()
    connectors: tuple[Connector, ...] = msgspec.field(default=(), name="connector")
    exits: tuple[Exit, ...] = msgspec.field(default=(), name="exit")

    def __post_init__(self) -> None:
        if not self.connectors and not self.exits:
            # An exit node may run only exits: it has no devices of its own.
            raise ConfigError("connector: at least one [[connector]] or [[exit]] table is required")
        names: dict[str, int] = {}
        listens: dict[HostPort | None, int] = {}
        for i, c in enumerate(self.connectors):
            if (j := names.setdefault(c.name, i)) != i:
                raise ConfigError(
                    f"connector[{i}].name: {c.name!r} is also the name of connector[{j}]"
                )
            if c.listen_addr is not None and (j := listens.setdefault(c.listen_addr, i)) != i:
                raise ConfigError(
                    f"connector[{i}].listen: {c.listen_addr} is also the listen address"
                    f" of connector[{j}] ({self.connectors[j].name!r})"
                )
        self._check_gateway(names, listens)
        self._check_exits(names, listens)
        routes = len(self.connectors) + len(self.exits) + (2 if self.gateway else 0)
        if routes > MAX_ROUTES:
            # The loop numbers its routes with 16 bits (relaycore.plan has the order).
            raise ConfigError(
                f"connector: at most {MAX_ROUTES} connectors and exits in all (a [gateway]"
                f" takes 2 of them), got {routes}"
            )

    def _check_gateway(self, names: dict[str, int], listens: dict[HostPort | None, int]) -> None:
        matching = [i for i, c in enumerate(self.connectors) if c.match]
        if self.gateway is None:
            if matching:
                raise ConfigError(
                    f"connector[{matching[0]}].match: needs a [gateway] table (the listener"
                    " that intercepted connections arrive on)"
                )
            if self.passthrough:
                raise ConfigError("passthrough: needs a [gateway] table")
            return
        if self.gateway.default != "reject" and self.gateway.default not in names:
            raise ConfigError(
                f"gateway.default: expected 'reject' or a connector name, got"
                f" {self.gateway.default!r}"
            )
        for addr in self.gateway.listen_addrs:
            if addr in listens:
                raise ConfigError(
                    f"gateway.listen: {addr} is also the listen address of"
                    f" connector[{listens[addr]}]"
                )

    def _check_exits(self, names: dict[str, int], listens: dict[HostPort | None, int]) -> None:
        """Exits share the connectors' namespaces: a name picks one line in stats and logs,
        and an address can be bound for one listener only."""
        gateway_addrs = self.gateway.listen_addrs if self.gateway is not None else []
        exit_names: dict[str, int] = {}
        exit_listens: dict[HostPort, int] = {}
        for i, x in enumerate(self.exits):
            if x.name in names:
                raise ConfigError(
                    f"exit[{i}].name: {x.name!r} is also the name of connector[{names[x.name]}]"
                )
            if (j := exit_names.setdefault(x.name, i)) != i:
                raise ConfigError(f"exit[{i}].name: {x.name!r} is also the name of exit[{j}]")
            addr = x.listen_addr
            if addr in listens:
                k = listens[addr]
                raise ConfigError(
                    f"exit[{i}].listen: {addr} is also the listen address of connector[{k}]"
                    f" ({self.connectors[k].name!r})"
                )
            if addr in gateway_addrs:
                raise ConfigError(f"exit[{i}].listen: {addr} is also a gateway.listen address")
            if (j := exit_listens.setdefault(addr, i)) != i:
                raise ConfigError(
                    f"exit[{i}].listen: {addr} is also the listen address of exit[{j}]"
                    f" ({self.exits[j].name!r})"
                )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the file at `path`; any problem is a one-line ConfigError."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ConfigError(f"{source}: file not found") from e
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from e
    return parse_config(data, source)


def parse_config(text: str | bytes, source: str = "<string>") -> Config:
    """Check TOML text; `source` names it where no field path can (bad TOML, top level)."""
    if isinstance(text, bytes):
        # Decoded here: msgspec's own complaint about bad UTF-8 differs between releases
        # (0.23 raises a DecodeError in Python's codec wording, earlier ones did not).
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: invalid TOML: not UTF-8 (byte {e.start})") from e
    try:
        cfg = msgspec.toml.decode(text, type=Config)
        # The Struct cannot tell `verify = true` written out from the default, so with
        # tls = false its own check misses TLS keys that repeat their default: the file can.
        tables = msgspec.toml.decode(text).get("connector", [])
    except msgspec.ValidationError as e:
        raise ConfigError(explain(e, text, source, Config)) from e
    except msgspec.DecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {lower_first(str(e))}") from e
    except RecursionError:
        # The TOML parser recurses once per level of nested arrays or inline tables; no
        # relay's file nests more than a few.
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None
    for i, table in enumerate(tables):
        if table.get("tls") is False:
            for key in _TLS_DEFAULTS:
                if key in table:
                    raise ConfigError(f"connector[{i}].{key}: only meaningful with tls = true")
    return cfg
