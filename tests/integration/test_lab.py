"""relaycore.lab's pieces on their own: the recording HTTPS server, the bounded wait, the
relay process's start-up errors. The demo and most tests stand on them, so what they
promise (what is recorded, that stop() leaves no thread or fd behind, that a wait ends at
its deadline) is checked here against real sockets and a real `relaycore run`."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from relaycore.errors import StartupError
from relaycore.lab.base import HOST, free_port, wait_for
from relaycore.lab.https import Failure, HttpsUpstream, Reply, json_echo, pages
from relaycore.lab.pki import Issued, Pki, make_pki
from relaycore.lab.relay import RelayProcess

IO_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("lab-pki"), "Lab Test CA")


@pytest.fixture(scope="module")
def server_cert(pki: Pki) -> Issued:
    return pki.issue("api.test", dns=["api.test"])


def client_context(pki: Pki, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if client is not None:
        context.load_cert_chain(client.chain, client.key)
    return context


def https_to(port: int, context: ssl.SSLContext) -> http.client.HTTPConnection:
    """An HTTPS connection to 127.0.0.1:port that checks the name api.test (also its SNI)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
    raw = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
    try:
        conn.sock = context.wrap_socket(raw, server_hostname="api.test")
    except BaseException:
        raw.close()
        raise
    return conn


def get(
    port: int, path: str, context: ssl.SSLContext, method: str = "GET", body: bytes = b""
) -> tuple[int, bytes]:
    conn = https_to(port, context)
    try:
        conn.request(method, path, body, {"Host": "api.test"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_pages_are_served_and_each_request_recorded(pki: Pki, server_cert: Issued) -> None:
    answer = pages({"/page": b"the page\n"})
    with HttpsUpstream(server_cert.chain, server_cert.key, answer=answer) as https:
        assert get(https.port, "/page", client_context(pki)) == (200, b"the page\n")
        assert get(https.port, "/other", client_context(pki)) == (404, b"not found\n")
        first, second = https.requests
        assert (first.path, first.host, first.sni, first.peer) == (
            "/page",
            "api.test",
            "api.test",
            HOST,
        )
        assert first.tls_version == "TLSv1.3"
        assert second.path == "/other"
        assert [leg.number for leg in https.legs] == [1, 2]
        assert all(leg.client_cn is None for leg in https.legs)
        assert https.failures == []


def test_json_echo_says_what_came_and_the_client_certificate_is_recorded(
    pki: Pki, server_cert: Issued
) -> None:
    client = pki.issue("device-9", client=True)
    seen: list[str] = []
    with HttpsUpstream(server_cert.chain, server_cert.key, client_ca=pki.ca_cert) as https:
        https.on_request = lambda got: seen.append(got.request_line)
        status, body = get(https.port, "/t", client_context(pki, client), "POST", b"12345")
        assert status == 200
        assert json_echo(https.requests[0]).body == body
        assert b'"body_bytes": 5' in body
        (got,) = https.requests
        assert (got.method, got.body, got.leg.client_cn) == ("POST", b"12345", "device-9")
    assert seen == ["POST /t HTTP/1.1"]


def test_a_failed_handshake_is_a_failure_not_a_request(server_cert: Issued) -> None:
    failures: list[Failure] = []
    with HttpsUpstream(server_cert.chain, server_cert.key) as https:
        https.on_failure = failures.append
        with socket.create_connection((HOST, https.port), timeout=IO_TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
            # An alert, EOF or a reset (the request is left unread): the server is done.
            with contextlib.suppress(ConnectionResetError):
                sock.recv(1024)
        wait_for(lambda: https.failures, IO_TIMEOUT, "the failure to be recorded")
        assert https.requests == []
    (failure,) = failures
    assert failure.stage == "handshake"
    assert failure.peer == HOST
    assert str(failure).startswith(f"TLS handshake with {HOST}:")


def test_stop_ends_idle_and_silent_connections_at_once(pki: Pki, server_cert: Issued) -> None:
    """A kept-alive connection waiting for its next request, and a client that connected
    but never sent a ClientHello: stop() wakes both threads, well before their timeouts
    (the autouse fixture then finds no thread or fd left)."""
    https = HttpsUpstream(server_cert.chain, server_cert.key, answer=lambda got: Reply(200, b"ok"))
    with https:
        kept = https_to(https.port, client_context(pki))
        silent = socket.create_connection((HOST, https.port), timeout=IO_TIMEOUT)
        try:
            kept.request("GET", "/", headers={"Host": "api.test"})
            assert kept.getresponse().read() == b"ok"
            # Each connection's thread is named after the client's port.
            silent_thread = f"https-{silent.getsockname()[1]}"
            wait_for(
                lambda: any(t.name == silent_thread for t in threading.enumerate()),
                IO_TIMEOUT,
                "the silent connection to be accepted",
            )
            started = time.monotonic()
            https.stop()
            assert time.monotonic() - started < 2.0
            assert silent.recv(1) == b""  # shut down from the server's side
        finally:
            kept.close()
            silent.close()
    assert https.failures == []


def test_wait_for_returns_the_first_true_value_or_names_what_it_waited_for() -> None:
    values = iter([0, None, "", "found", "later"])
    assert wait_for(lambda: next(values), 5.0, "a value", interval=0.001) == "found"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="waiting for godot"):
        wait_for(lambda: False, 0.1, "godot")
    assert time.monotonic() - started < 2.0


def test_a_relay_that_cannot_start_says_why(tmp_path: Path) -> None:
    """The port is taken: the relay exits 4, and wait_ready says so with its last line;
    every line also went to on_line."""
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nworkers = 1\nrun_dir = "{tmp_path / "run"}"\n\n[[connector]]\nname = "t"\n'
        f'listen = "{HOST}:{port}"\nupstream = "{HOST}:9"\ntls = false\n'
    )
    seen: list[str] = []
    with socket.socket() as blocker:
        blocker.bind((HOST, port))
        blocker.listen(1)
        relay = RelayProcess(config, cwd=tmp_path)
        relay.on_line = seen.append
        with relay, pytest.raises(StartupError, match="exited with code 4 before it was ready"):
            relay.wait_ready(20.0)
    assert relay.proc.returncode == 4
    assert seen == relay.lines
    assert any("Address already in use" in line for line in seen), seen
    with pytest.raises(TimeoutError, match="before its output ended"):
        relay.wait_line("ready generation=", 1.0)
