"""Real TLS servers as the relay's upstream, for the interop tests: `openssl s_server`,
nginx and mosquitto, each a child process on 127.0.0.1 with its files in a tmp dir.

Every peer is a context manager: it writes the peer's config, starts the program with its
output in a log file, waits (bounded) until each of its ports accepts a connection, and on
exit terminates it (SIGTERM, then SIGKILL after a deadline) and reaps it. The test process
keeps no fd of a peer open while it runs: the log file is the child's alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from support.servers import HOST

from relaycore.lab.base import wait_for
from relaycore.lab.pki import Issued

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# Debian installs nginx and mosquitto in /usr/sbin, which an unprivileged PATH may lack.
_SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])


def find_binary(name: str) -> str | None:
    """The program's path: on PATH, or in an sbin directory."""
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def read_text(path: Path) -> str:
    """The file's text so far ("" before the peer has created it)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@dataclass
class Peer:
    """A running peer program: its process, the ports it serves and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    ports: tuple[int, ...]
    log: Path

    @property
    def port(self) -> int:
        return self.ports[0]

    def output(self) -> str:
        return read_text(self.log)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def peer_process(
    name: str,
    argv: Sequence[str],
    *,
    ports: Sequence[int],
    log: Path,
    cwd: Path,
    ready_timeout: float = READY_TIMEOUT,
) -> Iterator[Peer]:
    """Run argv (stdout and stderr into `log`) until the block ends; yield once every port
    in `ports` accepts a TCP connection on 127.0.0.1."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )
    peer = Peer(name=name, proc=proc, ports=tuple(ports), log=log)
    waiting = list(ports)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"{name} exited with {proc.returncode} before listening on {waiting}:\n"
                f"{peer.output()}"
            )
        waiting[:] = [p for p in waiting if not _accepts(p)]
        return not waiting

    try:
        try:
            wait_for(listening, ready_timeout, f"{name} to listen on {list(ports)}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; not on {waiting}:\n{peer.output()}") from None
        yield peer
    finally:
        _stop(proc)


# -- openssl s_server -----------------------------------------------------------------------


@contextlib.contextmanager
def openssl_server(
    directory: Path, port: int, server: Issued, *, extra: Sequence[str] = ()
) -> Iterator[Peer]:
    """`openssl s_server -www`: answers an HTTP GET with a status page that names the
    protocol and says whether the session was "New" or "Reused"."""
    directory.mkdir(parents=True, exist_ok=True)
    argv = [
        find_binary("openssl") or "openssl",
        "s_server",
        "-accept",
        f"{HOST}:{port}",
        "-cert",
        str(server.cert),
        "-key",
        str(server.key),
        "-www",
        *extra,
    ]
    with peer_process(
        "openssl s_server", argv, ports=[port], log=directory / "s_server.log", cwd=directory
    ) as peer:
        yield peer


# -- nginx ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NginxServer:
    """One `server` block: `server_name` (None: the default server) and its certificate."""

    server_name: str | None
    cert: Issued


@dataclass
class Nginx:
    peer: Peer
    access_log: Path
    error_log: Path

    @property
    def port(self) -> int:
        return self.peer.port

    def access_lines(self) -> list[str]:
        return read_text(self.access_log).splitlines()


NGINX_LOG_FORMAT = "$ssl_server_name $ssl_protocol $ssl_session_reused $request"


@contextlib.contextmanager
def nginx_https(
    directory: Path,
    port: int,
    servers: Sequence[NginxServer],
    log_format: str = NGINX_LOG_FORMAT,
) -> Iterator[Nginx]:
    """nginx, one process (`master_process off`), HTTPS on 127.0.0.1:port for every block
    in `servers` (chosen by SNI), each answering any path with 200 "hello <SNI>". The access
    log has one line per request: `<SNI> <protocol> <r if resumed, else .> <request line>`
    (or `log_format`, in nginx's variables).

    Each block presents its certificate alone, as a server does whose chain has no
    intermediates: the root is the client's to have (a root sent along would turn "unable
    to get local issuer certificate" into "self-signed certificate in certificate chain"
    for a client that does not trust it)."""
    directory.mkdir(parents=True, exist_ok=True)
    access_log, error_log = directory / "access.log", directory / "error.log"
    blocks = []
    for s in servers:
        names = (
            f"        server_name {s.server_name};\n"
            if s.server_name
            else "        server_name _;\n"
        )
        default = "" if s.server_name else " default_server"
        blocks.append(
            "    server {\n"
            f"        listen {HOST}:{port} ssl{default};\n"
            f"{names}"
            f"        ssl_certificate {s.cert.cert};\n"
            f"        ssl_certificate_key {s.cert.key};\n"
            '        location / { return 200 "hello $ssl_server_name\\n"; }\n'
            "    }\n"
        )
    http = (
        f"    log_format peers '{log_format}';\n"
        f"    access_log {access_log} peers;\n"
        # nginx 1.22 offers TLS 1.0-1.2 unless told otherwise.
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    ssl_session_tickets on;\n"
        f"{''.join(blocks)}"
    )
    with nginx_process(directory, port, http) as peer:
        yield Nginx(peer=peer, access_log=access_log, error_log=error_log)


@contextlib.contextmanager
def nginx_process(directory: Path, port: int, http: str) -> Iterator[Peer]:
    """nginx with `http` inside its http { } block: one process in the foreground, its pid,
    temp files and error log (error.log, level info) in `directory`; yielded once
    127.0.0.1:port accepts connections."""
    error_log = directory / "error.log"
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = directory / "nginx.conf"
    conf.write_text(
        "daemon off;\n"
        "master_process off;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {error_log} info;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"{temp}\n"
        f"{http}"
        "}\n"
    )
    argv = [
        find_binary("nginx") or "nginx",
        "-p",
        str(directory),
        "-c",
        str(conf),
        "-e",
        str(error_log),
    ]
    with peer_process(
        "nginx", argv, ports=[port], log=directory / "nginx.out", cwd=directory
    ) as peer:
        yield peer


# -- mosquitto --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttListener:
    port: int
    require_certificate: bool = False


@contextlib.contextmanager
def mosquitto_tls(
    directory: Path, ca: Path, server: Issued, listeners: Sequence[MqttListener]
) -> Iterator[Peer]:
    """mosquitto with a TLS listener on 127.0.0.1 for each of `listeners`, anonymous
    clients allowed, every log type into `mosquitto.log` (Peer.log). A listener with
    `require_certificate` wants a client certificate from `ca`, and takes its CN as the
    client's user name, which the connect line of the log shows as u'<CN>'."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "mosquitto.log"
    lines = [
        # As root, mosquitto would switch to the user `mosquitto`, who cannot read the
        # tmp dir; not being root, it ignores this.
        "user root",
        "persistence false",
        "allow_anonymous true",
        f"log_dest file {log}",
        "log_type all",
        "connection_messages true",
    ]
    for lst in listeners:
        lines += [
            f"listener {lst.port} {HOST}",
            f"cafile {ca}",
            f"certfile {server.chain}",
            f"keyfile {server.key}",
        ]
        if lst.require_certificate:
            lines += ["require_certificate true", "use_identity_as_username true"]
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    argv = [find_binary("mosquitto") or "mosquitto", "-c", str(conf)]
    with peer_process(
        "mosquitto",
        argv,
        ports=[lst.port for lst in listeners],
        log=directory / "mosquitto.out",
        cwd=directory,
    ) as peer:
        yield Peer(name=peer.name, proc=peer.proc, ports=peer.ports, log=log)
