"""Gateway mode end to end, in three network namespaces (tests/e2e/netns.py draws them):
a device that sends to any address, the gateway running `relaycore run` with
`manage_rules = true`, and a server namespace with the real servers.

What the device sees is what a device in the field would: its plain HTTP to a dummy
address (192.0.2.10) comes back from the HTTPS server, which saw verified mutual TLS with
SNI; ping, DNS and a firmware server are passed through untouched (the firmware server
sees the device's own address); anything else is reset, and `relaycore logs` says why;
`relaycore reload` with one more passthrough rule lets it by; IPv6 devices get the same;
a stopped relay leaves no nftables table behind. The whole lab lives in namespaces
created and deleted here: no packet leaves them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import netns
import pytest
from netns import (
    DEVICE_IP,
    DEVICE_IP6,
    DNS_ANSWER,
    DNS_BLOCKED_PORT,
    DNS_PORT,
    FIRMWARE_BANNER,
    FIRMWARE_PORT,
    GATEWAY_DEVICE_IP,
    GATEWAY_UPLINK_IP,
    HTTPS_PORT,
    OTHER_BANNER,
    OTHER_PORT,
    OTHER_SERVER_IP,
    PROXY_PORT,
    SERVER_IP,
    SERVER_IP6,
    Lab,
    NsProcess,
    read_records,
)
from support.relay import with_session_io

from relaycore.gateway import PassthroughRule, render_rules
from relaycore.lab.base import wait_for
from relaycore.lab.pki import make_pki

pytestmark = pytest.mark.netns

# The addresses the devices' firmware has for the API: routed nowhere, only intercepted.
API_IP = "192.0.2.10"
API_IP6 = "2001:db8::10"
GATEWAY_PORT = 15001
READY_TIMEOUT = 20.0
CLIENT_TIMEOUT = 5.0


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    tag = str(os.getpid())
    if (why := netns.unavailable(tag)) is not None:
        pytest.skip(why)
    with netns.lab(tag) as the_lab:
        yield the_lab


@dataclass(frozen=True)
class Files:
    ca: Path
    server_chain: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    server = pki.issue("api.test", dns=["api.test"])
    client = pki.issue("gateway-client", client=True)
    return Files(pki.ca_cert, server.chain, server.key, client.chain, client.key)


@dataclass
class Servers:
    process: NsProcess
    records_path: Path

    def records(self, kind: str, since: int = 0) -> list[dict[str, Any]]:
        """The records of `kind`, of those after the first `since` (see mark())."""
        return [r for r in read_records(self.records_path)[since:] if r["kind"] == kind]

    def mark(self) -> int:
        return len(read_records(self.records_path))

    def wait_record(self, kind: str, since: int, timeout: float = 5.0) -> dict[str, Any]:
        try:
            found = wait_for(lambda: self.records(kind, since), timeout, f"a {kind!r} record")
        except TimeoutError as e:
            raise AssertionError(
                f"{e}; records: {read_records(self.records_path)}\n{self.process.output()}"
            ) from None
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def servers(lab: Lab, files: Files, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    work = tmp_path_factory.mktemp("servers")
    records = work / "records.jsonl"
    argv = [sys.executable, netns.__file__, "serve", str(records)]
    argv += [str(files.server_chain), str(files.server_key), str(files.ca)]
    process = NsProcess(lab.server, argv, work / "servers.log", work)
    try:
        the_servers = Servers(process, records)
        the_servers.wait_record("ready", 0, READY_TIMEOUT)
        yield the_servers
    finally:
        code = process.stop()
        assert code == 0, f"the servers exited with {code}:\n{process.output()}"


def gateway_config(run_dir: Path, files: Files, extra: str = "") -> str:
    return f"""\
[relay]
workers = 1
run_dir = "{run_dir}"
drain_timeout_s = 2

[timeouts]
connect_s = 3
handshake_s = 3

[stats]
interval_s = 0.2

[gateway]
listen = ["0.0.0.0:{GATEWAY_PORT}", "[::]:{GATEWAY_PORT}"]
interface = "{netns.DEVICE_IFACE}"
manage_rules = true

[[passthrough]]
protocol = "icmp"

