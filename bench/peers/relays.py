"""The relays under comparison: relaycore and its peers, each started from a config file.

Every relay forwards named routes: route name -> (listen port, upstream address). It runs
as its own process group (start_new_session), logs to a file in its work dir (never a
line per connection), and is stopped with SIGTERM, then SIGKILL to its group. The CPU
time and memory of a relay are those of its process tree (see run.py).

Settings common to all, for a fair comparison (bench/README.md, "Side by side"):
  * 2 workers: relaycore `workers = 2`, HAProxy `nbthread 2`, nginx `worker_processes 2`;
    stunnel has a thread per connection in one process; socat forks a process per
    connection.
  * TLS to the upstream verified: the bench CA, the name "localhost" checked, and sent
    as SNI; TLS session reuse to the upstream on (HAProxy: its default; nginx:
    proxy_ssl_session_reuse on; stunnel: sessionResume, its default).
  * No log line per connection.
  * Otherwise each relay's defaults (buffer sizes included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from relaycore.lab.relay import RelayProcess

HOST = "127.0.0.1"
SERVER_NAME = "localhost"
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

Routes = dict[str, tuple[int, tuple[str, int]]]


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (from /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                count += 1
    return count


def wait_listening(ports: list[int], count: int, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(listening_sockets(p) >= count for p in ports):
            return
        if not alive():
            raise RuntimeError("exited before it listened")
        time.sleep(0.05)
    raise RuntimeError(f"not listening on {ports} after {START_TIMEOUT_S:.0f} s")


class Relay:
    """A relay under test. Subclasses write their config and command line."""

    name = "?"
    label = "?"
    tls = True
    # Listening sockets per port once ready (SO_REUSEPORT: one per worker).
    sockets_per_port = 1

    def __init__(self, workdir: Path, ca: Path | None) -> None:
        self.workdir = workdir
        self.ca = ca
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.notes: list[str] = []

    # -- to override
    def commands(self, routes: Routes) -> list[list[str]]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.label

    # -- common
    def addresses(self, routes: Routes) -> dict[str, list[tuple[str, int]]]:
        """Where the client connects for each route (more than one address: the client
        spreads its connections over them)."""
        return {name: [(HOST, port)] for name, (port, _) in routes.items()}

    def start(self, routes: Routes) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for k, cmd in enumerate(self.commands(routes)):
            log = self.workdir / f"{self.name}-{k}.log"
            self.logs.append(log)
            with open(log, "wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        cwd=self.workdir,
                    )
                )
        try:
            ports = [p for addrs in self.addresses(routes).values() for _, p in addrs]
            wait_listening(ports, self.sockets_per_port, self.alive)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{self.label}: {exc}\n{self.tail()}") from None

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def root_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            # The group we created for it (start_new_session): its workers or children.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = []

    def tail(self, n: int = 15) -> str:
        lines: list[str] = []
        for log in self.logs:
            if log.exists():
                lines += log.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)


class Relaycore(Relay):
    """`python -m relaycore run -c relay.toml`, workers = 2 (relaycore.lab.relay.RelayProcess).
    `workers`, `max_connections` and `idle_s` for the scale bench (bench/peers/scale.py)."""

    def describe(self) -> str:
        return f"{self.label} (a supervisor and {self.workers} worker processes)"

    name = "relaycore"
    label = "relaycore"
    sockets_per_port = 2

    def __init__(
        self,
        workdir: Path,
        ca: Path | None,
        *,
        splice: str | None = None,
        tls: bool = True,
        workers: int = 2,
        max_connections: int | None = None,
        idle_s: float | None = None,
        pq: str | None = None,
        groups: str | None = None,
        io: str | None = None,
        name: str | None = None,
    ) -> None:
        """`pq`, `groups`: the connectors' keys (None: left out, relaycore's default, the
        hybrid group first); `io`: [relay] io (None: left out, epoll); `name` tells such a
        variant apart in the report."""
        super().__init__(workdir, ca)
        self.splice = splice
        self.tls = tls
        self.workers = workers
        self.max_connections = max_connections
        self.idle_s = idle_s
        self.pq = pq
        self.groups = groups
        self.io = io
        if splice is not None:
            self.name = f"relaycore-{'copy' if splice == 'off' else 'splice'}"
            self.label = f'relaycore, splice = "{splice}"'
        if name is not None:
            self.name = name
            keys = [
                f'{k} = "{v}"'
                for k, v in (("splice", splice), ("pq", pq), ("groups", groups), ("io", io))
                if v
            ]
            self.label = f"relaycore, {', '.join(keys)}"
        self.relay: RelayProcess | None = None
        self.problems: list[str] = []

    def config(self, routes: Routes) -> str:
        lines = [
            "[relay]",
            f"workers = {self.workers}",
            f"run_dir = {json.dumps(str(self.workdir / 'run'))}",
            "drain_timeout_s = 2",
        ]
        if self.splice is not None:
            lines.append(f'splice = "{self.splice}"')
        if self.io is not None:
            lines.append(f'io = "{self.io}"')
        if self.max_connections is not None:
            lines.append(f"max_connections = {self.max_connections}")
        if self.idle_s is not None:
            lines += ["[timeouts]", f"idle_s = {self.idle_s}"]
        for name, (port, upstream) in routes.items():
            lines += [
                "",
                "[[connector]]",
                f'name = "{name}"',
                f'listen = "{HOST}:{port}"',
                f'upstream = "{upstream[0]}:{upstream[1]}"',
            ]
            if self.tls:
                lines += [f'server_name = "{SERVER_NAME}"', f"ca = {json.dumps(str(self.ca))}"]
                if self.pq is not None:
                    lines.append(f'pq = "{self.pq}"')
                if self.groups is not None:
                    lines.append(f'groups = "{self.groups}"')
            else:
                lines.append("tls = false")
        return "\n".join(lines) + "\n"

    def start(self, routes: Routes) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "relay.toml"
        path.write_text(self.config(routes))
        self.relay = RelayProcess(path)
        self.relay.on_line = lambda line: (
            self.problems.append(line) if " WARNING " in line or " ERROR " in line else None
        )
        self.relay.start()
        try:
            self.relay.wait_ready(START_TIMEOUT_S)
        except Exception as exc:
            tail = "\n".join(self.relay.tail())
            self.relay.stop(STOP_TIMEOUT_S)
            raise RuntimeError(f"relaycore did not start: {exc}\n{tail}") from None

    def alive(self) -> bool:
        return self.relay is not None and self.relay.wait(0) is None

    def root_pids(self) -> list[int]:
        return [self.relay.pid] if self.relay is not None else []

    def stop(self) -> None:
        if self.relay is None:
            return
        code = self.relay.stop(STOP_TIMEOUT_S)
        if code != 0:
            self.problems.append(f"exit code {code} on SIGTERM")
        self.relay = None

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.relay.tail(n)) if self.relay is not None else ""


class HAProxy(Relay):
    """haproxy -db -f haproxy.cfg: one process, `nbthread 2`, mode tcp. `procs = 2` (the
    idle test: 10,000 connections need 20,000 fds, more than one process may open here)
    runs two processes of one thread each on the same ports (HAProxy binds with
    SO_REUSEPORT by default)."""

    name = "haproxy"
    label = "HAProxy"

    def __init__(
        self,
        workdir: Path,
        ca: Path | None,
        *,
        tls: bool = True,
        splice: bool = False,
        procs: int = 1,
    ) -> None:
        super().__init__(workdir, ca)
        self.tls = tls
        self.splice = splice
        self.nprocs = procs
        self.sockets_per_port = procs
        if splice:
            self.name = "haproxy-splice"
            self.label = "HAProxy, splice-auto"

    def config(self, routes: Routes) -> str:
        threads = 2 if self.nprocs == 1 else 1
        lines = [
            "global",
            f"    nbthread {threads}",
            # Per process; 2 fds a connection (and with splice, maxconn / 4 pipes of 2
            # more), 20,000 fds at most per process here.
            f"    maxconn {7000 if self.splice else 9000}",
            "defaults",
            "    mode tcp",
            "    timeout connect 10s",
            "    timeout client 900s",
            "    timeout server 900s",
        ]
        if self.splice:
            lines.append("    option splice-auto")
        for name, (port, upstream) in routes.items():
            server = f"    server s {upstream[0]}:{upstream[1]}"
            if self.tls:
                server += (
                    f" ssl verify required ca-file {self.ca} sni str({SERVER_NAME})"
                    f" verifyhost {SERVER_NAME}"
                )
            lines += [
                f"frontend f_{name}",
                f"    bind {HOST}:{port}",
                f"    default_backend b_{name}",
                f"backend b_{name}",
                server,
            ]
        return "\n".join(lines) + "\n"

    def commands(self, routes: Routes) -> list[list[str]]:
        path = self.workdir / "haproxy.cfg"
        path.write_text(self.config(routes))
        return [["haproxy", "-db", "-f", str(path)] for _ in range(self.nprocs)]

    def describe(self) -> str:
        if self.nprocs == 1:
            return f"{self.label} (1 process, nbthread 2)"
        return f"{self.label} ({self.nprocs} processes, nbthread 1 each)"


class Nginx(Relay):
    """nginx with the stream module: `worker_processes 2`, `listen ... reuseport`."""

    name = "nginx"
    label = "nginx"
    sockets_per_port = 2

    def __init__(self, workdir: Path, ca: Path | None, *, tls: bool = True) -> None:
        super().__init__(workdir, ca)
        self.tls = tls

    def describe(self) -> str:
        return f"{self.label} (a master and 2 worker processes)"

    def config(self, routes: Routes) -> str:
        lines = [
            f"load_module {NGINX_STREAM_MODULE};",
            "worker_processes 2;",
            "worker_rlimit_nofile 20000;",
            "daemon off;",
            "master_process on;",
            f"pid {self.workdir / 'nginx.pid'};",
            f"error_log {self.workdir / 'error.log'} error;",
            "events { worker_connections 19000; }",
            "stream {",
            "    proxy_connect_timeout 10s;",
            "    proxy_timeout 900s;",
            # The sink answers after the client's EOF: forward it as a half close
            # (default off: nginx would close both directions at the first EOF).
            "    proxy_half_close on;",
        ]
        if self.tls:
            lines += [
                "    proxy_ssl on;",
                "    proxy_ssl_verify on;",
                f"    proxy_ssl_trusted_certificate {self.ca};",
                f"    proxy_ssl_name {SERVER_NAME};",
                "    proxy_ssl_server_name on;",
                "    proxy_ssl_session_reuse on;",
                "    proxy_ssl_protocols TLSv1.2 TLSv1.3;",
            ]
        for port, upstream in routes.values():
            lines.append(
                f"    server {{ listen {HOST}:{port} reuseport;"
                f" proxy_pass {upstream[0]}:{upstream[1]}; }}"
            )
        lines.append("}")
        return "\n".join(lines) + "\n"

    def commands(self, routes: Routes) -> list[list[str]]:
        path = self.workdir / "nginx.conf"
        path.write_text(self.config(routes))
        return [
            [
                "nginx",
                "-p",
                str(self.workdir),
                "-c",
                str(path),
                "-e",
                str(self.workdir / "error.log"),
            ]
        ]


class Stunnel(Relay):
    """stunnel in client mode: one process, a thread per connection (its model: no worker
    count to set). `procs = 2` (the idle test, for the fd limit) runs two processes on
    two ports, since stunnel 5.68 cannot set SO_REUSEPORT; the client then spreads its
    connections over both."""

    name = "stunnel"
    label = "stunnel"

    def __init__(self, workdir: Path, ca: Path | None, *, procs: int = 1) -> None:
        super().__init__(workdir, ca)
        self.nprocs = procs
        self.extra_ports: dict[str, list[int]] = {}

    def set_extra_ports(self, ports: dict[str, list[int]]) -> None:
        """For procs > 1: the listen ports of processes 2.. for each route."""
        self.extra_ports = ports

    def addresses(self, routes: Routes) -> dict[str, list[tuple[str, int]]]:
        out = super().addresses(routes)
        for name, ports in self.extra_ports.items():
            out[name] += [(HOST, p) for p in ports[: self.nprocs - 1]]
        return out

    def config(self, routes: Routes, k: int) -> str:
        lines = ["foreground = yes", "pid =", "syslog = no", "debug = 3"]
        for name, (port, upstream) in routes.items():
            listen = port if k == 0 else self.extra_ports[name][k - 1]
            lines += [
                f"[{name}]",
                "client = yes",
                f"accept = {HOST}:{listen}",
                f"connect = {upstream[0]}:{upstream[1]}",
                f"CAfile = {self.ca}",
                "verifyChain = yes",
                f"checkHost = {SERVER_NAME}",
                f"sni = {SERVER_NAME}",
                "TIMEOUTidle = 900",
            ]
        return "\n".join(lines) + "\n"

    def commands(self, routes: Routes) -> list[list[str]]:
        cmds = []
        for k in range(self.nprocs):
            path = self.workdir / f"stunnel-{k}.conf"
            path.write_text(self.config(routes, k))
            cmds.append(["stunnel", str(path)])
        return cmds

    def describe(self) -> str:
        if self.nprocs == 1:
            return f"{self.label} (1 process, a thread per connection)"
        return f"{self.label} ({self.nprocs} processes, a thread per connection)"


class Socat(Relay):
    """socat TCP-LISTEN,fork: plain TCP only, a process per connection (default 8 KiB
    buffer)."""

    name = "socat"
    label = "socat"
    tls = False

    def commands(self, routes: Routes) -> list[list[str]]:
        return [
            [
                "socat",
                "-lf",
                str(self.workdir / "socat.log"),
                f"TCP4-LISTEN:{port},bind={HOST},reuseaddr,fork,backlog=4096,nodelay",
                f"TCP4:{upstream[0]}:{upstream[1]},nodelay",
            ]
            for port, upstream in routes.values()
        ]

    def describe(self) -> str:
        return f"{self.label} (fork per connection)"


class Direct(Relay):
    """No relay: the client connects to the upstream peers themselves (with `tls`: the
    client speaks TLS itself, the direct TLS reference)."""

    name = "direct"
    label = "direct"

    def __init__(self, workdir: Path, ca: Path | None, *, tls: bool = False) -> None:
        super().__init__(workdir, ca)
        self.tls = tls
        if tls:
            self.name = "direct-tls"
            self.label = "direct, client speaks TLS"
        else:
            self.label = "direct, plain"

    def addresses(self, routes: Routes) -> dict[str, list[tuple[str, int]]]:
        return {name: [upstream] for name, (_, upstream) in routes.items()}

    def start(self, routes: Routes) -> None:
        pass

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def root_pids(self) -> list[int]:
        return []
