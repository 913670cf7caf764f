"""An exit node's life in the supervisor: what stops it from starting, every worker
serving its [[exit]], stats under the exit's name, and a reload that adds an exit and
changes who may use another. The client is Python's ssl with a node identity made by
`relaycore identity --init`, so only the exit is under test (tests/e2e/test_tunnel.py
runs the entry node and curl through both).

Everything is on 127.0.0.1; every connection, wait and command has a deadline.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
from control import cli_json, cli_json_lines, connector, own_names, relaycore
from support.relay import relay_process
from support.servers import HOST, EchoServer
from support.unreachable import BlackholeListener

from relaycore.lab.base import free_port, wait_for
from relaycore.lab.pki import NodeIdentity, make_identity

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

IO_TIMEOUT = 10.0
EVENT_TIMEOUT = 15.0
SOCKS5_OK = 0
SOCKS5_NOT_ALLOWED = 2  # RFC 1928 §6: "connection not allowed by ruleset"


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NodeIdentity]:
    base = tmp_path_factory.mktemp("identities")
    return {name: make_identity(base / name, name) for name in ("exit", "entry", "stranger")}


def exit_table(
    name: str,
    port: int,
    node: NodeIdentity,
    allow: list[NodeIdentity],
    target: str,
    extra: str = "",
) -> str:
    pins = ", ".join(f'"{i.pin}"' for i in allow)
    return (
        f'[[exit]]\nname = "{name}"\nlisten = "{HOST}:{port}"\n'
        f'cert = "{node.cert}"\nkey = "{node.key}"\n'
        f'allow = [{pins}]\ntarget = "{target}"\n{extra}\n'
    )


def relay_head(run_dir: Path, workers: int = 1) -> str:
    # Reports five times a second, so that stats and logs show up quickly.
    return f'[relay]\nworkers = {workers}\nrun_dir = "{run_dir}"\n[stats]\ninterval_s = 0.2\n\n'


def tls_to(port: int, identity: NodeIdentity) -> ssl.SSLSocket:
    """A TLS connection to the exit as an entry node with `identity`. The exit's own
    certificate is not checked here: the exit's checks are under test."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(identity.cert, identity.key)
    raw = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
    try:
        return ctx.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


def recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def echoed(port: int, identity: NodeIdentity, payload: bytes) -> bytes:
    with tls_to(port, identity) as s:
        s.sendall(payload)
        return recv_exact(s, len(payload))


