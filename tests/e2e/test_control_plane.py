"""The control plane as an operator and a third party see it: the sockets in run_dir, the
stats and log streams, the CLI (status, stats, logs), Prometheus, and the two promises
that matter under load: the workers' loops never wait on ZeroMQ, and a flood of failures
is counted exactly while costing the supervisor little.

docs/PROTOCOL.md is the contract for what crosses the sockets; the subscriber test reads
them with pyzmq and msgspec alone, as a program that is not relaycore would.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import zmq
from control import (
    HOST,
    LineReader,
    cli_json,
    cli_json_lines,
    connector,
    flood,
    refused_once,
    relaycore,
    round_trip,
    wait_line,
    with_connector,
    with_stats,
)
from prometheus_client.parser import text_string_to_metric_families
from storm import AsyncEchoServer, StormResult, storm
from support.relay import relay_config, relay_process
from support.servers import EchoServer
from support.unreachable import refused_port

from relaycore.lab.base import free_port, wait_for

pytestmark = pytest.mark.slow

SOCKETS = ("events", "control", "stats", "admin")

# The fields docs/PROTOCOL.md documents, as a subscriber sees them (plain msgpack maps).
STATS_FIELDS = {"type", "time", "generation", "connectors", "workers"}
CONNECTOR_FIELDS = {
    "name",
    "active",
    "opened",
    "closed",
    "opened_per_s",
    "bytes_in",
    "bytes_out",
    "handshakes",
    "handshakes_resumed",
    "errors",
}
WORKER_FIELDS = {"slot", "generation", "pid", "started", "active", "reports_dropped", "draining"}
LOG_FIELDS = {
    "connector",
    "cause",
    "upstream",
    "reason",
    "count",
    "first",
    "last",
    "client",
    "destination",
    "worker",
    "generation",
}


def two_connectors(
    run_dir: Path, port: int, upstream: int, dead_port: int, dead_upstream: int, **kw: Any
) -> str:
    """Connector "t" to a working upstream and "dead" to a port that refuses."""
    config = relay_config(run_dir=run_dir, listen_port=port, upstream_port=upstream, **kw)
    return with_connector(config, "dead", dead_port, dead_upstream)


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def metric_samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


# -- 1. topology -----------------------------------------------------------------------------


def test_run_dir_holds_private_sockets_tcp_publish_and_a_lock(tmp_path):
    port, publish_port = free_port(), free_port()
    run_dir = tmp_path / "run"
    with EchoServer() as echo:
        config = with_stats(
            relay_config(run_dir=run_dir, listen_port=port, upstream_port=echo.port),
            publish=f"tcp://{HOST}:{publish_port}",
        )
        with relay_process(config, tmp_path) as relay:
            assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
            inodes = {}
            for name in SOCKETS:
                st = os.stat(run_dir / f"{name}.sock")
                assert stat.S_ISSOCK(st.st_mode), name
                assert stat.S_IMODE(st.st_mode) == 0o600, (name, oct(st.st_mode))
                inodes[name] = st.st_ino

            # The same stats on the TCP endpoint of [stats] publish.
            from relaycore.protocol import StatsReport

            ctx = zmq.Context()
            try:
                sub = ctx.socket(zmq.SUB)
                sub.setsockopt(zmq.LINGER, 0)
                sub.setsockopt(zmq.SUBSCRIBE, b"stats")
                sub.connect(f"tcp://{HOST}:{publish_port}")
                assert sub.poll(10_000), "no stats report on the tcp endpoint within 10 s"
                topic, payload = sub.recv_multipart()
                sub.close()
            finally:
                ctx.term()
            assert topic == b"stats"
            report = msgspec.msgpack.decode(payload, type=StatsReport)
            assert report.generation == 1
            assert [c.name for c in report.connectors] == ["t"]

            # A second relaycore on the same run_dir stops before it touches the sockets.
            other = tmp_path / "other"
            other.mkdir()
            (other / "relay.toml").write_text(
                relay_config(run_dir=run_dir, listen_port=free_port(), upstream_port=echo.port)
            )
            out = relaycore("run", "-c", str(other / "relay.toml"))
            assert out.returncode == 4, out
            assert out.stderr.splitlines() == [
                f"relaycore: error: another relaycore (pid {relay.proc.pid}) is running"
                f" with run_dir {run_dir}"
            ]
            for name in SOCKETS:
                assert os.stat(run_dir / f"{name}.sock").st_ino == inodes[name], name
            assert cli_json("status", "--run-dir", str(run_dir))["pid"] == relay.proc.pid
            assert round_trip(port, b"still here\n") == b"still here\n"


# -- 2. a third-party subscriber ---------------------------------------------------------------


def test_third_party_subscriber_reads_stats_and_log_with_pyzmq_and_msgspec(tmp_path):
    # No relaycore import here: what docs/PROTOCOL.md's example does, with deadlines.
    port, dead_port = free_port(), free_port()
    run_dir = tmp_path / "run"
    with refused_port() as dead_upstream, EchoServer() as echo:
        config = two_connectors(run_dir, port, echo.port, dead_port, dead_upstream)
        with relay_process(config, tmp_path):
            ctx = zmq.Context()
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"stats")
            sub.setsockopt(zmq.SUBSCRIBE, b"log")
            sub.connect(f"ipc://{run_dir}/stats.sock")
            got: dict[bytes, dict[str, Any]] = {}
            try:
                deadline = time.monotonic() + 20
                while len(got) < 2 and time.monotonic() < deadline:
                    if b"stats" in got:
                        refused_once(dead_port)  # until a log record comes
                    if not sub.poll(500):
                        continue
                    topic, payload = sub.recv_multipart()
                    message = msgspec.msgpack.decode(payload)
                    assert isinstance(message, dict)
                    got.setdefault(topic, message)
            finally:
                sub.close()
                ctx.term()
    assert set(got) == {b"stats", b"log"}, got

    stats = got[b"stats"]
    assert set(stats) == STATS_FIELDS
    assert stats["type"] == "stats"
    assert isinstance(stats["time"], float)
    assert abs(stats["time"] - time.time()) < 60
    assert stats["generation"] == 1
    assert [c["name"] for c in stats["connectors"]] == ["t", "dead"]
    for c in stats["connectors"]:
        assert set(c) == CONNECTOR_FIELDS, c
        assert isinstance(c["opened_per_s"], float)
        assert isinstance(c["errors"], dict)
        counts = CONNECTOR_FIELDS - {"name", "errors", "opened_per_s"}
        assert all(isinstance(c[k], int) for k in counts), c
    assert len(stats["workers"]) == 1
    (worker,) = stats["workers"]
    assert set(worker) == WORKER_FIELDS
    assert (worker["slot"], worker["generation"], worker["draining"]) == (0, 1, False)

    log = got[b"log"]
    assert set(log) == LOG_FIELDS, log  # a log record is a bare map: the topic names it
    assert log["connector"] == "dead"
    assert log["cause"] == "connect_refused"
    assert log["upstream"] == f"{HOST}:{dead_upstream}"
    assert log["reason"] == "Connection refused"
    assert log["count"] >= 1
    assert log["first"] <= log["last"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", log["client"]), log
    assert log["destination"] == ""  # not a gateway connector
    assert (log["worker"], log["generation"]) == (0, 1)


# -- 3. the loop never waits on ZeroMQ ---------------------------------------------------------

STOP_S = 5.0
STORM = 1000
TRANSFER = 16 << 20


def echo_transfer(port: int, result: dict[str, Any]) -> None:
    """TRANSFER bytes through the relay in 256 KiB ping-pongs; the echo's digest."""
    data = os.urandom(TRANSFER)
    echo = hashlib.sha256()
    with socket.create_connection((HOST, port), timeout=10) as s:
        for off in range(0, TRANSFER, 1 << 18):
            chunk = data[off : off + (1 << 18)]
            s.sendall(chunk)
            left = len(chunk)
            while left:
                got = s.recv(left)
                assert got, "EOF in the middle of the transfer"
                echo.update(got)
                left -= len(got)
    result["ok"] = echo.digest() == hashlib.sha256(data).digest()