[[passthrough]]
protocol = "udp"
ip = "{SERVER_IP}"
port = {DNS_PORT}

[[passthrough]]
protocol = "tcp"
ip = "{SERVER_IP}"
port = {FIRMWARE_PORT}

[[passthrough]]
protocol = "tcp"
ip = "{SERVER_IP6}"
port = {FIRMWARE_PORT}

[[connector]]
name = "api"
match = ["{API_IP}:80", "[{API_IP6}]:80"]
upstream = "{SERVER_IP}:{HTTPS_PORT}"
server_name = "api.test"
ca = "{files.ca}"
cert = "{files.client_cert}"
key = "{files.client_key}"
{extra}"""


@dataclass
class Relay:
    lab: Lab
    process: NsProcess
    config_path: Path
    run_dir: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`relaycore ARGS --run-dir RUN_DIR` on the gateway, as its operator types it."""
        argv = [sys.executable, "-m", "relaycore", *args, "--run-dir", str(self.run_dir)]
        return self.lab.gateway.completed(*argv, timeout=30)

    def nft_tables(self) -> str:
        return self.lab.gateway.run("nft", "list", "tables")


@pytest.fixture
def relay(lab: Lab, servers: Servers, files: Files, tmp_path: Path) -> Iterator[Relay]:
    run_dir = tmp_path / "run"
    config_path = tmp_path / "relay.toml"
    config_path.write_text(with_session_io(gateway_config(run_dir, files)))
    argv = [sys.executable, "-m", "relaycore", "run", "-c", str(config_path)]
    process = NsProcess(lab.gateway, argv, tmp_path / "relay.log", tmp_path)
    try:
        process.wait_output("ready generation=1", READY_TIMEOUT)
        yield Relay(lab, process, config_path, run_dir)
    finally:
        process.stop()
        # The namespace outlives this relay: whatever happened to it, the next test's
        # relay starts without a table.
        lab.gateway.run("nft", "delete", "table", "inet", "relaycore", check=False)


# -- what a device sees --------------------------------------------------------------------------


def device_tcp(lab: Lab, host: str, port: int) -> dict[str, Any]:
    result: dict[str, Any] = lab.device.python(
        "tcp", host, str(port), str(CLIENT_TIMEOUT), timeout=CLIENT_TIMEOUT + 10
    )
    return result


def dns(ns: netns.Netns, port: int, timeout: float = CLIENT_TIMEOUT) -> dict[str, Any]:
    result: dict[str, Any] = ns.python(
        "dns", SERVER_IP, str(port), "fw.example", str(timeout), timeout=timeout + 10
    )
    return result


def closed_stats(relay: Relay, name: str) -> dict[str, Any] | None:
    """The connector's stats once it has closed a connection, else None."""
    out = relay.cli("stats", "--json")
    assert out.returncode == 0, out.stderr
    [found] = [c for c in json.loads(out.stdout)["connectors"] if c["name"] == name]
    return found if found["closed"] else None


def test_intercepted_http_reaches_the_server_over_verified_mutual_tls(
    lab: Lab, servers: Servers, relay: Relay
) -> None:
    since = servers.mark()
    out = lab.device.completed(
        "curl", "-sS", "--max-time", str(CLIENT_TIMEOUT), f"http://{API_IP}/telemetry/7?seq=3"
    )
    assert out.returncode == 0, (out.stderr, relay.process.output())
    assert out.stdout == "api.test got /telemetry/7?seq=3\n"
    seen = servers.wait_record("https", since)
    assert seen == {
        "kind": "https",
        "path": "/telemetry/7?seq=3",
        "host": API_IP,  # the device's own request, untouched
        "sni": "api.test",
        "client_cn": "gateway-client",  # the relay's client certificate: mutual TLS
        "peer": GATEWAY_UPLINK_IP,  # relayed by the gateway, not forwarded
    }
    assert not servers.records("https_error", since)

    # The relay's own view: one connection, one handshake, closed, and no error at all
    # (the server sends close_notify, so not even tls_truncated), only the notice that the
    # server (Python's ssl, OpenSSL 3.0) has no post-quantum group.
    api = wait_for(lambda: closed_stats(relay, "api"), 10.0, "the api connection in stats")
    assert (api["opened"], api["handshakes"]) == (1, 1), api
    assert (api["errors"], api["notices"], api["groups"]) == (
        {},
        {"pq_classical": 1},
        {"X25519": 1},
    ), api