def refused(port: int, identity: NodeIdentity) -> bool:
    """True if the exit ends the connection without relaying a byte (TLS 1.3 refuses a
    client certificate after the client's handshake is done: on the first read)."""
    try:
        with tls_to(port, identity) as s:
            s.sendall(b"ping")
            return s.recv(4) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def socks5_reply(
    port: int, identity: NodeIdentity, dest_port: int, host: str = HOST
) -> tuple[int, bytes]:
    """SOCKS5 CONNECT to host:dest_port (an IPv4 address, or a name the exit resolves)
    through the exit; the reply code and, on success, the echo of b"ping"."""
    try:
        address = b"\x01" + socket.inet_aton(host)
    except OSError:
        address = b"\x03" + bytes([len(host)]) + host.encode()
    with tls_to(port, identity) as s:
        s.sendall(b"\x05\x01\x00")
        assert recv_exact(s, 2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00" + address + struct.pack("!H", dest_port))
        reply = recv_exact(s, 10)
        assert reply[:1] == b"\x05", reply
        if reply[1] != SOCKS5_OK:
            return reply[1], b""
        s.sendall(b"ping")
        return SOCKS5_OK, recv_exact(s, 4)


def stats_when(run_dir: Path, name: str, *, opened: int) -> dict[str, object] | None:
    """The stats report once `name` counts `opened` connections, else None."""
    report: dict[str, object] = cli_json("stats", "--run-dir", str(run_dir))
    return report if connector(report, name)["opened"] == opened else None


def causes(run_dir: Path, name: str) -> dict[str, dict[str, object]]:
    """The exit's error records by cause; not the pq_classical notice that every entry here
    (Python's ssl on OpenSSL 3.0, no ML-KEM) brings once."""
    records = cli_json_lines("logs", "--run-dir", str(run_dir), "--connector", name)
    return {r["cause"]: r for r in records if r["cause"] != "pq_classical"}


def test_every_worker_serves_the_exit_and_a_reload_changes_it(tmp_path, ids):
    run_dir = tmp_path / "run"
    x_port, y_port = free_port(), free_port()
    with EchoServer() as echo:
        head = relay_head(run_dir, workers=2)
        config = head + exit_table("x", x_port, ids["exit"], [ids["entry"]], f"{HOST}:{echo.port}")
        with relay_process(config, tmp_path) as relay:
            assert f"x exit {HOST}:{x_port} -> {HOST}:{echo.port}" in relay.output()
            # 16 connections: SO_REUSEPORT spreads them over both workers' sockets (all on
            # one worker would be a 1 in 2^15 chance), and each worker has the exit.
            for k in range(16):
                payload = f"payload {k}".encode()
                assert echoed(x_port, ids["entry"], payload) == payload
            report = wait_for(
                lambda: stats_when(run_dir, "x", opened=16), EVENT_TIMEOUT, "16 opened at x"
            )
            assert [c["name"] for c in report["connectors"]] == ["x"]
            assert refused(x_port, ids["stranger"])
            record = wait_for(
                lambda: causes(run_dir, "x").get("tls_pin_mismatch"),
                EVENT_TIMEOUT,
                "tls_pin_mismatch for the stranger",
            )
            assert ids["stranger"].pin in str(record["reason"]), record

            # Reload: x now admits only the stranger; a new socks5 exit y allows the echo
            # server's port alone (127.0.0.1 is refused by the default policy).
            relay.write_config(
                head
                + exit_table("x", x_port, ids["exit"], [ids["stranger"]], f"{HOST}:{echo.port}")
                + exit_table(
                    "y",
                    y_port,
                    ids["exit"],
                    [ids["entry"]],
                    "socks5",
                    f'allow_destinations = ["{HOST}:{echo.port}"]',
                )
            )
            out = relaycore("reload", "--run-dir", str(run_dir))
            assert out.returncode == 0, (out.stderr, relay.output())
            assert echoed(x_port, ids["stranger"], b"now me") == b"now me"
            assert refused(x_port, ids["entry"])
            assert socks5_reply(y_port, ids["entry"], echo.port) == (SOCKS5_OK, b"ping")
            with socket.socket() as other:
                other.bind((HOST, 0))
                other_port = other.getsockname()[1]
                denied = socks5_reply(y_port, ids["entry"], other_port)
            assert denied == (SOCKS5_NOT_ALLOWED, b"")
            record = wait_for(
                lambda: causes(run_dir, "y").get("proxy_denied"),
                EVENT_TIMEOUT,
                "proxy_denied at exit y",
            )
            assert f"port {other_port}" in str(record["reason"]), record
            stats = cli_json("stats", "--run-dir", str(run_dir))
            assert [c["name"] for c in stats["connectors"]] == ["x", "y"]
            assert connector(stats, "y")["opened"] >= 1


def test_a_name_is_tried_address_by_address(tmp_path, ids):
    # The exit resolves a SOCKS5 name to three addresses, in this order: one refuses, one
    # never answers (its accept queue is full, so the SYN is dropped), the third is the
    # echo server. The exit moves on from a refusal and from a connect timeout alike.
    refusing, silent, serving = "127.0.0.131", "127.0.0.132", "127.0.0.130"
    names = own_names(tmp_path, "".join(f"{ip} multi.test\n" for ip in (refusing, silent, serving)))
    run_dir = tmp_path / "run"
    port = free_port()
    config = (
        relay_head(run_dir)
        + "[timeouts]\nconnect_s = 0.5\n\n"
        + exit_table(
            "x",
            port,
            ids["exit"],
            [ids["entry"]],
            "socks5",
            'allow_destinations = ["127.0.0.0/8"]',
        )
    )
    with EchoServer(host=serving) as echo, socket.socket() as bound_only:
        bound_only.bind((refusing, echo.port))  # reserved, not listening: a SYN gets RST
        with (
            BlackholeListener(host=silent, port=echo.port),
            relay_process(config, tmp_path, wrapper=names),
        ):
            start = time.monotonic()
            assert socks5_reply(port, ids["entry"], echo.port, "multi.test") == (
                SOCKS5_OK,
                b"ping",
            )
            elapsed = time.monotonic() - start
            # Served in the end, so the tries that failed are not logged as failures: the
            # log holds only how this client left (no close_notify), which comes later.
            logged = wait_for(
                lambda: causes(run_dir, "x") or None, EVENT_TIMEOUT, "the client's leaving"
            )
            assert set(logged) == {"tls_truncated"}, logged
    assert elapsed >= 0.5, f"served after {elapsed:.2f}s: the silent address was not tried"
    assert len(echo.connections) == 1


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        pytest.param("garbage-cert", 3, "relaycore: error: exit[0].", id="cert-not-pem"),
        pytest.param(
            "unresolvable",
            4,
            "relaycore: error: exit x: cannot resolve nothing.invalid",
            id="target-does-not-resolve",
        ),
        pytest.param(
            "nobody", 3, "relaycore: error: exit[0].allow: required unless ca", id="no-allow"
        ),
    ],
)
def test_what_stops_an_exit_node_from_starting(tmp_path, ids, case, code, message):
    node = ids["exit"]
    allow = [ids["entry"]]
    target = f"{HOST}:9"
    if case == "garbage-cert":
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / node.cert.name).write_text("not a certificate\n")
        shutil.copy(node.key, bad / node.key.name)
        node = NodeIdentity(bad, node.pin)
    elif case == "unresolvable":
        target = "nothing.invalid:80"
    else:
        allow = []
    path = tmp_path / "relay.toml"
    path.write_text(
        relay_head(tmp_path / "run") + exit_table("x", free_port(), node, allow, target)
    )
    # No name resolves in the node's own name service: the unresolvable target fails
    # without a DNS query leaving the machine.
    out = relaycore("run", "-c", str(path), timeout=60, wrapper=own_names(tmp_path))
    assert out.returncode == code, out.stderr
    assert out.stderr.startswith(message), out.stderr
    assert "Traceback" not in out.stderr
