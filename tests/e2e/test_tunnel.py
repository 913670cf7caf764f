"""Tunnel mode end to end: two real `relaycore run` processes, an exit node and an entry
node, each with its own identity (`relaycore identity --init`), config and run_dir, a local
HTTPS server, and curl as the device.

    curl --(plain TCP: SOCKS5 / CONNECT / the device's own TLS)--> entry connector
         --(TLS, each side pinned by the other)--> [[exit]] --(TCP)--> HTTPS server

The entry is a plain connector whose upstream is the exit, with `pin` = the exit's pin and
its own identity as `cert`/`key`; the exit allows the entry's pin. curl's TLS to the
server travels inside that tunnel untouched: curl checks the server's certificate against
the test CA (which neither node's self-signed identity chains to), and the server sees
curl's SNI. Names are resolved at the exit: curl is told (`--resolve`) that the server's
name is 127.0.0.2, where nothing listens, and still reaches the server at 127.0.0.1, so
the name, not an address, went through the tunnel.

Refusals are read as an operator reads them, from `relaycore logs --json` of the node that
refused. Everything is on 127.0.0.0/8; every curl, read and wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from control import cli_json_lines, relaycore
from support.relay import relay_process
from support.servers import HOST

from relaycore.lab.base import free_port, wait_for
from relaycore.lab.https import HttpsUpstream, pages
from relaycore.lab.pki import Issued, NodeIdentity, Pki, make_identity, make_pki
from relaycore.lab.relay import RelayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CURL_TIMEOUT = 10.0
# Workers drain their error events every 200 ms and report them every second.
EVENT_TIMEOUT = 15.0
PAGE_PATH = "/page"
PAGE = b"relaycore tunnel test page: the server's own bytes\n"
# Where curl is told the server's name points (--resolve). Nothing listens there: a
# request that arrives means the exit resolved the name itself.
DECOY = "127.0.0.2"
LOOPBACK = ("127.0.0.0/8", "::1")
# What `-w` prints after the body: the status, the CONNECT response's status (000 when
# there was none) and curl's certificate verification result (0: verified).
WRITE_OUT = "\n%{http_code} %{http_connect} %{ssl_verify_result}"
SOCKS5_NOT_ALLOWED = 2  # RFC 1928 §6: "connection not allowed by ruleset"
SOCKS5_HOST_UNREACHABLE = 4


# -- identities ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identities:
    exit: NodeIdentity
    entry: NodeIdentity
    stranger: NodeIdentity  # an entry the exit does not allow
    rogue: NodeIdentity  # an identity the entry takes for the exit's


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    base = tmp_path_factory.mktemp("identities")
    made = {
        name: make_identity(base / name, name) for name in ("exit", "entry", "stranger", "rogue")
    }
    assert len({i.pin for i in made.values()}) == len(made), made
    return Identities(**made)


@dataclass(frozen=True)
class Site:
    """The server's PKI: a CA, and a certificate for localhost that it issued."""

    pki: Pki
    server: Issued


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    pki = make_pki(tmp_path_factory.mktemp("site-pki"), "Tunnel Test CA")
    return Site(pki=pki, server=pki.issue("localhost", dns=["localhost"], ips=[HOST]))


@pytest.fixture
def server(site: Site) -> Iterator[HttpsUpstream]:
    with HttpsUpstream(
        site.server.chain, site.server.key, answer=pages({PAGE_PATH: PAGE})
    ) as https:
        yield https


# -- the two nodes ---------------------------------------------------------------------------


def exit_table(
    port: int,
    identity: NodeIdentity,
    *,
    allow: Sequence[str],
    target: str,
    allow_destinations: Sequence[str] | None = LOOPBACK,
    name: str = "exit",
) -> str:
    """One [[exit]]; `allow_destinations=None` leaves the key out (the default policy)."""
    lines = [
        "[[exit]]",
        f'name = "{name}"',
        f'listen = "{HOST}:{port}"',
        f'cert = "{identity.cert}"',
        f'key = "{identity.key}"',
        f"allow = {json.dumps(list(allow))}",
        f'target = "{target}"',
    ]
    if allow_destinations is not None:
        lines.append(f"allow_destinations = {json.dumps(list(allow_destinations))}")
    return "\n".join(lines) + "\n"


