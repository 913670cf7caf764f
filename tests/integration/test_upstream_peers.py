"""Issue 14's connector features against real servers, through a real `relaycore run`:
ALPN against `openssl s_server -alpn` (which refuses a client offering none of its
protocols), the PROXY protocol received by nginx (`listen ... proxy_protocol`) and HAProxy
(`accept-proxy`) and sent by HAProxy in front of the relay (`send-proxy-v2`), and the Host
rewrite against nginx with a strict server_name. Everything on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from peers import find_binary, openssl_server
from support.relay import relay_process
from support.servers import HOST
from upstream_peers import (
    HAPROXY,
    NGINX,
    haproxy,
    haproxy_accept_proxy,
    haproxy_send_proxy,
    nginx_access,
    nginx_proxy_protocol,
    nginx_strict_host,
)

from relaycore.lab.base import free_port, wait_for
from relaycore.lab.pki import Issued, make_pki

pytestmark = pytest.mark.timeout(120)

needs_openssl = pytest.mark.skipif(find_binary("openssl") is None, reason="no openssl")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx not installed (nginx-light)")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (haproxy)")

IO_TIMEOUT = 10.0
WAIT = 10.0
Value = str | int | bool | list[str]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Issued]:
    """(CA, a server certificate for api.test and localhost)."""
    ca = make_pki(tmp_path_factory.mktemp("upstream-pki"))
    return ca.ca_cert, ca.issue("api.test", dns=["api.test", "localhost"])


def relay_config(run_dir: Path, connector_keys: Mapping[str, Value]) -> str:
    """One worker reporting five times a second, and one [[connector]] (JSON strings,
    lists and booleans are TOML too)."""
    keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in connector_keys.items())
    return (
        f"[relay]\nworkers = 1\nrun_dir = {json.dumps(str(run_dir))}\n"
        f"[timeouts]\nconnect_s = 2\nhandshake_s = 2\n[stats]\ninterval_s = 0.2\n"
        f"[[connector]]\n{keys}"
    )


def stats_of(run_dir: Path, name: str) -> dict[str, Any]:
    """`relaycore stats --json`'s entry for connector `name`."""
    out = subprocess.run(
        [sys.executable, "-m", "relaycore", "stats", "--run-dir", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    [found] = [c for c in json.loads(out.stdout)["connectors"] if c["name"] == name]
    return dict(found)


def http_get(port: int, host: str = "1.2.3.4", path: str = "/") -> tuple[str, str]:
    """A device's GET to the relay, `Host: host` (the dummy IP it dialled); (status line,
    body). Also which local port it used: see device_get."""
    return device_get(port, host, path)[:2]


def device_get(port: int, host: str = "1.2.3.4", path: str = "/") -> tuple[str, str, int]:
    with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as s:
        local = s.getsockname()[1]
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body, local


# -- ALPN ------------------------------------------------------------------------------------


@needs_openssl
def test_alpn_is_offered_agreed_and_counted_or_refused_with_its_cause(tmp_path, pki):
    ca, cert = pki
    listen, refused = free_port(), free_port()
    run_dir = tmp_path / "run"
    with openssl_server(tmp_path / "s", free_port(), cert, extra=["-alpn", "x-amzn-mqtt-ca"]) as up:
        config = relay_config(
            run_dir,
            {
                "name": "iot",
                "listen": f"{HOST}:{listen}",
                "upstream": f"{HOST}:{up.port}",
                "server_name": "localhost",
                "ca": str(ca),
                "alpn": ["x-amzn-mqtt-ca"],
            },
        ) + (
            f'[[connector]]\nname = "https"\nlisten = "{HOST}:{refused}"\n'
            f'upstream = "{HOST}:{up.port}"\nserver_name = "localhost"\nca = "{ca}"\n'
            'alpn = ["x-amzn-http-ca"]\n'
        )
        with relay_process(config, tmp_path) as relay:
            status, _ = http_get(listen)
            assert status == "HTTP/1.0 200 ok"
            iot = wait_for(
                lambda: (c := stats_of(run_dir, "iot")) and c["alpn"] and c,
                WAIT,
                "the agreed protocol in stats",
            )
            assert iot["alpn"] == {"x-amzn-mqtt-ca": 1}
            with pytest.raises(OSError):
                http_get(refused)
            line = relay.wait_line(r"connector https: tls_alpn_refused: ", WAIT)
    assert "the server sent alert 120: no application protocol" in line, line


# -- PROXY protocol --------------------------------------------------------------------------


@needs_nginx
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_nginx_reads_the_devices_address_from_the_proxy_header(tmp_path, pki, version, tls):
    ca, cert = pki
    listen = free_port()
    with nginx_proxy_protocol(tmp_path / "nginx", free_port(), cert if tls else None) as up:
        keys: dict[str, Value] = {
            "name": "pp",
            "listen": f"{HOST}:{listen}",
            "upstream": f"{HOST}:{up.port}",
            "proxy_protocol": version,
        }
        keys.update({"server_name": "api.test", "ca": str(ca)} if tls else {"tls": False})
        with relay_process(relay_config(tmp_path / "run", keys), tmp_path):
            status, body, local = device_get(listen)
    assert status == "HTTP/1.1 200 OK"
    assert body == f"{HOST}:{local} {HOST}:{listen}\n"


@needs_haproxy
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_accepts_the_proxy_header_before_the_client_hello(tmp_path, pki, version):
    ca, cert = pki
    listen, port = free_port(), free_port()
    with haproxy(tmp_path / "haproxy", port, haproxy_accept_proxy(tmp_path / "h", port, cert)):
        keys: dict[str, Value] = {
            "name": "pp",
            "listen": f"{HOST}:{listen}",
            "upstream": f"{HOST}:{port}",
            "proxy_protocol": version,
            "server_name": "api.test",
            "ca": str(ca),
        }
        with relay_process(relay_config(tmp_path / "run", keys), tmp_path) as relay:
            status, body, local = device_get(listen)
            problems = [x for x in relay.lines if " WARNING " in x]
    assert status == "HTTP/1.1 200 OK", body
    assert body == f"{HOST}:{local} {HOST}:{listen}\n"
    assert problems == []


@needs_haproxy
@needs_nginx
def test_a_balancers_header_is_read_and_passed_on(tmp_path, pki):
    """HAProxy in front (send-proxy-v2) -> relaycore (accept_proxy, proxy_protocol v1) ->
    nginx (proxy_protocol): nginx sees the device HAProxy saw, and the address the
    device dialled at HAProxy."""
    ca, cert = pki
    listen, front = free_port(), free_port()
    with (
        nginx_proxy_protocol(tmp_path / "nginx", free_port(), cert) as up,
        haproxy(tmp_path / "haproxy", front, haproxy_send_proxy(front, listen)),
    ):
        keys: dict[str, Value] = {
            "name": "lb",
            "listen": f"{HOST}:{listen}",
            "upstream": f"{HOST}:{up.port}",
            "accept_proxy": True,
            "proxy_protocol": "v1",
            "server_name": "api.test",
            "ca": str(ca),
        }
        with relay_process(relay_config(tmp_path / "run", keys), tmp_path):
            status, body, local = device_get(front)
    assert status == "HTTP/1.1 200 OK", body
    assert body == f"{HOST}:{local} {HOST}:{front}\n"


# -- Host rewrite ----------------------------------------------------------------------------


def web_connector(listen: int, port: int, ca: Path, rewrite: bool) -> dict[str, Value]:
    """A TLS connector to api.test on port, with the Host rewrite or without."""
    keys: dict[str, Value] = {
        "name": "web",
        "listen": f"{HOST}:{listen}",
        "upstream": f"{HOST}:{port}",
        "server_name": "api.test",
        "ca": str(ca),
    }
    if rewrite:
        keys["http_host"] = "rewrite"
    return keys


@needs_nginx
@pytest.mark.parametrize("rewrite", [True, False], ids=["rewrite", "as-sent"])
def test_a_strict_virtual_host_takes_the_device_only_with_the_rewrite(tmp_path, pki, rewrite):
    """The device dialled a dummy address and says `Host: 1.2.3.4`; nginx serves only
    api.test and answers anything else 421. With http_host = "rewrite", every request of
    the kept-alive connection reaches nginx as Host: api.test:<port>."""
    ca, cert = pki
    listen, port = free_port(), free_port()
    with nginx_strict_host(tmp_path / "nginx", port, "api.test", cert):
        keys = web_connector(listen, port, ca, rewrite)
        with (
            relay_process(relay_config(tmp_path / "run", keys), tmp_path),
            socket.create_connection((HOST, listen), timeout=IO_TIMEOUT) as s,
        ):
            # Two requests pipelined in one write, then a third on the same connection.
            s.sendall(
                b"GET /a HTTP/1.1\r\nHost: 1.2.3.4\r\n\r\n"
                b"POST /b HTTP/1.1\r\nhost: 1.2.3.4\r\nContent-Length: 5\r\n\r\nhello"
            )
            s.sendall(b"GET /c HTTP/1.1\r\nHost: 1.2.3.4\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        access = wait_for(
            lambda: len(nginx_access(tmp_path / "nginx")) == 3 and nginx_access(tmp_path / "nginx"),
            WAIT,
            "3 requests in nginx's log",
        )
    statuses = re.findall(r"HTTP/1\.1 \d+ [^\r]*", data.decode())
    if rewrite:
        assert statuses == ["HTTP/1.1 200 OK"] * 3, data
        assert access == [
            f"api.test|api.test:{port}|GET /a HTTP/1.1",
            f"api.test|api.test:{port}|POST /b HTTP/1.1",
            f"api.test|api.test:{port}|GET /c HTTP/1.1",
        ]
    else:
        assert statuses == ["HTTP/1.1 421 Misdirected Request"] * 3, data


CURL = find_binary("curl")


@needs_nginx
@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_curl_posts_a_large_body_with_expect_100_continue(tmp_path, pki):
    """curl sends `Expect: 100-continue` before a large body and waits for nginx's 100
    Continue: the rewritten head reaches nginx alone, then the body streams through."""
    ca, cert = pki
    listen, port = free_port(), free_port()
    body = tmp_path / "firmware.bin"
    body.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    with nginx_strict_host(tmp_path / "nginx", port, "api.test", cert):
        keys = web_connector(listen, port, ca, rewrite=True)
        with relay_process(relay_config(tmp_path / "run", keys), tmp_path):
            out = subprocess.run(
                [
                    CURL or "curl",
                    "-sS",
                    "-v",
                    "-H",
                    "Host: 1.2.3.4",
                    "--data-binary",
                    f"@{body}",
                    f"http://{HOST}:{listen}/upload",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        access = wait_for(lambda: nginx_access(tmp_path / "nginx"), WAIT, "nginx's access log")
    assert out.returncode == 0, out.stderr
    assert "> Expect: 100-continue" in out.stderr
    assert "< HTTP/1.1 100 Continue" in out.stderr
    assert out.stdout == "host=api.test\n"
    assert access == [f"api.test|api.test:{port}|POST /upload HTTP/1.1"]
