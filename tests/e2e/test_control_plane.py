"""The control plane as a third party and a loaded relay see it: the sockets in run_dir,
the stats and log streams, and the two promises that matter under load: the workers' loops
never wait on ZeroMQ, and a flood of failures is counted exactly while costing the
supervisor little. test_control_views.py has what an operator reads (status, stats, logs,
Prometheus, log lines).

docs/PROTOCOL.md is the contract for what crosses the sockets; the subscriber test reads
them with pyzmq and msgspec alone, as a program that is not relaycore would.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import threading
import time
from typing import Any

import msgspec
import psutil
import pytest
import zmq
from control import (
    HOST,
    cli_json,
    cli_json_lines,
    connector,
    flood,
    refused_once,
    relaycore,
    round_trip,
    with_stats,
)
from plane_checks import (
    CONNECTOR_FIELDS,
    LOG_FIELDS,
    STATS_FIELDS,
    WORKER_FIELDS,
    metric_samples,
    scrape,
    two_connectors,
)
from storm import AsyncEchoServer, StormResult, storm
from support.relay import relay_config, relay_process
from support.servers import EchoServer
from support.unreachable import refused_port

from relaycore.lab.base import free_port, wait_for

pytestmark = pytest.mark.slow

SOCKETS = ("events", "control", "stats", "admin")


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


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
        assert c["cert"] is None  # plain connectors: no certificate
        assert isinstance(c["alpn"], dict)
        assert isinstance(c["groups"], dict)
        assert c["notices"] == {}
        counts = CONNECTOR_FIELDS - {
            "name",
            "errors",
            "notices",
            "opened_per_s",
            "cert",
            "alpn",
            "groups",
        }
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
                if (m := re.search(r"connector dead: connect_refused: .* \(x(\d+), last", line))
            ]
            assert records[0]["count"] == FLOOD, (
                f"the merged record counts {records[0]['count']} of {FLOOD} refused connects"
                f" (the supervisor logged {len(warnings)} batches, x{sum(warnings)} in all)"
            )
