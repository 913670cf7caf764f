"""`relaycore demo` as a user runs it, and the demo's path with the lab's pieces in the
test process: simulated devices, plain HTTP to a real `relaycore run`, verified TLS from
it to the recording HTTPS server. Everything on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from control import LineReader

from relaycore.demo import SERVER_NAME, render_config
from relaycore.lab.base import HOST, free_port
from relaycore.lab.devices import drive_devices, telemetry
from relaycore.lab.https import HttpsUpstream
from relaycore.lab.pki import make_server_pki
from relaycore.lab.relay import RelayProcess

DEMO_TIMEOUT = 90.0
LINE_TIMEOUT = 30.0


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaycore", "demo", *args],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def temp_dir_of(stdout: str) -> Path:
    """The demo's temp dir, from the config path it prints."""
    match = re.search(r"^config    (\S+)/relay\.toml:$", stdout, re.M)
    assert match, stdout
    return Path(match[1])


def test_demo_sends_the_traffic_and_stops_cleanly() -> None:
    out = demo("--duration", "0", "--devices", "2", "--connections", "2", "--requests", "2")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "All 8 requests were answered 200 by the HTTPS server through the relay." in out.stdout
    assert "  SNI              localhost on 4" in out.stdout
    # The server got the Host it serves, not the relay's address the device dialled.
    assert re.search(r"^    Host: localhost:\d+$", out.stdout, re.M), out.stdout
    assert "relay stopped cleanly (exit code 0)." in out.stdout
    assert out.stderr == ""
    assert not temp_dir_of(out.stdout).exists()  # the PKI and the config went with it


@pytest.mark.parametrize(
    ("signum", "said"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")]
)
def test_demo_stops_the_relay_on_ctrl_c_or_sigterm(signum: int, said: str) -> None:
    """Once the demo waits for the user, a Ctrl-C (or SIGTERM) stops the relay the way an
    operator would: drained, exit 0, nothing left behind."""
    reader = LineReader("demo", "--devices", "1", "--connections", "1", "--requests", "1")
    lines: list[str] = []
    try:
        while not lines or lines[-1] != "Press Ctrl-C to stop.":
            line = reader.next_line(LINE_TIMEOUT)
            assert line is not None, "\n".join(lines)
            lines.append(line)
    finally:
        code, stderr = reader.stop(signum)
    rest = []
    while (line := reader.next_line(0)) is not None:
        rest.append(line)
    assert code == 0, (lines, rest, stderr)
    assert f"{said} received." in rest
    assert rest[-1] == "relay stopped cleanly (exit code 0).", rest
    assert not temp_dir_of("\n".join(lines)).exists()


def test_devices_through_the_relay_reach_the_recording_server(tmp_path: Path) -> None:
    """The demo's path, with the lab's pieces: each device's telemetry arrives intact, over
    TLS the relay verified (SNI localhost), and the relay resumes sessions on later
    connections (one worker, so one session cache)."""
    pki = make_server_pki(tmp_path / "pki", SERVER_NAME)
    listen = (HOST, free_port())
    with HttpsUpstream(pki.cert, pki.key) as https:
        config = tmp_path / "relay.toml"
        config.write_text(render_config(listen, https.address, pki.ca, tmp_path / "run", workers=1))
        with RelayProcess(config, cwd=tmp_path) as relay:
            relay.wait_ready(LINE_TIMEOUT)
            reports = drive_devices(listen, devices=2, connections=3, requests=2)
        assert [r.error for r in reports] == [None, None], reports
        assert [r.ok for r in reports] == [6, 6]
        legs, got = https.legs, https.requests
    assert len(legs) == 6
    assert {(leg.sni, leg.peer) for leg in legs} == {(SERVER_NAME, HOST)}
    assert sum(r.resumed for r in reports) == sum(leg.resumed for leg in legs) >= 1
    assert {(r.method, r.path) for r in got} == {("POST", "/telemetry")}
    # Every request's Host is the server's name and port (http_host = "rewrite").
    assert {r.host for r in got} == {f"{SERVER_NAME}:{https.port}"}
    bodies = sorted((json.loads(r.body)["device"], json.loads(r.body)["seq"]) for r in got)
    assert bodies == [(f"dev-{d}", seq) for d in (1, 2) for seq in range(6)]
    # Byte for byte what the device sent: the rewrite touches the head only.
    first = json.loads(got[0].body)
    assert got[0].body == telemetry(first["device"], first["seq"], first["temp_c"])