def test_a_stopped_supervisor_does_not_stall_traffic_and_reports_resume(tmp_path):
    port, prom = free_port(), free_port()
    run_dir = tmp_path / "run"
    with AsyncEchoServer() as echo:
        config = with_stats(
            relay_config(
                run_dir=run_dir,
                listen_port=port,
                upstream_port=echo.port,
                workers=2,
                max_connections=5000,
            ),
            # 50 reports a second: a 5 s stop outgrows what the ipc socket buffers
            # (about 200 KB, some 120 reports), so the drop path really runs.
            interval_s=0.02,
            prometheus=f"{HOST}:{prom}",
        )
        with relay_process(config, tmp_path) as relay:
            supervisor = psutil.Process(relay.proc.pid)
            storm_result = StormResult()
            transfer: dict[str, Any] = {}
            threads = [
                threading.Thread(
                    target=storm,
                    args=(port, STORM),
                    kwargs={"concurrency": 100, "deadline_s": STOP_S, "progress": storm_result},
                    daemon=True,
                ),
                threading.Thread(target=echo_transfer, args=(port, transfer), daemon=True),
            ]
            supervisor.suspend()
            stopped = time.monotonic()
            try:
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(max(0.0, stopped + STOP_S - time.monotonic()))
                done_after = time.monotonic() - stopped
                done_in_stop = not any(t.is_alive() for t in threads)
                still_stopped = supervisor.status() == psutil.STATUS_STOPPED
                # The rest of the stop is a measurement window: reports pile up meanwhile.
                threading.Event().wait(max(0.0, stopped + STOP_S - time.monotonic()))
            finally:
                supervisor.resume()
            for t in threads:
                t.join(10)
            resumed = time.time()
            assert still_stopped
            assert done_in_stop, f"the traffic was not done {done_after:.1f} s into the stop"
            assert not any(t.is_alive() for t in threads)
            assert storm_result.outcomes == {"ok": STORM}, storm_result.outcomes
            assert transfer == {"ok": True}
            print(f"\ntraffic done {done_after:.2f} s into a {STOP_S:.0f} s stop")

            # Reports resumed: the totals include what was relayed during the stop.
            def caught_up() -> dict[str, Any] | None:
                report = cli_json("stats", "--run-dir", str(run_dir))
                return report if connector(report, "t")["closed"] == STORM + 1 else None

            report = wait_for(caught_up, 15, "stats to count the traffic of the stop")
            assert report["time"] > resumed
            t = connector(report, "t")
            assert t["opened"] == STORM + 1
            assert (
                t["bytes_in"]
                == t["bytes_out"]
                == TRANSFER + sum(len(f"storm {k}\n") for k in range(STORM))
            )

            status = cli_json("status", "--run-dir", str(run_dir))
            dropped = {w["pid"]: w["reports_dropped"] for w in status["workers"]}
            _, _, body = scrape(prom)
            total = metric_samples(body)[("relaycore_reports_dropped_total", frozenset())]
            print(f"reports dropped per worker: {dropped}; prometheus total {total:.0f}")
            assert total == sum(dropped.values())
            assert sum(dropped.values()) > 0, (
                f"no report dropped in a {STOP_S:.0f} s stop at interval_s 0.02: {dropped}"
            )


