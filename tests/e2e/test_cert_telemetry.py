"""Certificate telemetry, end to end: a connector's upstream presents a short-lived
certificate, and the relay says so in its log (cert_expiring, within the default 14
days), `relaycore stats` and `status`, Prometheus' expiry gauge and `relaycore logs`; the
server's key is then rotated, and the relay logs cert_pin_changed with both keys and
shows the new certificate."""

from __future__ import annotations

import urllib.request

import pytest
from control import cli_json, cli_json_lines, connector, relaycore, round_trip
from support.relay import relay_process
from support.servers import EchoServer, tls_server_context
from support.tlsconn import note_sni

from relaycore.lab.base import HOST, free_port, wait_for
from relaycore.lab.pki import Issued, make_pki

pytestmark = pytest.mark.slow

TIMEOUT = 20.0


def context(issued: Issued):  # type: ignore[no-untyped-def]
    ctx = tls_server_context(issued.chain, issued.key)
    ctx.sni_callback = note_sni
    return ctx


def test_short_lived_certificate_and_rotated_key(tmp_path):
    pki = make_pki(tmp_path / "pki")
    short = pki.issue("short", dns=["localhost"], days=3)
    rotated = pki.issue("rotated", dns=["localhost"], days=60)
    port, metrics = free_port(), free_port()
    run_dir = tmp_path / "run"
    with EchoServer(tls=context(short)) as up:
        config = (
            f'[relay]\nworkers = 2\nrun_dir = "{run_dir}"\n'
            f'[stats]\ninterval_s = 0.2\nprometheus = "{HOST}:{metrics}"\n'
            f'[[connector]]\nname = "api"\nlisten = "{HOST}:{port}"\n'
            f'upstream = "localhost:{up.port}"\nca = "{pki.ca_cert}"\n'
        )
        with relay_process(config, tmp_path) as relay:
            assert round_trip(port, b"one\n") == b"one\n"
            line = relay.wait_line(r"cert_expiring", TIMEOUT)
            assert f"connector api: cert_expiring: upstream localhost:{up.port}:" in line
            assert "in 3.0 days (cert_warn_days = 14): CN=short, issuer CN=Test CA" in line

            stats = connector(cli_json("stats", "--run-dir", str(run_dir)), "api")
            assert stats["cert"]["pin"] == short.spki_pin()
            assert stats["cert"]["subject"] == "CN=short"
            not_after = stats["cert"]["not_after"]
            status = relaycore("status", "--run-dir", str(run_dir))
            assert "upstream certificates:" in status.stdout
            assert "  api: expires " in status.stdout
            assert f"(in 3 d), CN=short, issuer CN=Test CA, key {short.spki_pin()}" in status.stdout
            with urllib.request.urlopen(f"http://{HOST}:{metrics}/metrics", timeout=10) as r:
                text = r.read().decode()
            assert (
                f'relaycore_upstream_cert_expiry_timestamp_seconds{{connector="api"}}'
                f" {not_after:.0f}"
            ) in text.splitlines()

            # The server's key is rotated; the next handshakes meet the new one.
            mark = relay.line_count
            up.tls = context(rotated)
            wait_for(
                lambda: (
                    round_trip(port, b"two\n") == b"two\n"
                    and connector(cli_json("stats", "--run-dir", str(run_dir)), "api")["cert"][
                        "pin"
                    ]
                    == rotated.spki_pin()
                ),
                TIMEOUT,
                "the rotated certificate in stats",
            )
            line = relay.wait_line(r"cert_pin_changed", TIMEOUT, since=mark)
            assert (
                f"the server presents another key: {rotated.spki_pin()}, before"
                f" {short.spki_pin()} (CN=rotated, issuer CN=Test CA, expires "
            ) in line
            causes = {
                r["cause"]
                for r in cli_json_lines("logs", "--run-dir", str(run_dir), "--connector", "api")
            }
            # (The server is Python's ssl on OpenSSL 3.0: a pq_classical notice comes too.)
            assert {c for c in causes if c.startswith("cert_")} == {
                "cert_expiring",
                "cert_pin_changed",
            }
            # 60 days is beyond cert_warn_days: no new warning for the new certificate.
            assert not any("cert_expiring" in x for x in relay.lines[mark:])
