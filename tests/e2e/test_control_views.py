"""The control plane as an operator reads it: `relaycore status`, `stats` and `logs` (text
and JSON, once and --follow), what they say when nothing runs, the Prometheus endpoint,
and the log lines of the supervisor and the workers."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import time
from typing import Any

import pytest
import support.relay
from control import (
    HOST,
    LineReader,
    cli_json,
    cli_json_lines,
    connector,
    refused_once,
    relaycore,
    round_trip,
    wait_line,
    with_connector,
    with_stats,
)
from plane_checks import LOG_FIELDS, WORKER_FIELDS, metric_samples, scrape, two_connectors
from prometheus_client.parser import text_string_to_metric_families
from support.relay import relay_config, relay_process
from support.servers import EchoServer
from support.unreachable import refused_port

from relaycore import _core
from relaycore.lab.base import free_port, wait_for

pytestmark = pytest.mark.slow


# -- 5. the CLI as a user runs it ------------------------------------------------------------


def test_status_and_stats_show_workers_capabilities_and_connectors(tmp_path):
    port, dead_port = free_port(), free_port()
    run_dir = tmp_path / "run"
    payload = b"hello relay\n"
    with refused_port() as dead_upstream, EchoServer() as echo:
        config = two_connectors(run_dir, port, echo.port, dead_port, dead_upstream, workers=2)
        with relay_process(config, tmp_path) as relay:
            for _ in range(5):
                assert round_trip(port, payload) == payload
            for _ in range(3):
                refused_once(dead_port)

            def settled() -> dict[str, Any] | None:
                report = cli_json("stats", "-c", str(relay.config_path))
                t, dead = connector(report, "t"), connector(report, "dead")
                ok = t["closed"] == 5 and dead["errors"].get("connect_refused") == 3
                return report if ok else None

            report = wait_for(settled, 15, "stats to show the traffic")
            pids = sorted(relay.worker_pids(2))

            # status --json
            status = cli_json("status", "-c", str(relay.config_path))
            assert status["type"] == "status_reply"
            assert status["pid"] == relay.proc.pid
            assert status["config_path"] == str(relay.config_path)
            assert status["generation"] == 1
            assert status["splice"] == "off"
            assert status["io"] == support.relay.LOOP_IO
            assert status["ktls"]
            assert status["openssl"] == f"{_core.OPENSSL_VERSION} ({_core.OPENSSL_ORIGIN})"
            assert sorted(w["pid"] for w in status["workers"]) == pids
            for w in status["workers"]:
                assert set(w) == WORKER_FIELDS
                assert w["generation"] == 1
                assert w["active"] == 0
                assert time.time() - 60 < w["started"] <= time.time()

            # status, as text
            out = relaycore("status", "-c", str(relay.config_path))
            assert out.returncode == 0, out.stderr
            lines = out.stdout.splitlines()
            assert re.fullmatch(rf"relaycore supervisor pid {relay.proc.pid}, up \d+s", lines[0])
            assert lines[1] == f"config: {relay.config_path} (generation 1)"
            assert lines[2] == f"capabilities: splice off, io {status['io']}, kTLS {status['ktls']}"
            assert lines[3] == f"TLS: {status['openssl']}"
            assert lines[4] == "workers: 2"
            assert lines[5].split() == [
                "slot",
                "gen",
                "pid",
                "uptime",
                "connections",
                "memory",
                "state",
            ]
            rows = [line.split() for line in lines[6:]]
            assert sorted(int(r[2]) for r in rows) == pids
            for r in rows:
                assert r[1] == "1", r
                assert re.fullmatch(r"\d+s", r[3]), r
                assert r[4] == "0", r
                assert re.fullmatch(r"\d+\.\d", r[5]), r
                assert r[6:] == ["MiB", "serving"], r

            # stats --json (read above)
            t, dead = connector(report, "t"), connector(report, "dead")
            assert report["generation"] == 1
            assert len(report["workers"]) == 2
            assert t == {
                "name": "t",
                "active": 0,
                "opened": 5,
                "closed": 5,
                "opened_per_s": t["opened_per_s"],
                "bytes_in": 5 * len(payload),
                "bytes_out": 5 * len(payload),
                "handshakes": 0,
                "handshakes_resumed": 0,
                "errors": {},
                "cert": None,
                "alpn": {},
                "groups": {},
                "notices": {},
            }
            assert t["opened_per_s"] >= 0
            assert (dead["opened"], dead["closed"], dead["errors"]) == (
                3,
                3,
                {"connect_refused": 3},
            )

            # stats, as text
            out = relaycore("stats", "-c", str(relay.config_path))
            assert out.returncode == 0, out.stderr
            lines = out.stdout.splitlines()
            assert re.fullmatch(r"\d\d:\d\d:\d\d  generation 1, 2 workers", lines[0])
            for column in ("active", "opened/s", "closed", "bytes in", "bytes out"):
                assert column in lines[1]
            assert lines[1].endswith("handshakes (resumed)")
            row = re.compile(
                r"\s+(\S+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\S+ \S+)\s+(\S+ \S+)"
                r"\s+(\d+) \((\d+)\)"
            )
            m = row.fullmatch(lines[2])
            assert m, lines[2]
            n = len(payload) * 5
            assert (m[1], m[2], m[4], m[5], m[6], m[7], m[8], m[9]) == (
                "t",
                "0",
                "5",
                "5",
                f"{n} B",
                f"{n} B",
                "0",
                "0",
            )
            m = row.fullmatch(lines[3])
            assert m, lines[3]
            assert (m[1], m[4], m[5]) == ("dead", "3", "3")
            assert lines[4].split() == ["errors:", "connect_refused", "3"]


def test_stats_follow_prints_one_report_after_another(tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    with EchoServer() as echo:
        config = relay_config(run_dir=run_dir, listen_port=port, upstream_port=echo.port)
        with relay_process(config, tmp_path):
            follow = LineReader("stats", "--follow", "--json", "--run-dir", str(run_dir))
            try:
                first, second = follow.next_line(10), follow.next_line(10)
            finally:
                code, stderr = follow.stop()
            assert first is not None, stderr
            assert second is not None, stderr
            a, b = json.loads(first), json.loads(second)
            assert a["type"] == b["type"] == "stats"
            assert b["time"] > a["time"]
            assert [c["name"] for c in b["connectors"]] == ["t"]
            assert code == 0, stderr

            follow = LineReader("stats", "-f", "--run-dir", str(run_dir))
            headers: list[str] = []
            try:
                deadline = time.monotonic() + 10
                while len(headers) < 2 and time.monotonic() < deadline:
                    line = follow.next_line(max(0.0, deadline - time.monotonic()))
                    if line is not None and "generation 1" in line:
                        headers.append(line)
            finally:
                code, stderr = follow.stop()
            assert len(headers) == 2, stderr
            assert not any("\x1b" in h for h in headers)  # into a pipe: no screen control
            assert code == 0, stderr


def test_logs_filter_by_connector_follow_live_and_json(tmp_path):
    port, dead_port, dead2_port = free_port(), free_port(), free_port()
    run_dir = tmp_path / "run"
    with refused_port() as dead_upstream, EchoServer() as echo:
        config = with_connector(
            two_connectors(run_dir, port, echo.port, dead_port, dead_upstream),
            "dead2",
            dead2_port,
            dead_upstream,
        )
        with relay_process(config, tmp_path) as relay:
            refused_once(dead_port)
            refused_once(dead2_port)
            wait_for(
                lambda: len(cli_json_lines("logs", "--run-dir", str(run_dir))) == 2,
                15,
                "a record for each of dead and dead2",
            )
            # One line format for a record: the supervisor's log and `relaycore logs`
            # (dated by the record's latest failure) say the same.
            record_line = (
                rf"connector dead: connect_refused: upstream {HOST}:{dead_upstream}: Connection"
                r" refused \(x1, last client 127\.0\.0\.1:\d+, worker 0 g1\)"
            )
            wait_line(relay, r"relaycore\[supervisor\] WARNING " + record_line)

            everything = relaycore("logs", "--run-dir", str(run_dir))
            assert everything.returncode == 0, everything.stderr
            assert len(everything.stdout.splitlines()) == 2
            only = relaycore("logs", "--run-dir", str(run_dir), "--connector", "dead")
            assert only.returncode == 0, only.stderr
            (line,) = only.stdout.splitlines()
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d " + record_line, line), line
            (record,) = cli_json_lines("logs", "--run-dir", str(run_dir), "--connector", "dead2")
            assert set(record) == LOG_FIELDS
            assert (record["connector"], record["count"]) == ("dead2", 1)
            oldest_first = cli_json_lines("logs", "--run-dir", str(run_dir))
            assert [r["last"] for r in oldest_first] == sorted(r["last"] for r in oldest_first)
            assert cli_json_lines("logs", "--run-dir", str(run_dir), "-n", "1") == oldest_first[-1:]

            follow = LineReader(
                "logs", "--follow", "--json", "--connector", "dead", "--run-dir", str(run_dir)
            )
            live: list[dict[str, Any]] = []
            try:
                first = follow.next_line(10)  # the existing record, then live ones
                deadline = time.monotonic() + 15
                while not live and time.monotonic() < deadline:
                    refused_once(dead2_port)
                    refused_once(dead_port)
                    while (line := follow.next_line(1.0)) is not None:
                        live.append(json.loads(line))
                # whatever else arrives in one more report interval
                while (line := follow.next_line(1.5)) is not None:
                    live.append(json.loads(line))
            finally:
                code, stderr = follow.stop()
            assert first is not None, stderr
            assert json.loads(first)["connector"] == "dead"
            assert live, "no live record within 15 s"
            assert {r["connector"] for r in live} == {"dead"}
            assert all(set(r) == LOG_FIELDS for r in live)
            assert code == 0, stderr


@pytest.mark.parametrize("command", ["status", "stats", "logs", "reload"])
def test_commands_against_nothing_running_exit_6_with_one_line(tmp_path, command):
    empty = tmp_path / "run"
    empty.mkdir()
    out = relaycore(command, "--run-dir", str(empty))
    assert out.returncode == 6, out
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"relaycore: error: relaycore is not running with run_dir {empty}")
    assert out.stdout == ""


def test_status_via_config_file_with_nothing_running_exits_6(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(relay_config(run_dir=tmp_path / "run", listen_port=8080, upstream_port=9))
    out = relaycore("status", "-c", str(path))
    assert out.returncode == 6, out
    assert out.stderr.splitlines() == [
        f"relaycore: error: relaycore is not running with run_dir {tmp_path / 'run'}"
        f" (no {tmp_path / 'run' / 'admin.sock'}; use -c FILE or --run-dir DIR to name another)"
    ]


# -- 7. Prometheus -----------------------------------------------------------------------------


def test_prometheus_scrape_matches_stats_and_survives_a_silent_client(tmp_path):
    port, dead_port, prom = free_port(), free_port(), free_port()
    run_dir = tmp_path / "run"
    with refused_port() as dead_upstream, EchoServer() as echo:
        config = with_stats(
            two_connectors(run_dir, port, echo.port, dead_port, dead_upstream, workers=2),
            prometheus=f"{HOST}:{prom}",
        )
        with relay_process(config, tmp_path) as relay:
            for k in range(4):
                assert round_trip(port, b"x" * (100 + k)) == b"x" * (100 + k)
            for _ in range(2):
                refused_once(dead_port)

            def settled() -> bool:
                report = cli_json("stats", "--run-dir", str(run_dir))
                return (
                    connector(report, "t")["closed"] == 4
                    and connector(report, "dead")["closed"] == 2
                )

            wait_for(settled, 15, "stats to show the traffic")
            code, ctype, body = scrape(prom)
            report = cli_json("stats", "--run-dir", str(run_dir))
            assert code == 200
            assert ctype.startswith("text/plain; version=0.0.4")

            families = {f.name: f.type for f in text_string_to_metric_families(body)}
            assert families == {
                "relaycore_connections_active": "gauge",
                "relaycore_connections_opened": "counter",
                "relaycore_connections_closed": "counter",
                "relaycore_tls_handshakes": "counter",
                "relaycore_tls_handshakes_resumed": "counter",
                "relaycore_tls_handshake_groups": "counter",
                "relaycore_bytes": "counter",
                "relaycore_errors": "counter",
                "relaycore_notices": "counter",
                "relaycore_tls_alpn": "counter",
                "relaycore_workers": "gauge",
                "relaycore_config_generation": "gauge",
                "relaycore_reports_dropped": "counter",
                "relaycore_upstream_cert_expiry_timestamp_seconds": "gauge",  # no TLS here
                "relaycore_config_info": "gauge",
                "relaycore_config_last_reload_successful": "gauge",
                "relaycore_config_last_reload_success_timestamp_seconds": "gauge",
                "relaycore_accept_paused_emfile": "counter",
                "relaycore_worker_resident_bytes": "gauge",
            }
            expected: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
            for c in report["connectors"]:
                label = frozenset({("connector", c["name"])})
                for metric, field in (
                    ("relaycore_connections_active", "active"),
                    ("relaycore_connections_opened_total", "opened"),
                    ("relaycore_connections_closed_total", "closed"),
                    ("relaycore_tls_handshakes_total", "handshakes"),
                    ("relaycore_tls_handshakes_resumed_total", "handshakes_resumed"),
                ):
                    expected[(metric, label)] = c[field]
                for direction, field in (("in", "bytes_in"), ("out", "bytes_out")):
                    expected[("relaycore_bytes_total", label | {("direction", direction)})] = c[
                        field
                    ]
                for cause, n in c["errors"].items():
                    expected[("relaycore_errors_total", label | {("cause", cause)})] = n
            expected[("relaycore_workers", frozenset())] = len(report["workers"])
            expected[("relaycore_config_generation", frozenset())] = report["generation"]
            expected[("relaycore_reports_dropped_total", frozenset())] = sum(
                w["reports_dropped"] for w in report["workers"]
            )
            sha256 = hashlib.sha256(relay.config_path.read_bytes()).hexdigest()
            expected[("relaycore_config_info", frozenset({("sha256", sha256)}))] = 1
            expected[("relaycore_config_last_reload_successful", frozenset())] = 1
            loaded = ("relaycore_config_last_reload_success_timestamp_seconds", frozenset())
            expected[loaded] = metric_samples(body)[loaded]
            assert 0 < time.time() - expected[loaded] < 300
            expected[("relaycore_accept_paused_emfile_total", frozenset())] = sum(
                w["counters"].get("accept_paused_emfile", 0) for w in report["workers"]
            )
            samples = metric_samples(body)
            # Memory moves between two reports: each worker has its gauge, and some memory.
            resident = {
                labels: samples.pop((name, labels))
                for name, labels in list(samples)
                if name == "relaycore_worker_resident_bytes"
            }
            assert set(resident) == {
                frozenset({("slot", str(w["slot"])), ("generation", str(w["generation"]))})
                for w in report["workers"]
            }
            assert all(value > 0 for value in resident.values())
            assert samples == expected
            t_in = frozenset({("connector", "t"), ("direction", "in")})
            refused = frozenset({("connector", "dead"), ("cause", "connect_refused")})
            assert expected[("relaycore_bytes_total", t_in)] == 100 + 101 + 102 + 103
            assert expected[("relaycore_errors_total", refused)] == 2
            assert expected[("relaycore_workers", frozenset())] == 2

            code, _, body = scrape(prom, "/")
            assert code == 404
            code, _, _ = scrape(prom, "/metricsx")
            assert code == 404

            # A scraper that connects and says nothing, one that stops mid-request: neither
            # holds up the next scrape nor the admin socket.
            with (
                socket.create_connection((HOST, prom), timeout=10) as silent,
                socket.create_connection((HOST, prom), timeout=10) as partial,
            ):
                partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n")
                started = time.monotonic()
                code, _, body = scrape(prom)
                assert code == 200
                assert "relaycore_workers 2" in body
                assert cli_json("status", "--run-dir", str(run_dir))["generation"] == 1
                assert time.monotonic() - started < 4
                silent.settimeout(0)
                with pytest.raises(BlockingIOError):
                    silent.recv(1)  # still open, still unanswered


# -- 8. log lines ------------------------------------------------------------------------------

WORKER_ROLE = re.compile(r"worker \d+ g\d+")


def test_log_format_json_makes_every_line_an_object_naming_its_process(tmp_path):
    port, dead_port = free_port(), free_port()
    with refused_port() as dead_upstream, EchoServer() as echo:
        # interval_s = 0: no reports, so a worker logs its error events itself.
        config = with_stats(
            two_connectors(tmp_path / "run", port, echo.port, dead_port, dead_upstream),
            interval_s=0,
        )
        with relay_process(config, tmp_path, options=["--log-format", "json"]) as relay:
            refused_once(dead_port)
            wait_line(relay, r'"process": "worker 0 g1".*connector dead: connect_refused')
            relay.proc.send_signal(signal.SIGTERM)
            assert relay.proc.wait(20) == 0
            relay.ended.wait(5)
    assert relay.lines
    roles = set()
    for line in relay.lines:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "process", "pid", "message"} <= set(entry), line
        assert entry["process"] == "supervisor" or WORKER_ROLE.fullmatch(entry["process"]), line
        if entry["process"] == "supervisor":
            assert entry["pid"] == relay.proc.pid, line
        roles.add(entry["process"])
    assert roles == {"supervisor", "worker 0 g1"}
    messages = [json.loads(line)["message"] for line in relay.lines]
    assert any(m.startswith("ready generation=1") for m in messages)
    assert messages[-1] == "stopped"


def test_text_log_lines_name_their_process(tmp_path):
    port, dead_port = free_port(), free_port()
    with refused_port() as dead_upstream, EchoServer() as echo:
        config = with_stats(
            two_connectors(tmp_path / "run", port, echo.port, dead_port, dead_upstream),
            interval_s=0,
        )
        with relay_process(config, tmp_path) as relay:
            refused_once(dead_port)
            wait_line(relay, r"relaycore\[worker 0 g1\] WARNING connector dead: connect_refused")
    prefix = re.compile(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d relaycore\[(supervisor|worker \d+ g\d+)\]"
        r" (DEBUG|INFO|WARNING|ERROR) \S"
    )
    assert all(prefix.match(line) for line in relay.lines), relay.output()
    assert any("relaycore[supervisor] INFO stopped" in line for line in relay.lines)