# -- 4. an error flood -------------------------------------------------------------------------

FLOOD = 10_000


def test_error_flood_is_counted_exactly_merged_once_and_cheap_for_the_supervisor(tmp_path):
    port, dead_port = free_port(), free_port()
    run_dir = tmp_path / "run"
    with refused_port() as dead_upstream, EchoServer() as echo:
        config = two_connectors(
            run_dir, port, echo.port, dead_port, dead_upstream, workers=2, max_connections=5000
        )
        with relay_process(config, tmp_path) as relay:
            supervisor = psutil.Process(relay.proc.pid)
            workers = [psutil.Process(pid) for pid in relay.worker_pids(2)]
            sup_before, work_before = cpu_s(supervisor), sum(map(cpu_s, workers))
            started = time.monotonic()
            outcomes = flood(dead_port, FLOOD, concurrency=200, deadline_s=60)
            flood_s = time.monotonic() - started
            assert outcomes.total() == FLOOD
            assert set(outcomes) <= {"reset", "eof"}, outcomes

            def counted() -> dict[str, Any] | None:
                report = cli_json("stats", "--run-dir", str(run_dir))
                n = connector(report, "dead")["errors"].get("connect_refused", 0)
                return report if n >= FLOOD else None

            report = wait_for(counted, 20, f"{FLOOD} refused connects in stats")
            sup_cpu = cpu_s(supervisor) - sup_before
            work_cpu = sum(map(cpu_s, workers)) - work_before
            print(
                f"\nflood of {FLOOD} in {flood_s:.2f} s: supervisor CPU {sup_cpu:.3f} s,"
                f" workers CPU {work_cpu:.3f} s ({100 * sup_cpu / work_cpu:.1f}%)"
            )
            dead = connector(report, "dead")
            assert dead["errors"] == {"connect_refused": FLOOD}
            assert (dead["opened"], dead["closed"], dead["active"]) == (FLOOD, FLOOD, 0)
            assert connector(report, "t")["errors"] == {}
            assert sup_cpu < 0.5 * work_cpu

            records = cli_json_lines("logs", "--run-dir", str(run_dir), "--connector", "dead")
            assert [(r["connector"], r["cause"], r["upstream"]) for r in records] == [
                ("dead", "connect_refused", f"{HOST}:{dead_upstream}")
            ]
            warnings = [
                int(m[1])
                for line in relay.lines
                if (m := re.search(r"connector dead: connect_refused: .* \(x(\d+), worker", line))
            ]
            assert records[0]["count"] == FLOOD, (
                f"the merged record counts {records[0]['count']} of {FLOOD} refused connects"
                f" (the supervisor logged {len(warnings)} batches, x{sum(warnings)} in all)"
            )


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
            assert status["ktls"]
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
            assert lines[2] == f"capabilities: splice off, kTLS {status['ktls']}"
            assert lines[3] == "workers: 2"
            assert lines[4].split() == [
                "slot",
                "gen",
                "pid",
                "uptime",
                "connections",
                "state",
            ]
            rows = [line.split() for line in lines[5:]]
            assert sorted(int(r[2]) for r in rows) == pids
            for r in rows:
                assert r[1] == "1", r
                assert re.fullmatch(r"\d+s", r[3]), r
                assert r[4:] == ["0", "serving"], r

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
            wait_line(
                relay,
                r"relaycore\[supervisor\] WARNING connector dead: connect_refused: upstream"
                rf" {HOST}:{dead_upstream}: Connection refused \(x1, worker 0, last client"
                r" 127\.0\.0\.1:\d+\)",
            )

            everything = relaycore("logs", "--run-dir", str(run_dir))
            assert everything.returncode == 0, everything.stderr
            assert len(everything.stdout.splitlines()) == 2
            only = relaycore("logs", "--run-dir", str(run_dir), "--connector", "dead")
            assert only.returncode == 0, only.stderr
            (line,) = only.stdout.splitlines()
            assert re.fullmatch(
                rf"\S+ dead: connect_refused: upstream {HOST}:{dead_upstream}: Connection"
                r" refused \(last client 127\.0\.0\.1:\d+, worker 0 g1\)",
                line,
            ), line
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
        with relay_process(config, tmp_path):
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
                "relaycore_bytes": "counter",
                "relaycore_errors": "counter",
                "relaycore_workers": "gauge",
                "relaycore_config_generation": "gauge",
                "relaycore_reports_dropped": "counter",
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
            assert metric_samples(body) == expected
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
