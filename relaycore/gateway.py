"""Gateway mode: what the relay intercepts, and the nftables rules that make it so.

On a gateway, devices send to any address. nftables (a table of relaycore's own,
`inet relaycore`) accepts the passthrough traffic first, so it is routed to its real
destination untouched, and redirects every other TCP connection that arrives on the
device-facing interface to the gateway listener; anything else from the devices is
dropped at forwarding. The listener reads each connection's original destination and
picks the connector whose `match` fits it best (matching_order says what "best" is).

The ruleset is applied as one `nft -f` transaction that creates, deletes and recreates
the table, so applying it twice is the same as once and nothing is half-applied.
"""

import ipaddress
import re
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from relaycore.config import Config  # config imports this module: no cycle at run time

TABLE = "relaycore"
# The gateway's own routes, named as connectors are in counters and error records (names
# a connector cannot have, so they never clash): plain TCP to the original destination,
# and the reject route (a reset and a no_route event).
PASSTHROUGH_ROUTE = "(passthrough)"
REJECT_ROUTE = "(gateway)"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class MatchRule:
    """Original destinations in `network` (and `port`, 0 = any) go to `target`, the name
    of a route: a connector's, or PASSTHROUGH_ROUTE."""

    target: str
    network: Network
    port: int


def parse_match(text: str) -> tuple[Network, int]:
    """ "10.0.0.1:80", "10.1.0.0/16", "10.1.0.0/16:443", "[2001:db8::1]:443",
    "2001:db8::/32" -> (network, port or 0). Raises ValueError."""
    host, port = text, 0
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [IPv6]:port, got {text!r}")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    try:
        network = ipaddress.ip_network(host, strict=True)
    except ValueError as e:
        raise ValueError(
            f"expected an address or CIDR, optionally with :port, got {text!r} ({e})"
        ) from None
    return network, port


def _port(text: str, whole: str) -> int:
    # ASCII digits only: str.isdigit() would take "٨٠" for 80.
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 0 < int(text) < 65536:
        raise ValueError(f"expected a port 1-65535 in {whole!r}")
    return int(text)


def matching_order(rules: list[MatchRule]) -> list[MatchRule]:
    """Most specific first: passthrough rules before connectors (nftables lets them by
    before redirecting, and the listener agrees), then longer prefixes, then rules that
    name a port before those that do not. Ties keep the config's order."""
    return sorted(
        rules,
        key=lambda r: (r.target != PASSTHROUGH_ROUTE, -r.network.prefixlen, r.port == 0),
    )


def match_rules(config: "Config") -> list[MatchRule]:
    """The gateway listener's table for this config: TCP passthrough rules (the listener
    honours them too, in case the kernel's rules lag a reload) and connectors' `match`."""
    rules = []
    for p in config.passthrough:
        if p.protocol == "tcp":
            nets = [p.network] if p.network is not None else list(_ANY)
            rules += [MatchRule(PASSTHROUGH_ROUTE, net, p.port or 0) for net in nets]
    for c in config.connectors:
        rules += [MatchRule(c.name, net, port) for net, port in c.match_networks]
    return matching_order(rules)


_ANY = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True)
class PassthroughRule:
    protocol: Literal["icmp", "udp", "tcp"]
    network: Network | None
    port: int | None


def config_rules(config: "Config") -> str:
    """The nftables ruleset for a config with a [gateway] table."""
    assert config.gateway is not None
    return render_rules(
        config.gateway.interface,
        config.gateway.listen_addrs[0].port,
        [PassthroughRule(p.protocol, p.network, p.port) for p in config.passthrough],
    )


def render_rules(interface: str, listen_port: int, passthrough: list[PassthroughRule]) -> str:
    """The nftables ruleset, as one transaction for `nft -f -`."""
    accepts = [_nft_match(interface, rule) for rule in passthrough]
    lines = [
        f"# relaycore gateway rules: devices on {interface}",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *(f"\t\t{a} accept" for a in accepts),
        f'\t\tiifname "{interface}" meta l4proto tcp redirect to :{listen_port}',
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tct state established,related accept",
        *(f"\t\t{a} accept" for a in accepts),
        f'\t\tiifname "{interface}" drop',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _nft_match(interface: str, rule: PassthroughRule) -> str:
    parts = [f'iifname "{interface}"']
    family = rule.network.version if rule.network is not None else None
    if rule.network is not None:
        parts.append(f"{'ip' if family == 4 else 'ip6'} daddr {rule.network}")
    if rule.protocol == "icmp":
        parts.append(
            {4: "meta l4proto icmp", 6: "meta l4proto ipv6-icmp"}.get(
                family or 0, "meta l4proto { icmp, ipv6-icmp }"
            )
        )
    else:
        parts.append(f"meta l4proto {rule.protocol}")
        if rule.port is not None:
            parts.append(f"{rule.protocol} dport {rule.port}")
    return " ".join(parts)


def switch_rules(old: "Config | None", new: "Config") -> bool:
    """Load the new config's rules if it manages them, or remove the old config's if it
    no longer does. True when new rules were applied. Raises RuntimeError with nft's
    words."""
    if new.gateway is not None and new.gateway.manage_rules:
        apply_rules(config_rules(new))
        return True
    if old is not None and old.gateway is not None and old.gateway.manage_rules:
        remove_rules()
    return False


def apply_rules(ruleset: str) -> None:
    """Load the ruleset atomically. Raises RuntimeError with nft's own words."""
    _nft(["-f", "-"], ruleset)


def remove_rules() -> None:
    """Delete relaycore's table, if it is there."""
    try:
        _nft(["delete", "table", "inet", TABLE], None)
    except RuntimeError as e:
        if "No such file or directory" not in str(e):
            raise


def _nft(args: list[str], stdin: str | None) -> None:
    try:
        done = subprocess.run(
            ["nft", *args], input=stdin, capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        raise RuntimeError("nft not found: install the nftables package") from None
    if done.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)}: {done.stderr.strip()}")
