"""relaycore under systemd: the unit in contrib/systemd passes `systemd-analyze verify`
(which needs no running systemd) and keeps its exposure low, and the relay speaks the
notify protocol to a real unix datagram socket as systemd would bind it: READY=1 once the
first generation serves, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around every
reload, taken or rejected, STATUS= with the connection count, STOPPING=1 when it drains.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from control import Session, with_stats
from support.notify import NotifySocket
from support.relay import relay_config, relay_process
from support.servers import EchoServer

from relaycore.lab.base import free_port

pytestmark = pytest.mark.slow

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
INSTALLED = "/opt/relaycore/bin/relaycore"  # where the unit expects the console script
TIMEOUT = 20.0
MAX_EXPOSURE = 2.0  # systemd-analyze security: 0 (locked down) .. 10 (UNSAFE)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def unit_dir(tmp_path: Path, *, gateway: bool) -> Path:
    """The unit (and the gateway drop-in) as an operator installs them; ExecStart names
    this checkout's console script instead of /opt/relaycore's, since verify checks that
    the program exists. Nothing else is changed."""
    text = (UNITS / "relaycore.service").read_text()
    assert text.count(INSTALLED) == 1, "ExecStart should name the console script once"
    script = Path(sys.executable).with_name("relaycore")
    (tmp_path / "relaycore.service").write_text(text.replace(INSTALLED, str(script)))
    if gateway:
        (tmp_path / "relaycore.service.d").mkdir()
        shutil.copy(UNITS / "gateway.conf", tmp_path / "relaycore.service.d")
    return tmp_path / "relaycore.service"


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    # The C locale: its marks are "+" (safe) and "-" (exposed) whatever the CI's locale.
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


@pytest.mark.parametrize("gateway", [False, True], ids=["unit", "gateway-dropin"])
def test_unit_verifies_without_a_word_and_its_exposure_is_low(tmp_path, gateway):
    unit = unit_dir(tmp_path, gateway=gateway)
    out = analyze("verify", "--man=no", str(unit))
    # verify exits 0 on an unknown key or a bad value: it only warns. Any line is a fault.
    assert (out.returncode, out.stderr, out.stdout) == (0, "", "")

    out = analyze("security", "--offline=yes", str(unit))
    assert out.returncode == 0, out.stderr
    overall = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert overall is not None, out.stdout
    assert float(overall[1]) <= MAX_EXPOSURE, out.stdout
    # CAP_NET_ADMIN and netlink only with the drop-in (manage_rules runs nft).
    net_admin = [line for line in out.stdout.splitlines() if "~CAP_NET_ADMIN" in line]
    netlink = [line for line in out.stdout.splitlines() if "~AF_NETLINK" in line]
    assert net_admin
    assert netlink
    assert all(line.lstrip().startswith("-" if gateway else "+") for line in net_admin + netlink)


def test_unit_reload_and_stop_follow_the_supervisor():
    unit = (UNITS / "relaycore.service").read_text()
    keys = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert keys["Type"] == "notify"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["KillMode"] == "mixed"  # SIGTERM to the supervisor: it drains the workers
    assert keys["RuntimeDirectory"] == "relaycore"  # the default run_dir, /run/relaycore
    assert int(keys["LimitNOFILE"]) >= 2.5 * 10_000 * 4  # the default max_connections


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notifications_follow_start_reload_and_stop(tmp_path, monkeypatch, kind):
    port = free_port()
    with (
        NotifySocket(tmp_path / "notify.sock", abstract=kind == "abstract") as systemd,
        EchoServer() as echo,
    ):
        monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
        config = with_stats(
            relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port),
            interval_s=0.2,
        )
        with relay_process(config, tmp_path) as relay:
            first = systemd.next(TIMEOUT)
            assert first["READY"] == "1", first
            assert first["STATUS"] == "generation 1, 1 workers, 0 connections"

            session = Session(port)
            try:
                assert session.ask(b"hello\n", 6) == b"hello\n"
                # STATUS follows the connection count (the workers report every 0.2 s).
                while "1 connections" not in systemd.wait_for("STATUS", TIMEOUT)["STATUS"]:
                    pass

                before = monotonic_usec()
                relay.proc.send_signal(signal.SIGHUP)
                reloading = systemd.wait_for("RELOADING", TIMEOUT)
                assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
                ready = systemd.wait_for("READY", TIMEOUT)
                assert ready["STATUS"].startswith("generation 2, "), ready

                # A rejected reload is a reload too: systemd must hear that it is over.
                relay.write_config(config.replace("workers = 1", "workers = 0"))
                relay.proc.send_signal(signal.SIGHUP)
                systemd.wait_for("RELOADING", TIMEOUT)
                ready = systemd.wait_for("READY", TIMEOUT)
                assert ready["STATUS"].startswith("generation 2, "), ready
                relay.wait_line(r"reload rejected, generation 2 stays", TIMEOUT)
                assert session.ask(b"still\n", 6) == b"still\n"
            finally:
                session.close()

            relay.proc.send_signal(signal.SIGTERM)
            stopping = systemd.wait_for("STOPPING", TIMEOUT)
            assert stopping["STATUS"].startswith("stopping: draining"), stopping
            assert relay.wait(TIMEOUT) == 0


PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
# What the unit's NoNewPrivileges= and MemoryDenyWriteExecute= ask of the kernel, applied
# by a wrapper that then execs relaycore (systemd >= 256 uses PR_SET_MDWE itself; 252 has
# a seccomp filter with the same effect: no page both writable and executable).
RESTRICT = (
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True)\n"
    f"assert libc.prctl({PR_SET_NO_NEW_PRIVS}, 1, 0, 0, 0) == 0\n"
    f"assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0\n"
)
HARDEN = RESTRICT + "os.execv(sys.argv[1], sys.argv[1:])\n"


def mdwe_unavailable() -> str | None:
    probe = subprocess.run(
        [sys.executable, "-c", RESTRICT],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"PR_SET_MDWE refused (a kernel before 6.3?): {probe.stderr.strip()[-200:]}"
    return None


def test_relay_runs_with_no_writable_executable_memory_and_no_new_privileges(tmp_path):
    """MemoryDenyWriteExecute=yes would kill a relay that JITs or makes ctypes callbacks."""
    if (why := mdwe_unavailable()) is not None:
        pytest.skip(why)
    port = free_port()
    with EchoServer() as echo:
        config = relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=echo.port)
        with relay_process(config, tmp_path, wrapper=[sys.executable, "-c", HARDEN]) as relay:
            session = Session(port)
            try:
                assert session.ask(b"hardened\n", 9) == b"hardened\n"
            finally:
                session.close()
            assert relay.stop() == 0