def test_passthrough_reaches_the_real_destination_untouched(
    lab: Lab, servers: Servers, relay: Relay
) -> None:
    ping = lab.device.completed("ping", "-c", "1", "-W", "2", SERVER_IP)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    since = servers.mark()
    assert dns(lab.device, DNS_PORT) == {"answer": DNS_ANSWER, "error": None}
    assert servers.wait_record("dns", since)["peer"] == DEVICE_IP

    # UDP that no rule passes is dropped at forwarding: the device hears nothing from a
    # responder that answers the gateway itself.
    since = servers.mark()
    assert dns(lab.device, DNS_BLOCKED_PORT, timeout=1.0) == {
        "answer": None,
        "error": "TimeoutError",
    }
    assert dns(lab.gateway, DNS_BLOCKED_PORT)["answer"] == DNS_ANSWER
    assert [r["peer"] for r in servers.records("dns", since)] == [GATEWAY_UPLINK_IP]

    since = servers.mark()
    got = device_tcp(lab, SERVER_IP, FIRMWARE_PORT)
    assert (got["data"], got["error"]) == (FIRMWARE_BANNER, None), relay.process.output()
    # The firmware server sees the device itself: the kernel forwarded it, the relay
    # never touched it.
    assert servers.wait_record("banner", since) == {
        "kind": "banner",
        "server": f"{SERVER_IP}:{FIRMWARE_PORT}",
        "peer": DEVICE_IP,
    }


def test_ipv6_devices_are_intercepted_and_passed_through_too(
    lab: Lab, servers: Servers, relay: Relay
) -> None:
    since = servers.mark()
    out = lab.device.completed(
        "curl", "-sS", "-g", "--max-time", str(CLIENT_TIMEOUT), f"http://[{API_IP6}]/v6"
    )
    assert out.returncode == 0, (out.stderr, relay.process.output())
    assert out.stdout == "api.test got /v6\n"
    seen = servers.wait_record("https", since)
    assert (seen["sni"], seen["client_cn"], seen["peer"]) == (
        "api.test",
        "gateway-client",
        GATEWAY_UPLINK_IP,  # the upstream is IPv4: the relay bridges the families
    )

    ping = lab.device.completed("ping", "-6", "-c", "1", "-W", "2", SERVER_IP6)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    since = servers.mark()
    got = device_tcp(lab, SERVER_IP6, FIRMWARE_PORT)
    assert (got["data"], got["error"]) == (FIRMWARE_BANNER, None), relay.process.output()
    assert servers.wait_record("banner", since)["peer"] == DEVICE_IP6


def no_route_records(relay: Relay) -> list[dict[str, Any]]:
    out = relay.cli("logs", "--json")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    return [r for r in records if r["cause"] == "no_route"]


def test_unmatched_destination_is_rejected_and_logged_until_a_reload_passes_it(
    lab: Lab, servers: Servers, relay: Relay
) -> None:
    since = servers.mark()
    got = device_tcp(lab, OTHER_SERVER_IP, OTHER_PORT)
    # Accepted by the gateway's listener (the redirect), then reset at once.
    assert (got["data"], got["error"]) == ("", "ConnectionResetError"), got
    assert got["seconds"] < 2.0, got
    assert not servers.records("banner", since)

    [record] = wait_for(lambda: no_route_records(relay), 10.0, "a no_route record")
    assert record["connector"] == "(gateway)", record
    assert record["client"].startswith(f"{DEVICE_IP}:"), record
    assert record["destination"] == f"{OTHER_SERVER_IP}:{OTHER_PORT}", record
    assert record["count"] == 1, record

    with relay.config_path.open("a") as f:
        f.write(f'\n[[passthrough]]\nprotocol = "tcp"\nip = "{OTHER_SERVER_IP}"\nport = 80\n')
    out = relay.cli("reload")
    assert out.returncode == 0, (out.stdout, out.stderr, relay.process.output())
    assert "generation 2" in out.stdout
    assert f"ip daddr {OTHER_SERVER_IP} " in relay.lab.gateway.run(
        "nft", "list", "table", "inet", "relaycore"
    )

    since = servers.mark()
    got = device_tcp(lab, OTHER_SERVER_IP, OTHER_PORT)
    assert (got["data"], got["error"]) == (OTHER_BANNER, None), relay.process.output()
    assert servers.wait_record("banner", since)["peer"] == DEVICE_IP


def test_a_connection_that_was_not_intercepted_is_rejected_even_with_a_default(
    lab: Lab, servers: Servers, relay: Relay
) -> None:
    """Connecting to the gateway port itself must not reach the default connector (and its
    client certificate): once the nat table is loaded, conntrack gives such a connection
    an "original destination" too, the listener's own address."""
    relay.config_path.write_text(
        relay.config_path.read_text().replace(
            "manage_rules = true", 'manage_rules = true\ndefault = "api"'
        )
    )
    out = relay.cli("reload")
    assert out.returncode == 0, (out.stdout, out.stderr, relay.process.output())
    since = servers.mark()
    for ns, host in ((lab.gateway, "127.0.0.1"), (lab.device, GATEWAY_DEVICE_IP)):
        got: dict[str, Any] = ns.python(
            "tcp", host, str(GATEWAY_PORT), str(CLIENT_TIMEOUT), timeout=CLIENT_TIMEOUT + 10
        )
        assert (got["data"], got["error"]) == ("", "ConnectionResetError"), (host, got)
    assert not servers.records("https", since), "a direct connection reached the connector"
    [record] = wait_for(
        lambda: [r for r in no_route_records(relay) if r["count"] == 2] or None,
        10.0,
        "two no_route rejections",
    )
    assert record["reason"].startswith("not intercepted"), record


def test_every_passthrough_shape_is_a_valid_nft_rule(lab: Lab) -> None:
    # `nft -c`: checked by the kernel's own parser and netlink, not loaded.
    shapes = [
        PassthroughRule(protocol, network, port)  # type: ignore[arg-type]
        for protocol in ("icmp", "udp", "tcp")
        for network in (None, ip_network("10.0.0.0/8"), ip_network("2001:db8::1/128"))
        for port in ((None,) if protocol == "icmp" else (None, 53))
    ]
    ruleset = render_rules(netns.DEVICE_IFACE, GATEWAY_PORT, shapes)
    out = lab.gateway.completed("nft", "-c", "-f", "-", input=ruleset)
    assert out.returncode == 0, (out.stderr, ruleset)


def test_stopping_the_relay_removes_its_rules(lab: Lab, relay: Relay) -> None:
    assert "table inet relaycore" in relay.nft_tables()
    assert relay.process.stop() == 0, relay.process.output()
    assert "nftables rules applied" in relay.process.output()
    assert "inet relaycore" not in relay.nft_tables()


def test_the_proxy_header_names_the_destination_the_device_dialled(
    lab: Lab, servers: Servers, files: Files, tmp_path: Path
) -> None:
    """proxy_protocol in gateway mode: the header's destination is the address the device
    dialled (its firmware's dummy address, intercepted), not the gateway's port."""
    pp = (
        '[[connector]]\nname = "pp"\nmatch = ["192.0.2.11:7000"]\n'
        f'upstream = "{SERVER_IP}:{PROXY_PORT}"\ntls = false\nproxy_protocol = "v1"\n'
    )
    config_path = tmp_path / "relay.toml"
    config_path.write_text(with_session_io(gateway_config(tmp_path / "run", files, pp)))
    argv = [sys.executable, "-m", "relaycore", "run", "-c", str(config_path)]
    process = NsProcess(lab.gateway, argv, tmp_path / "relay.log", tmp_path)
    try:
        process.wait_output("ready generation=1", READY_TIMEOUT)
        got = device_tcp(lab, "192.0.2.11", 7000)
    finally:
        process.stop()
        lab.gateway.run("nft", "delete", "table", "inet", "relaycore", check=False)
    words = got["data"].split()
    assert got["error"] is None, (got, process.output())
    assert words[:4] == ["PROXY", "TCP4", DEVICE_IP, "192.0.2.11"], got
    assert words[5] == "7000", got