def entry_table(name: str, port: int, exit_port: int, exit_pin: str, identity: NodeIdentity) -> str:
    """One [[connector]] to the exit: pinned, no chain or name check, this identity."""
    return f"""\
[[connector]]
name = "{name}"
listen = "{HOST}:{port}"
upstream = "{HOST}:{exit_port}"
pin = ["{exit_pin}"]
cert = "{identity.cert}"
key = "{identity.key}"
verify = false
"""


@dataclass
class Node:
    relay: RelayProcess
    run_dir: Path

    def records(self) -> list[dict[str, Any]]:
        """`relaycore logs --json`: every error record the node holds."""
        records: list[dict[str, Any]] = cli_json_lines("logs", "--run-dir", str(self.run_dir))
        return records

    def wait_records(self, connector: str) -> list[dict[str, Any]]:
        """The node's error records for `connector`, once there is one."""

        def found() -> list[dict[str, Any]]:
            return [r for r in self.records() if r["connector"] == connector]

        try:
            records: list[dict[str, Any]] = wait_for(found, EVENT_TIMEOUT, f"{connector}: any")
        except TimeoutError as e:
            raise AssertionError(f"{e}; records: {self.records()}\n{self.relay.output()}") from None
        return records

    def wait_record(self, connector: str, cause: str) -> dict[str, Any]:
        """The node's error record for (connector, cause), once it has one."""

        def found() -> dict[str, Any] | None:
            return next(
                (r for r in self.records() if (r["connector"], r["cause"]) == (connector, cause)),
                None,
            )

        try:
            record: dict[str, Any] = wait_for(found, EVENT_TIMEOUT, f"{connector}: {cause}")
        except TimeoutError as e:
            raise AssertionError(f"{e}; records: {self.records()}\n{self.relay.output()}") from None
        return record


@contextlib.contextmanager
def node(tmp_path: Path, name: str, tables: str) -> Iterator[Node]:
    """`relaycore run` on [relay] (one worker, its own run_dir) + `tables`, in
    tmp_path/name, until ready; stopped (SIGTERM) when the block ends."""
    home = tmp_path / name
    home.mkdir()
    run_dir = home / "run"
    config = f'[relay]\nworkers = 1\nrun_dir = "{run_dir}"\n\n{tables}'
    with relay_process(config, home) as relay:
        yield Node(relay=relay, run_dir=run_dir)


@dataclass(frozen=True)
class Tunnel:
    exit: Node
    entry: Node
    exit_port: int
    entry_port: int


@contextlib.contextmanager
def tunnel(
    tmp_path: Path,
    ids: Identities,
    target: str = "socks5",
    *,
    entry_pins_exit: str | None = None,
    **exit_options: Any,
) -> Iterator[Tunnel]:
    """The usual pair: an exit that allows the entry (`exit_options` go to exit_table), and
    an entry "entry" pinned to `entry_pins_exit` (default: the exit's real pin)."""
    exit_port, entry_port = free_port(), free_port()
    exit_tables = exit_table(
        exit_port, ids.exit, allow=[ids.entry.pin], target=target, **exit_options
    )
    entry_tables = entry_table(
        "entry", entry_port, exit_port, entry_pins_exit or ids.exit.pin, ids.entry
    )
    with (
        node(tmp_path, "exit", exit_tables) as exit_node,
        node(tmp_path, "entry", entry_tables) as entry_node,
    ):
        yield Tunnel(exit_node, entry_node, exit_port, entry_port)


# -- the device ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    returncode: int
    body: bytes
    http_code: str
    http_connect: str
    ssl_verify_result: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.body == PAGE and self.ssl_verify_result == "0"


def curl(*args: str) -> Fetched:
    """`curl -sS --fail ARGS` with WRITE_OUT, bounded."""
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", str(CURL_TIMEOUT), "-w", WRITE_OUT, *args],
        capture_output=True,
        timeout=CURL_TIMEOUT + 5,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    body, _, tail = result.stdout.rpartition(b"\n")
    http_code, http_connect, verify = [*tail.decode().split(), "", "", ""][:3]
    return Fetched(
        returncode=result.returncode,
        body=body,
        http_code=http_code,
        http_connect=http_connect,
        ssl_verify_result=verify,
        stderr=result.stderr.decode("utf-8", "replace").strip(),
    )


def via_socks5h(
    entry_port: int, site: Site, server: HttpsUpstream, host: str = "localhost"
) -> Fetched:
    """The page over SOCKS5 with the name resolved by the proxy (here: the exit)."""
    return curl(
        "-x",
        f"socks5h://{HOST}:{entry_port}",
        "--cacert",
        str(site.pki.ca_cert),
        "--resolve",
        f"{host}:{server.port}:{DECOY}",
        f"https://{host}:{server.port}{PAGE_PATH}",
    )


