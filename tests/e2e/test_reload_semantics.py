"""What a reload promises: a changed connector applies to new connections, a session in
flight keeps the upstream it started with until it ends, a bad file changes nothing (and
says which field), and SIGHUP is the same reload as `relaycore reload`.

Two upstreams tag their echoes ("A:" and "B:"), so every answer says who gave it.
"""

from __future__ import annotations

import signal

import pytest
from control import Session, TaggedEchoServer, cli_json, relaycore, round_trip, wait_line
from support.relay import relay_config, relay_process

from relaycore.lab.base import free_port, wait_for

pytestmark = pytest.mark.slow

NEW_CONNECTIONS = 10  # after a reload, each must reach the new upstream


def answers(port: int, n: int = NEW_CONNECTIONS) -> set[bytes]:
    """The tags of n fresh connections' echoes."""
    return {round_trip(port, b"ping\n")[:2] for _ in range(n)}


def test_reload_moves_new_connections_and_the_session_in_flight_keeps_its_upstream(tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    with TaggedEchoServer(b"A:") as a, TaggedEchoServer(b"B:") as b:
        config = relay_config(run_dir=run_dir, listen_port=port, upstream_port=a.port, workers=2)
        with relay_process(config, tmp_path) as relay:
            assert answers(port) == {b"A:"}
            session = Session(port)
            try:
                assert session.ask(b"one\n", 6) == b"A:one\n"

                relay.write_config(config.replace(f':{a.port}"', f':{b.port}"'))
                out = relaycore("reload", "-c", str(relay.config_path))
                assert out.returncode == 0, out.stderr
                assert out.stdout.strip() == "reloaded: generation 2 is serving"
                assert cli_json("status", "--run-dir", str(run_dir))["generation"] == 2

                # Every new connection goes to B; the open session is still A's.
                assert answers(port) == {b"B:"}
                assert session.ask(b"two\n", 6) == b"A:two\n"
                wait_line(relay, r"g1\] INFO draining 1 connections")
                assert session.ask(b"three\n", 8) == b"A:three\n"
            finally:
                session.close()
            # With the session over, the old generation finishes draining and exits.
            wait_for(
                lambda: (
                    sum(" g1 (pid " in x and "exited with code 0" in x for x in relay.lines) == 2
                ),
                20,
                "both generation-1 workers to exit",
            )
            status = cli_json("status", "--run-dir", str(run_dir))
            assert {w["generation"] for w in status["workers"]} == {2}
            assert len(status["workers"]) == 2
            assert answers(port) == {b"B:"}


def test_bad_config_is_rejected_with_the_field_path_and_the_generation_stays(tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    with TaggedEchoServer(b"A:") as a:
        config = relay_config(run_dir=run_dir, listen_port=port, upstream_port=a.port)
        with relay_process(config, tmp_path) as relay:
            session = Session(port)
            try:
                assert session.ask(b"one\n", 6) == b"A:one\n"
                relay.write_config(config.replace("workers = 1", "workers = 0"))
                # With -c the CLI reads the file for its run_dir, and says what is wrong
                # with it before it asks the relay anything.
                out = relaycore("reload", "-c", str(relay.config_path))
                assert out.returncode == 3, out
                assert out.stderr.splitlines() == [
                    "relaycore: error: relay.workers: expected an integer >= 1, got 0"
                ]
                # The relay's own check of the file, asked through --run-dir.
                out = relaycore("reload", "--run-dir", str(run_dir))
                assert out.returncode == 3, out
                assert out.stderr.splitlines() == [
                    "relaycore: error: reload rejected, generation 1 stays:"
                    " relay.workers: expected an integer >= 1, got 0"
                ]
                wait_line(relay, r"reload rejected, generation 1 stays: relay\.workers: ")

                status = cli_json("status", "--run-dir", str(run_dir))
                assert status["generation"] == 1
                assert [w["generation"] for w in status["workers"]] == [1]
                assert answers(port) == {b"A:"}
                assert session.ask(b"two\n", 6) == b"A:two\n"
                assert not any("draining" in line for line in relay.lines)
            finally:
                session.close()


def test_sighup_is_the_same_reload(tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    with TaggedEchoServer(b"A:") as a, TaggedEchoServer(b"B:") as b:
        config = relay_config(run_dir=run_dir, listen_port=port, upstream_port=a.port)
        with relay_process(config, tmp_path) as relay:
            session = Session(port)
            try:
                assert session.ask(b"one\n", 6) == b"A:one\n"

                # A bad file: rejected, logged with the field path, nothing changes.
                relay.write_config(config.replace('splice = "off"', 'splice = "on"'))
                relay.proc.send_signal(signal.SIGHUP)
                wait_line(relay, r"reload rejected, generation 1 stays: relay\.splice: expected")
                assert cli_json("status", "--run-dir", str(run_dir))["generation"] == 1
                assert answers(port) == {b"A:"}

                # A good one: generation 2 on B for new connections, the session stays on A.
                relay.write_config(config.replace(f':{a.port}"', f':{b.port}"'))
                relay.proc.send_signal(signal.SIGHUP)
                wait_line(relay, r"ready generation=2 ")
                assert cli_json("status", "--run-dir", str(run_dir))["generation"] == 2
                assert answers(port) == {b"B:"}
                assert session.ask(b"two\n", 6) == b"A:two\n"
            finally:
                session.close()
            wait_line(relay, r"g1 \(pid \d+\) exited with code 0")
