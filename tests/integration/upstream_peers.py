"""Real servers for the tests of issue 14's connector features (test_upstream_peers.py):
nginx and HAProxy as receivers of the PROXY protocol, HAProxy as the balancer in front
that sends one, and nginx with a strict server_name for the Host rewrite. Each is a
child process on 127.0.0.1 run by peers.peer_process (bounded start, stopped at the end).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from peers import Peer, find_binary, nginx_process, peer_process, read_text
from support.servers import HOST

from relaycore.lab.pki import Issued

NGINX = find_binary("nginx")
HAPROXY = find_binary("haproxy")


@contextlib.contextmanager
def _nginx(directory: Path, port: int, servers: str) -> Iterator[Peer]:
    directory.mkdir(parents=True, exist_ok=True)
    http = (
        "    log_format host '$host|$http_host|$request';\n"
        f"    access_log {directory / 'access.log'} host;\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    client_max_body_size 8m;\n"
        f"{servers}"
    )
    with nginx_process(directory, port, http) as peer:
        yield peer


def nginx_access(directory: Path) -> list[str]:
    """nginx's access log: `$host|$http_host|$request` per request."""
    return read_text(directory / "access.log").splitlines()


@contextlib.contextmanager
def nginx_proxy_protocol(directory: Path, port: int, cert: Issued | None) -> Iterator[Peer]:
    """nginx on 127.0.0.1:port with `proxy_protocol` on its listen (HTTPS with `cert`, or
    plain HTTP): every request is answered with what the PROXY header said,
    `<client addr>:<port> <server addr>:<port>`. A connection without a header is refused
    by nginx itself."""
    tls = (
        f" ssl;\n        ssl_certificate {cert.cert};\n        ssl_certificate_key {cert.key}"
        if cert
        else ""
    )
    servers = (
        "    server {\n"
        f"        listen {HOST}:{port} proxy_protocol{tls};\n"
        "        location / { return 200 '$proxy_protocol_addr:$proxy_protocol_port"
        " $proxy_protocol_server_addr:$proxy_protocol_server_port\\n'; }\n"
        "    }\n"
    )
    with _nginx(directory, port, servers) as peer:
        yield peer


@contextlib.contextmanager
def nginx_strict_host(directory: Path, port: int, name: str, cert: Issued) -> Iterator[Peer]:
    """HTTPS on 127.0.0.1:port serving only Host `name` (200 "host=<$host>"); its default
    server answers any other Host with 421 Misdirected Request, as a strict virtual host
    does."""
    tls = f"        ssl_certificate {cert.cert};\n        ssl_certificate_key {cert.key};\n"
    servers = (
        "    server {\n"
        f"        listen {HOST}:{port} ssl default_server;\n"
        "        server_name _;\n"
        f"{tls}"
        "        location / { return 421 'misdirected: $host\\n'; }\n"
        "    }\n"
        "    server {\n"
        f"        listen {HOST}:{port} ssl;\n"
        f"        server_name {name};\n"
        f"{tls}"
        "        location / { return 200 'host=$host\\n'; }\n"
        "    }\n"
    )
    with _nginx(directory, port, servers) as peer:
        yield peer


@contextlib.contextmanager
def haproxy(directory: Path, port: int, config: str) -> Iterator[Peer]:
    """HAProxy in the foreground with this config (global and defaults are added)."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "haproxy.cfg"
    conf.write_text(
        "global\n"
        "    maxconn 64\n"
        "defaults\n"
        "    timeout connect 5s\n"
        "    timeout client 10s\n"
        "    timeout server 10s\n"
        f"{config}"
    )
    argv = [HAPROXY or "haproxy", "-db", "-f", str(conf)]
    with peer_process(
        "haproxy", argv, ports=[port], log=directory / "haproxy.out", cwd=directory
    ) as peer:
        yield peer


def haproxy_accept_proxy(directory: Path, port: int, cert: Issued | None) -> str:
    """A config: HTTP (HTTPS with `cert`) on port with `accept-proxy`, answering each
    request with the addresses HAProxy took from the PROXY header."""
    bind = f"    bind {HOST}:{port} accept-proxy"
    if cert is not None:
        pem = directory / "haproxy.pem"
        directory.mkdir(parents=True, exist_ok=True)
        pem.write_text(cert.cert.read_text() + cert.key.read_text())
        bind += f" ssl crt {pem}"
    return (
        "frontend receiver\n"
        "    mode http\n"
        f"{bind}\n"
        "    http-request return status 200 content-type text/plain lf-string"
        ' "%[src]:%[src_port] %[dst]:%[dst_port]\\n"\n'
    )


def haproxy_send_proxy(port: int, relay_port: int) -> str:
    """A config: TCP on port balanced to the relay on relay_port with a PROXY v2 header
    (send-proxy-v2), as a balancer in front of relaycore does."""
    return (
        "frontend balancer\n"
        "    mode tcp\n"
        f"    bind {HOST}:{port}\n"
        "    default_backend relays\n"
        "backend relays\n"
        "    mode tcp\n"
        f"    server relay {HOST}:{relay_port} send-proxy-v2\n"
    )