def via_http_connect(entry_port: int, site: Site, server: HttpsUpstream) -> Fetched:
    """The page through an HTTP CONNECT tunnel (`-p`, even for https)."""
    return curl(
        "-p",
        "-x",
        f"http://{HOST}:{entry_port}",
        "--cacert",
        str(site.pki.ca_cert),
        "--resolve",
        f"localhost:{server.port}:{DECOY}",
        f"https://localhost:{server.port}{PAGE_PATH}",
    )


def converse(port: int, request: bytes, timeout: float = CURL_TIMEOUT) -> tuple[bytes, str]:
    """Send `request` through the entry at once, read until the far end closes: what
    came back, and how it ended ("eof", or the errno name of a reset)."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"still open after {timeout}s; got {bytes(got)!r}")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return bytes(got), "ECONNRESET"
            if not chunk:
                return bytes(got), "eof"
            got += chunk


def socks5_connect(host: str, port: int) -> bytes:
    """A SOCKS5 greeting ("no authentication") and a CONNECT to host (a name) : port."""
    name = host.encode()
    return (
        b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
    )


def explain(fetched: Fetched, *nodes: Node) -> str:
    """What to print when a fetch went wrong: curl's side, then each node's log."""
    head = f"curl exit {fetched.returncode}: {fetched.stderr!r}, body {fetched.body[:200]!r}"
    logs = [f"--- {n.run_dir.parent.name} ---\n{n.relay.output()}" for n in nodes]
    return "\n".join([head, *logs])


# -- the tests -------------------------------------------------------------------------------


def test_identity_reprints_the_pin_of_its_p256_key(ids: Identities) -> None:
    """`relaycore identity DIR` prints the same pin again; the key is ECDSA P-256 and the
    certificate is self-signed, with the CN asked for."""
    again = relaycore("identity", str(ids.exit.directory))
    assert again.returncode == 0, again.stderr
    assert again.stdout == ids.exit.pin + "\n"
    text = subprocess.run(
        ["openssl", "x509", "-in", str(ids.exit.cert), "-noout", "-text"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "id-ecPublicKey" in text, text
    assert "prime256v1" in text or "P-256" in text, text
    issuer = next(line for line in text.splitlines() if "Issuer:" in line).split(":", 1)[1]
    subject = next(line for line in text.splitlines() if "Subject:" in line).split(":", 1)[1]
    assert issuer.strip() == subject.strip(), text
    assert "CN = exit" in subject or "CN=exit" in subject, subject


def test_socks5h_fetches_the_page_with_tls_end_to_end(tmp_path, ids, site, server):
    """curl -x socks5h://ENTRY https://localhost:PORT/page: the page, verified by curl
    against the server's CA; the server saw curl's SNI and the exit's connection; the name
    went through the tunnel (curl's own resolution points elsewhere)."""
    with tunnel(tmp_path, ids, "socks5") as t:
        exit_node, entry_node, entry_port = t.exit, t.entry, t.entry_port
        fetched = via_socks5h(entry_port, site, server)
        assert fetched.ok, explain(fetched, exit_node, entry_node)
        assert fetched.http_code == "200"
        (request,) = server.requests
        assert request.path == PAGE_PATH
        assert request.host == f"localhost:{server.port}"
        assert request.sni == "localhost"  # curl's ClientHello, not a node's
        assert request.tls_version == "TLSv1.3"
        assert request.peer == HOST
        assert server.failures == []
        # A second fetch: the tunnel serves connection after connection.
        again = via_socks5h(entry_port, site, server)
        assert again.ok, explain(again, exit_node, entry_node)
        assert len(server.requests) == 2
        assert exit_node.records() == []
        assert entry_node.records() == []


def test_http_connect_fetches_the_page(tmp_path, ids, site, server):
    """curl -p -x http://ENTRY https://localhost:PORT/page through an http-connect exit:
    200 to the CONNECT, then the page over curl's own verified TLS."""
    with tunnel(tmp_path, ids, "http-connect") as t:
        exit_node, entry_node, entry_port = t.exit, t.entry, t.entry_port
        fetched = via_http_connect(entry_port, site, server)
        assert fetched.ok, explain(fetched, exit_node, entry_node)
        assert (fetched.http_code, fetched.http_connect) == ("200", "200")
        (request,) = server.requests
        assert (request.path, request.sni, request.peer) == (PAGE_PATH, "localhost", HOST)
        assert exit_node.records() == []
        assert entry_node.records() == []


def test_fixed_target_exit_reaches_its_server(tmp_path, ids, site, server):
    """An exit with target = the server's host:port: curl speaks HTTPS to the entry as if
    it were the server (--resolve), and gets the page, verified."""
    with tunnel(tmp_path, ids, f"{HOST}:{server.port}", allow_destinations=None) as t:
        exit_node, entry_node, entry_port = t.exit, t.entry, t.entry_port
        fetched = curl(
            "--cacert",
            str(site.pki.ca_cert),
            "--resolve",
            f"localhost:{entry_port}:{HOST}",
            f"https://localhost:{entry_port}{PAGE_PATH}",
        )
        assert fetched.ok, explain(fetched, exit_node, entry_node)
        (request,) = server.requests
        assert (request.path, request.sni, request.peer) == (PAGE_PATH, "localhost", HOST)
        assert request.host == f"localhost:{entry_port}"
        assert exit_node.records() == []
        assert entry_node.records() == []


def test_entry_not_allowed_is_refused_at_the_handshake(tmp_path, ids, site, server):
    """An entry whose pin is not in the exit's `allow` gets nothing through: curl fails,
    the exit logs tls_pin_mismatch naming that entry's pin, and an allowed entry is
    served right after."""
    exit_port, entry_port, stranger_port = free_port(), free_port(), free_port()
    entries = entry_table("entry", entry_port, exit_port, ids.exit.pin, ids.entry) + "\n"
    entries += entry_table("stranger", stranger_port, exit_port, ids.exit.pin, ids.stranger)
    with (
        node(
            tmp_path,
            "exit",
            exit_table(exit_port, ids.exit, allow=[ids.entry.pin], target="socks5"),
        ) as exit_node,
        node(tmp_path, "entry", entries) as entry_node,
    ):
        refused = via_socks5h(stranger_port, site, server)
        assert refused.returncode != 0, explain(refused, exit_node, entry_node)
        assert PAGE not in refused.body
        record = exit_node.wait_record("exit", "tls_pin_mismatch")
        assert ids.stranger.pin in record["reason"], record
        assert record["client"].startswith(f"{HOST}:"), record
        assert server.requests == []

        fetched = via_socks5h(entry_port, site, server)
        assert fetched.ok, explain(fetched, exit_node, entry_node)
        assert len(server.requests) == 1
        causes = {(r["connector"], r["cause"]) for r in exit_node.records()}
        assert causes == {("exit", "tls_pin_mismatch")}, exit_node.records()
        assert not [r for r in entry_node.records() if r["connector"] == "entry"]
        # The refused entry's own operator sees it too: a TLS failure (the exit's alert).
        (own,) = entry_node.wait_records("stranger")
        assert own["cause"].startswith("tls_"), own
        assert own["upstream"] == f"{HOST}:{exit_port}", own


def test_exit_with_another_key_is_refused_by_the_entry(tmp_path, ids, site, server):
    """An entry whose `pin` is not the exit's key refuses the exit: curl fails, the entry
    logs tls_pin_mismatch with the key it did see, and nothing reaches the server."""
    with tunnel(tmp_path, ids, "socks5", entry_pins_exit=ids.rogue.pin) as t:
        exit_node, entry_node, entry_port, exit_port = t.exit, t.entry, t.entry_port, t.exit_port
        refused = via_socks5h(entry_port, site, server)
        assert refused.returncode != 0, explain(refused, exit_node, entry_node)
        assert PAGE not in refused.body
        record = entry_node.wait_record("entry", "tls_pin_mismatch")
        assert ids.exit.pin in record["reason"], record
        assert record["upstream"] == f"{HOST}:{exit_port}", record
        assert server.requests == []


@pytest.mark.parametrize("target", ["socks5", "http-connect"])
def test_destination_outside_the_policy_is_denied(tmp_path, ids, site, server, target):
    """An exit with the default destination policy (no allow_destinations) refuses the
    loopback server: SOCKS5 reply 2 ("connection not allowed by ruleset") or HTTP 403,
    then a close, and a proxy_denied record; nothing reaches the server."""
    with tunnel(tmp_path, ids, target, allow_destinations=None) as t:
        exit_node, entry_node, entry_port = t.exit, t.entry, t.entry_port
        if target == "socks5":
            fetched = via_socks5h(entry_port, site, server)
            assert fetched.returncode == 97, explain(fetched, exit_node, entry_node)
            # curl 7.88 prints the reply code; later versions add its meaning.
            assert f"localhost. ({SOCKS5_NOT_ALLOWED})" in fetched.stderr or (
                "not allowed by ruleset" in fetched.stderr
            ), fetched.stderr
            reply, ended = converse(entry_port, socks5_connect("localhost", server.port))
            assert reply[:2] == b"\x05\x00", reply  # the method: no authentication
            assert reply[2:4] == bytes([5, SOCKS5_NOT_ALLOWED]), reply
            assert len(reply) == 12, reply  # the reply alone (BND 0.0.0.0:0), nothing after
        else:
            fetched = via_http_connect(entry_port, site, server)
            assert fetched.returncode != 0, explain(fetched, exit_node, entry_node)
            assert fetched.http_connect == "403", explain(fetched, exit_node, entry_node)
            request = f"CONNECT localhost:{server.port} HTTP/1.1\r\nHost: localhost\r\n\r\n"
            reply, ended = converse(entry_port, request.encode())
            assert reply.startswith(b"HTTP/1.1 403 "), reply
        assert ended in ("eof", "ECONNRESET"), ended
        record = exit_node.wait_record("exit", "proxy_denied")
        assert record["count"] >= 1, record
        assert server.requests == []
        assert exit_node.relay.proc.poll() is None


def test_name_that_does_not_resolve_at_the_exit(tmp_path, ids, site, server):
    """socks5h to a name the exit's resolver fails on: the reply is 4 ("host unreachable")
    and the exit logs resolve_failed. The name has a 64-byte label, which getaddrinfo
    refuses without asking a DNS server: no query leaves the machine."""
    unresolvable = "a" * 64 + ".example"
    with tunnel(tmp_path, ids, "socks5") as t:
        exit_node, entry_node, entry_port = t.exit, t.entry, t.entry_port
        reply, ended = converse(entry_port, socks5_connect(unresolvable, server.port))
        assert reply == b"\x05\x00" + bytes([5, SOCKS5_HOST_UNREACHABLE, 0, 1]) + bytes(6)
        assert ended in ("eof", "ECONNRESET"), ended
        record = exit_node.wait_record("exit", "resolve_failed")
        assert unresolvable in record["reason"], record
        # The exit still serves.
        fetched = via_socks5h(entry_port, site, server)
        assert fetched.ok, explain(fetched, exit_node, entry_node)


@pytest.mark.parametrize(
    ("target", "garbage", "expected"),
    [
        # Not SOCKS version 5: "no acceptable methods", then a close.
        ("socks5", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x05\xff"),
        ("http-connect", b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 405 "),
        ("http-connect", b"CONNECT no-port HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 "),
    ],
    ids=["socks5-http-request", "connect-get", "connect-no-port"],
)
def test_malformed_request_gets_the_protocols_refusal(
    tmp_path, ids, site, server, target, garbage, expected
):
    """A request the exit's parser refuses: the protocol's error reply, a close, a
    proxy_request record, and the next request is served."""
    with tunnel(tmp_path, ids, target) as t:
        exit_node, entry_node, entry_port = t.exit, t.entry, t.entry_port
        reply, ended = converse(entry_port, garbage)
        assert reply.startswith(expected), (reply, exit_node.relay.output())
        assert ended in ("eof", "ECONNRESET"), ended
        exit_node.wait_record("exit", "proxy_request")
        fetch = via_socks5h if target == "socks5" else via_http_connect
        fetched = fetch(entry_port, site, server)
        assert fetched.ok, explain(fetched, exit_node, entry_node)
        assert exit_node.relay.proc.poll() is None
        assert server.requests[0].path == PAGE_PATH


def test_exit_only_config_checks(tmp_path, ids):
    """`relaycore check` accepts a config with an [[exit]] and no [[connector]]."""
    config = tmp_path / "exit.toml"
    config.write_text(
        f'[relay]\nworkers = 1\nrun_dir = "{tmp_path / "run"}"\n\n'
        + exit_table(free_port(), ids.exit, allow=[ids.entry.pin], target="socks5")
    )
    out = relaycore("check", "-c", str(config))
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "exit" in out.stdout, out.stdout
