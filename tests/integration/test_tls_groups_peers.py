"""The key exchange with servers on the system's OpenSSL 3.0, which has no ML-KEM: nginx and
`openssl s_server` get X25519 from relaycore's default offer (the hybrid group first, an
X25519 key share next), with no failed handshake, and the relay counts it by group in
`relaycore stats --json` and Prometheus, and says so once in its log (pq_classical).
relaycore's own peers on OpenSSL 3.5 get the hybrid group: tests/ext/test_tls_groups.py,
tests/e2e/test_tunnel_groups.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from peers import NginxServer, nginx_https, openssl_server
from support.relay import relay_process
from support.servers import HOST, EchoServer, tls_server_context
from test_tls_peers import (  # noqa: F401 (the certs fixture)
    LOG_TIMEOUT,
    certs,
    connector,
    curl,
    http_get_raw,
    needs_nginx,
    needs_openssl,
    relay_toml,
    wait_relay_line,
)

from relaycore.lab.base import free_port, wait_for

METRIC = "relaycore_tls_handshake_groups_total"


def cli_json(command: str, run_dir: Path) -> str:
    """What `relaycore COMMAND --json` prints."""
    out = subprocess.run(
        [sys.executable, "-m", "relaycore", command, "--json", "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout


def cli_stats(run_dir: Path) -> dict[str, Any]:
    """`relaycore stats --json`."""
    report: dict[str, Any] = json.loads(cli_json("stats", run_dir))
    return report


def stats_groups(run_dir: Path, name: str) -> dict[str, int]:
    """The connector's handshakes by group, as `relaycore stats --json` prints them."""
    [stats] = [c for c in cli_stats(run_dir)["connectors"] if c["name"] == name]
    groups: dict[str, int] = stats["groups"]
    return groups


def with_prometheus(toml: str, port: int) -> str:
    return toml + f'\n[stats]\ninterval_s = 0.2\nprometheus = "{HOST}:{port}"\n'


def metric_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
    return [line for line in text.splitlines() if line.startswith(METRIC + "{")]


@needs_openssl
def test_s_server_gets_x25519(tmp_path, certs):  # noqa: F811
    listen, prom = free_port(), free_port()
    with (
        openssl_server(tmp_path / "s_server", free_port(), certs.localhost) as up,
        relay_process(
            with_prometheus(
                relay_toml(
                    tmp_path / "run",
                    [connector("s-server", listen, up.port, server_name="localhost", ca=certs.ca)],
                ),
                prom,
            ),
            tmp_path,
        ) as relay,
    ):
        page = http_get_raw(listen)
        groups = wait_for(
            lambda: stats_groups(tmp_path / "run", "s-server") or None, LOG_TIMEOUT, "stats"
        )
        lines = metric_lines(prom)
        notice = wait_relay_line(relay, r"connector s-server: pq_classical: ")
    assert page.startswith("HTTP/1.0 200 ok\r\n"), page[:300]
    assert "\nNew, TLSv1.3, Cipher is " in page, page
    assert groups == {"X25519": 1}, groups
    assert lines == [f'{METRIC}{{connector="s-server",group="X25519"}} 1'], lines
    assert "the server chose x25519 (TLSv1.3)" in notice, notice


@needs_nginx
def test_nginx_gets_x25519_and_says_so(tmp_path, certs):  # noqa: F811
    listen = free_port()
    with (
        nginx_https(
            tmp_path / "nginx",
            free_port(),
            [NginxServer(None, certs.localhost)],
            log_format="$ssl_protocol $ssl_curve $request",
        ) as up,
        relay_process(
            relay_toml(
                tmp_path / "run",
                [connector("web", listen, up.port, server_name="localhost", ca=certs.ca)],
            ),
            tmp_path,
        ),
    ):
        fetched, _ = curl(f"http://{HOST}:{listen}/hello")
        wait_for(lambda: up.access_lines(), LOG_TIMEOUT, "nginx's access log")
        groups = wait_for(
            lambda: stats_groups(tmp_path / "run", "web") or None, LOG_TIMEOUT, "stats"
        )
    assert (fetched.returncode, fetched.stdout) == (0, "hello localhost\n"), fetched
    assert up.access_lines() == ["TLSv1.3 X25519 GET /hello HTTP/1.1"]
    assert groups == {"X25519": 1}, groups


def test_a_classical_server_is_one_info_line_however_many_workers_saw_it(
    tmp_path,
    certs,  # noqa: F811
):
    # Two workers each meet the OpenSSL 3.0 server and each report pq_classical once: the
    # error log counts both, the supervisor logs the notice once, at INFO (not a failure).
    listen, run_dir = free_port(), tmp_path / "run"
    context = tls_server_context(certs.localhost.cert, certs.localhost.key)
    toml = relay_toml(
        run_dir, [connector("old", listen, 0, server_name="localhost", ca=certs.ca)]
    ).replace("workers = 1", "workers = 2")
    with (
        EchoServer(tls=context) as up,
        relay_process(toml.replace(f"{HOST}:0", f"{HOST}:{up.port}"), tmp_path) as relay,
    ):

        def both_workers_reported() -> bool:
            with socket.create_connection((HOST, listen), timeout=5) as s:
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"
            records = [json.loads(line) for line in cli_json("logs", run_dir).splitlines()]
            return [(r["cause"], r["count"]) for r in records] == [("pq_classical", 2)]

        wait_for(both_workers_reported, 30, "a pq_classical record from each worker")
        lines = [line for line in relay.lines if ": pq_classical: " in line]
        [stats] = [c for c in cli_stats(run_dir)["connectors"] if c["name"] == "old"]
    assert (stats["errors"], stats["notices"]) == ({}, {"pq_classical": 2}), stats
    assert len(lines) == 1, lines
    assert " INFO connector old: pq_classical: " in lines[0], lines
