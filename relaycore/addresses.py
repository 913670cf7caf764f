"""`host:port` text as written in the config, parsed into a HostPort."""

import ipaddress
import re
import socket
from typing import NamedTuple

_PORT = re.compile(r"[0-9]{1,5}")
# RFC 1123 labels; a hyphen may not start or end one.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class HostPort(NamedTuple):
    """An IP literal or DNS name, and a port 1..65535. IP literals are kept normalised
    (`::0:1` becomes `::1`) so that equal addresses compare equal."""

    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        """AF_INET or AF_INET6 for an IP literal; AF_UNSPEC for a name, which DNS decides."""
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return socket.AF_UNSPEC
        return socket.AF_INET6 if ip.version == 6 else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, *, require_ip: bool) -> HostPort:
    """Parse `1.2.3.4:80`, `[::1]:80` or (unless `require_ip`) `name.example:80`.
    Raises ValueError with a short message that names no config field."""
    if text.startswith("["):
        inside, bracket, port_text = text[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError(f"expected [IPv6 address]:port, got {text!r}")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise ValueError(f"expected an IPv6 address inside [ ], got {inside!r}") from None
        return HostPort(host, _port(port_text[1:], text))
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"expected host:port, got {text!r}")
    if ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:8080, got {text!r}")
    port = _port(port_text, text)
    try:
        return HostPort(str(ipaddress.IPv4Address(host)), port)
    except ValueError:
        pass
    if require_ip:
        raise ValueError(f"expected an IP address, got {host!r}")
    if not is_dns_name(host):
        raise ValueError(f"expected an IP address or a DNS name, got {host!r}")
    return HostPort(host, port)


def _port(port_text: str, text: str) -> int:
    # int() alone would accept " 80", "+80" and "8_0".
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port 1-65535, got {port_text!r} in {text!r}")
    return int(port_text)


def is_dns_name(host: str) -> bool:
    """RFC 1123 host name, at most 253 characters, an optional trailing dot."""
    labels = host.removesuffix(".").split(".")
    # An all-numeric last label is a mistyped IPv4 address (1.2.3.999), never a TLD.
    return (
        len(host.removesuffix(".")) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )
