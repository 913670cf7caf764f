"""TLS connectors against real programs on both sides, through a real `relaycore run`.

The upstreams are `openssl s_server`, nginx and mosquitto with certificates from a
throwaway CA; the devices are a plain Python socket, curl, mosquitto_sub and mosquitto_pub,
all speaking plain TCP to the relay. What each server logs shows what it saw of the relay's
TLS: protocol, resumption, SNI, client certificate. Everything runs on 127.0.0.1; every
peer is started with a bounded wait for its port and stopped when its test ends.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers import (
    MqttListener,
    NginxServer,
    find_binary,
    mosquitto_tls,
    nginx_https,
    openssl_server,
    read_text,
)
from support.relay import relay_process
from support.servers import HOST

from relaycore.lab.base import free_port, wait_for
from relaycore.lab.pki import Issued, make_pki, self_signed
from relaycore.lab.relay import RelayProcess

pytestmark = pytest.mark.timeout(120)

OPENSSL = find_binary("openssl")
NGINX = find_binary("nginx")
CURL = find_binary("curl")
MOSQUITTO = find_binary("mosquitto")
MOSQUITTO_SUB = find_binary("mosquitto_sub")
MOSQUITTO_PUB = find_binary("mosquitto_pub")

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
needs_nginx = pytest.mark.skipif(
    NGINX is None or CURL is None, reason="nginx or curl not installed (nginx-light, curl)"
)
needs_mosquitto = pytest.mark.skipif(
    None in (MOSQUITTO, MOSQUITTO_SUB, MOSQUITTO_PUB),
    reason="mosquitto, mosquitto_sub or mosquitto_pub not installed (mosquitto, mosquitto-clients)",
)

CLIENT_TIMEOUT = 10.0
# A failed handshake must reach the device at once, not after a timeout.
PROMPT_S = 3.0
# How long an error event may take to reach relaycore's log: workers drain their events
# every 200 ms and report them to the supervisor, which logs them, every second.
LOG_TIMEOUT = 5.0


@dataclass(frozen=True)
class Certs:
    ca: Path
    localhost: Issued  # DNS localhost
    api: Issued  # DNS api.test only
    device: Issued  # a client certificate, CN device
    self_signed: Issued  # DNS selfsigned.test, no CA vouches for it
    other_ca: Path  # a CA that signed none of the above


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if OPENSSL is None:
        pytest.skip("openssl not installed")
    base = tmp_path_factory.mktemp("tls-peers-pki")
    pki = make_pki(base / "ca")
    other = make_pki(base / "other", name="Other CA")
    return Certs(
        ca=pki.ca_cert,
        localhost=pki.issue("localhost", dns=["localhost"]),
        api=pki.issue("api.test", dns=["api.test"]),
        device=pki.issue("device", client=True),
        self_signed=self_signed(base / "self", "selfsigned.test", dns=["selfsigned.test"]),
        other_ca=other.ca_cert,
    )


# -- the relay ---------------------------------------------------------------------------------


def relay_toml(run_dir: Path, connectors: Sequence[Mapping[str, str | Path]]) -> str:
    """One worker (so that every connection of a connector shares its session cache), and
    one [[connector]] per mapping; paths and strings are written as TOML strings."""
    lines = [
        "[relay]",
        "workers = 1",
        f"run_dir = {json.dumps(str(run_dir))}",
        "drain_timeout_s = 5",
        "",
        "[timeouts]",
        "connect_s = 2",
        "handshake_s = 5",
        "idle_s = 30",
    ]
    for connector in connectors:
        lines += ["", "[[connector]]"]
        lines += [f"{key} = {json.dumps(str(value))}" for key, value in connector.items()]
    return "\n".join(lines) + "\n"


def connector(
    name: str, listen_port: int, upstream_port: int, **tls: str | Path
) -> dict[str, str | Path]:
    return {
        "name": name,
        "listen": f"{HOST}:{listen_port}",
        "upstream": f"{HOST}:{upstream_port}",
        **tls,
    }


def warnings_of(relay: RelayProcess) -> list[str]:
    """Warnings and errors, but not the one pq_classical notice of a server on OpenSSL 3.0."""
    return [
        line
        for line in relay.lines
        if (" WARNING " in line or " ERROR " in line) and ": pq_classical: " not in line
    ]


def wait_relay_line(relay: RelayProcess, pattern: str) -> str:
    """The first line of the relay's output matching the regex, waiting for the worker's
    next error tick."""
    return relay.wait_line(pattern, LOG_TIMEOUT)


def wait_relay_count(relay: RelayProcess, pattern: str, count: int) -> list[str]:
    """The relay's lines matching the regex, once the events they count (a line stands
    for N events when it says "(xN") add up to `count`."""
    lines: list[str] = []

    def total() -> int:
        lines[:] = [line for line in list(relay.lines) if re.search(pattern, line)]
        return sum(int(m[1]) if (m := re.search(r"\(x(\d+)", line)) else 1 for line in lines)

    try:
        wait_for(lambda: total() >= count, LOG_TIMEOUT, f"{count} events matching {pattern!r}")
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}: relaycore logged {total()}; it said:\n{relay.output()}"
        ) from None
    assert total() == count, relay.output()
    return lines


# -- devices -----------------------------------------------------------------------------------


def http_get_raw(port: int) -> str:
    """A device's HTTP/1.0 GET in plain TCP to the relay; everything until EOF."""
    chunks = []
    with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def curl(url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`curl -sS URL`: its result and how long it took."""
    assert CURL is not None
    start = time.monotonic()
    result = subprocess.run(
        [CURL, "-sS", "--max-time", str(CLIENT_TIMEOUT), url],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT + 5,
        check=False,
    )
    return result, time.monotonic() - start


def mqtt_pub(port: int, message: str, *, topic: str = "t/x") -> subprocess.CompletedProcess[str]:
    assert MOSQUITTO_PUB is not None
    return subprocess.run(
        [MOSQUITTO_PUB, "-h", HOST, "-p", str(port), "-t", topic, "-m", message],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT + 5,
        check=False,
    )


def mqtt_receive(
    sub_port: int, broker_log: Path, pub_port: int, messages: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    """mosquitto_sub on sub_port, waiting for len(messages) messages; once the broker has
    acknowledged its subscription, one mosquitto_pub per message on pub_port. The
    subscriber's result (its stdout holds what it received)."""
    assert MOSQUITTO_SUB is not None
    subacks = read_text(broker_log).count("Sending SUBACK")
    argv = [MOSQUITTO_SUB, "-h", HOST, "-p", str(sub_port), "-t", "t/x"]
    argv += ["-C", str(len(messages)), "-W", str(int(CLIENT_TIMEOUT))]
    sub = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_for(
                lambda: read_text(broker_log).count("Sending SUBACK") > subacks,
                CLIENT_TIMEOUT,
                "the broker to acknowledge the subscription",
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; the broker said:\n{read_text(broker_log)}") from None
        for message in messages:
            pub = mqtt_pub(pub_port, message)
            assert pub.returncode == 0, f"mosquitto_pub {message!r}: {pub}"
        out, err = sub.communicate(timeout=CLIENT_TIMEOUT + 5)
    finally:
        if sub.returncode is None:
            sub.kill()
            sub.communicate()  # reaps it and closes its pipes
    return subprocess.CompletedProcess(argv, sub.returncode, out, err)


# -- openssl s_server --------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize(
    ("protocol", "server_args"),
    [("TLSv1.3", []), ("TLSv1.2", ["-tls1_2"])],
    ids=["tls1.3", "tls1.2"],
)
def test_s_server_answers_through_relay_and_resumes(tmp_path, certs, protocol, server_args):
    """A device's plain HTTP GET reaches `openssl s_server -www` over verified TLS; the
    second connection resumes the first one's session (a TLS 1.3 ticket, a TLS 1.2
    session), as the server's status page says."""
    listen = free_port()
    with (
        openssl_server(
            tmp_path / "s_server", free_port(), certs.localhost, extra=server_args
        ) as up,
        relay_process(
            relay_toml(
                tmp_path / "run",
                [connector("s-server", listen, up.port, server_name="localhost", ca=certs.ca)],
            ),
            tmp_path,
        ) as relay,
    ):
        first = http_get_raw(listen)
        second = http_get_raw(listen)
        problems = warnings_of(relay)
    assert first.startswith("HTTP/1.0 200 ok\r\n"), first[:500]
    assert f"\nNew, {protocol}, Cipher is " in first, first
    assert f"Protocol  : {protocol}\n" in first, first
    assert second.startswith("HTTP/1.0 200 ok\r\n"), second[:500]
    assert f"\nReused, {protocol}, Cipher is " in second, f"not resumed:\n{second}"
    assert problems == [], "\n".join(problems)


# -- nginx + curl ------------------------------------------------------------------------------


@needs_nginx
def test_curl_through_relay_to_nginx(tmp_path, certs):
    """curl speaks plain HTTP to the relay; nginx sees HTTPS (TLS 1.3) with the configured
    SNI and curl's request line, and the second connection resumes the session."""
    listen = free_port()
    with (
        nginx_https(tmp_path / "nginx", free_port(), [NginxServer(None, certs.localhost)]) as up,
        relay_process(
            relay_toml(
                tmp_path / "run",
                [connector("web", listen, up.port, server_name="localhost", ca=certs.ca)],
            ),
            tmp_path,
        ) as relay,
    ):
        url = f"http://{HOST}:{listen}/devices/42/telemetry?n=1"
        first, _ = curl(url)
        second, _ = curl(url)
        wait_for(lambda: len(up.access_lines()) >= 2, LOG_TIMEOUT, "nginx's access log")
        access = up.access_lines()
        problems = warnings_of(relay)
    assert (first.returncode, first.stdout, first.stderr) == (0, "hello localhost\n", "")
    assert (second.returncode, second.stdout, second.stderr) == (0, "hello localhost\n", "")
    assert access == [
        "localhost TLSv1.3 . GET /devices/42/telemetry?n=1 HTTP/1.1",
        "localhost TLSv1.3 r GET /devices/42/telemetry?n=1 HTTP/1.1",
    ]
    assert problems == [], "\n".join(problems)


@needs_nginx
def test_sni_follows_server_name_not_the_address(tmp_path, certs):
    """Two connectors to the same 127.0.0.1 port: each sends its own `server_name` as SNI
    and checks the certificate against it, so nginx answers each from its own block with
    its own certificate (api.test's names nothing but api.test)."""
    web, api = free_port(), free_port()
    servers = [NginxServer(None, certs.localhost), NginxServer("api.test", certs.api)]
    with (
        nginx_https(tmp_path / "nginx", free_port(), servers) as up,
        relay_process(
            relay_toml(
                tmp_path / "run",
                [
                    connector("api", api, up.port, server_name="api.test", ca=certs.ca),
                    connector("web", web, up.port, server_name="localhost", ca=certs.ca),
                ],
            ),
            tmp_path,
        ) as relay,
    ):
        via_api, _ = curl(f"http://{HOST}:{api}/v1/ping")
        via_web, _ = curl(f"http://{HOST}:{web}/index")
        wait_for(lambda: len(up.access_lines()) >= 2, LOG_TIMEOUT, "nginx's access log")
        access = up.access_lines()
        problems = warnings_of(relay)
    assert (via_api.returncode, via_api.stdout, via_api.stderr) == (0, "hello api.test\n", "")
    assert (via_web.returncode, via_web.stdout, via_web.stderr) == (0, "hello localhost\n", "")
    assert access == [
        "api.test TLSv1.3 . GET /v1/ping HTTP/1.1",
        "localhost TLSv1.3 . GET /index HTTP/1.1",
    ]
    assert problems == [], "\n".join(problems)


@needs_nginx
def test_untrusted_server_certificate_reaches_operator_and_device(tmp_path, certs):
    """A server certificate the connector's `ca` does not vouch for: curl gets a reset at
    once, nginx never sees a request, and relaycore logs the cause and OpenSSL's words,
    naming the connector."""
    wrong_ca, self_signed_port = free_port(), free_port()
    servers = [
        NginxServer(None, certs.localhost),
        NginxServer("selfsigned.test", certs.self_signed),
    ]
    with (
        nginx_https(tmp_path / "nginx", free_port(), servers) as up,
        relay_process(
            relay_toml(
                tmp_path / "run",
                [
                    connector(
                        "wrong-ca", wrong_ca, up.port, server_name="localhost", ca=certs.other_ca
                    ),
                    connector(
                        "self-signed",
                        self_signed_port,
                        up.port,
                        server_name="selfsigned.test",
                        ca=certs.ca,
                    ),
                ],
            ),
            tmp_path,
        ) as relay,
    ):
        results = {
            "wrong-ca": curl(f"http://{HOST}:{wrong_ca}/secret"),
            "self-signed": curl(f"http://{HOST}:{self_signed_port}/secret"),
        }
        [unknown_ca] = wait_relay_count(relay, r"connector wrong-ca: tls_unknown_ca: ", 1)
        [self_signed_line] = wait_relay_count(relay, r"connector self-signed: tls_unknown_ca: ", 1)
        access = up.access_lines()
    for name, (result, elapsed) in results.items():
        # 56: "Recv failure: Connection reset by peer"; 52: "Empty reply from server";
        # 7: "Couldn't connect to server", when the relay's RST comes (a handshake with
        # nginx takes a millisecond or two) before curl has checked its own connect. The
        # relay's log line for each connector shows the connection was accepted.
        assert result.returncode in (7, 52, 56), f"{name}: {result}"
        assert result.stdout == "", f"{name}: {result}"
        assert elapsed < PROMPT_S, f"{name}: curl took {elapsed:.1f}s to fail"
    assert f"upstream {HOST}:{up.port}: " in unknown_ca, unknown_ca
    assert "certificate verify failed: unable to get local issuer certificate" in unknown_ca, (
        unknown_ca
    )
    assert "certificate verify failed: self-signed certificate" in self_signed_line, (
        self_signed_line
    )
    assert access == [], access


# -- mosquitto ---------------------------------------------------------------------------------


@needs_mosquitto
def test_mqtt_through_relay_to_tls_broker(tmp_path, certs):
    """mosquitto_sub and mosquitto_pub speak plain MQTT to the relay; the broker's listener
    speaks only TLS (a plain client going to it directly fails), and the subscriber gets
    every message."""
    listen = free_port()
    with (
        mosquitto_tls(
            tmp_path / "mosquitto", certs.ca, certs.localhost, [MqttListener(free_port())]
        ) as broker,
        relay_process(
            relay_toml(
                tmp_path / "run",
                [connector("mqtt", listen, broker.port, server_name="localhost", ca=certs.ca)],
            ),
            tmp_path,
        ) as relay,
    ):
        direct = mqtt_pub(broker.port, "plain, not through the relay")
        sub = mqtt_receive(listen, broker.log, listen, ["one", "two", "three"])
        broker_log = broker.output()
        problems = warnings_of(relay)
    assert direct.returncode != 0, f"the broker took plain MQTT: {direct}"
    assert (sub.returncode, sub.stdout.splitlines()) == (0, ["one", "two", "three"]), sub
    # The subscriber and the three publishers, each a TLS client of the listener.
    connected = re.findall(r"New client connected from 127\.0\.0\.1:\d+ as ", broker_log)
    assert len(connected) == 4, broker_log
    assert broker_log.count("Received PUBLISH from ") == 3, broker_log
    assert problems == [], "\n".join(problems)


# mosquitto_pub runs through a connector the broker refuses this many times: every refusal
# must reach the operator, whichever of the relay's reads and writes meets it first.
REFUSALS = 8


@needs_mosquitto
def test_mqtt_mutual_tls(tmp_path, certs):
    """A listener that requires a client certificate: the connector with `cert`/`key`
    gets in (the broker names the client by the certificate's CN); the one without is
    refused every time, the device learns at once, and relaycore logs each refusal."""
    fleet, nocert = free_port(), free_port()
    with (
        mosquitto_tls(
            tmp_path / "mosquitto",
            certs.ca,
            certs.localhost,
            [MqttListener(free_port(), require_certificate=True)],
        ) as broker,
        relay_process(
            relay_toml(
                tmp_path / "run",
                [
                    connector(
                        "fleet",
                        fleet,
                        broker.port,
                        server_name="localhost",
                        ca=certs.ca,
                        cert=certs.device.chain,
                        key=certs.device.key,
                    ),
                    connector("nocert", nocert, broker.port, server_name="localhost", ca=certs.ca),
                ],
            ),
            tmp_path,
        ) as relay,
    ):
        sub = mqtt_receive(fleet, broker.log, fleet, ["with a certificate"])
        refused = []
        for n in range(REFUSALS):
            start = time.monotonic()
            refused.append(
                (mqtt_pub(nocert, f"without a certificate {n}"), time.monotonic() - start)
            )
        wait_for(
            lambda: broker.output().count("peer did not return a certificate") == REFUSALS,
            LOG_TIMEOUT,
            f"the broker to log {REFUSALS} missing certificates",
        )
        logged = wait_relay_count(relay, r"connector nocert: tls_\w+: ", REFUSALS)
        broker_log = broker.output()
        problems = warnings_of(relay)
    assert (sub.returncode, sub.stdout) == (0, "with a certificate\n"), sub
    # Subscriber and publisher, both presenting the device certificate.
    connected = re.findall(r"New client connected from .* as \S+ \(.*\)", broker_log)
    assert len(connected) == 2, broker_log
    assert all("u'device'" in line for line in connected), connected
    for result, elapsed in refused:
        assert result.returncode != 0, result
        assert elapsed < PROMPT_S, f"mosquitto_pub took {elapsed:.1f}s to fail"
    for line in logged:
        assert f"upstream {HOST}:{broker.port}: " in line, line
        assert "certificate required" in line, line
    assert [line for line in problems if "connector fleet" in line] == [], "\n".join(problems)


@needs_mosquitto
def test_refused_client_certificate_reaches_a_silent_device(tmp_path, certs):
    """The relay handshakes as soon as a device connects. Without a client certificate,
    TLS 1.3 completes on the relay's side, then the broker sends alert 116 (certificate
    required) and closes: the relay reads it by itself, resets a device that has not sent
    a byte, and logs why."""
    nocert = free_port()
    with (
        mosquitto_tls(
            tmp_path / "mosquitto",
            certs.ca,
            certs.localhost,
            [MqttListener(free_port(), require_certificate=True)],
        ) as broker,
        relay_process(
            relay_toml(
                tmp_path / "run",
                [connector("nocert", nocert, broker.port, server_name="localhost", ca=certs.ca)],
            ),
            tmp_path,
        ) as relay,
        socket.create_connection((HOST, nocert), timeout=CLIENT_TIMEOUT) as device,
    ):
        start = time.monotonic()
        try:
            answer = device.recv(100)
        except ConnectionResetError:
            answer = b"<reset>"
        elapsed = time.monotonic() - start
        failure = wait_relay_line(relay, r"connector nocert: tls_\w+: ")
        broker_log = broker.output()
    assert answer == b"<reset>", answer
    assert elapsed < PROMPT_S, f"the device waited {elapsed:.1f}s"
    assert "peer did not return a certificate" in broker_log, broker_log
    assert f"upstream {HOST}:{broker.port}: " in failure, failure
    assert "certificate required" in failure, failure
