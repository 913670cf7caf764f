"""A proxy exit keeps its entries off its own host (issue 16): every address of the exit's
machine, not only loopback, is refused by the default policy, as the kernel's local
routing table has it at the moment of the request; an allow_destinations entry that
names such an address lets it through.

The exit runs in a network namespace of its own whose interface d0 (a veth pair, both ends
in the namespace) has 10.77.0.1/24
and fd77::1/64, with a banner server (own_host.py) on port 7000 of every address.
Nothing leaves the namespace, and deleting it deletes the interface.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import own_host
import pytest
from control import cli_json_lines
from netns import Netns, running, unavailable
from own_host import BANNER, SOCKS5_OK
from support.relay import relay_process

from relaycore.lab.base import HOST
from relaycore.lab.pki import NodeIdentity, make_identity

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

OWN_V4, OWN_V6 = "10.77.0.1", "fd77::1"
SERVER_PORT = 7000
DEFAULT_PORT, ALLOWED_PORT = 8442, 8441
SOCKS5_NOT_ALLOWED, SOCKS5_NET_UNREACHABLE = 2, 3


@pytest.fixture
def ns() -> Iterator[Netns]:
    tag = str(os.getpid())
    if (why := unavailable(tag)) is not None:
        pytest.skip(why)
    the_ns = Netns(f"rcex-{tag}")
    subprocess.run(["ip", "netns", "add", the_ns.name], check=True, timeout=10)
    try:
        the_ns.ip("link", "set", "lo", "up")
        # A veth pair with both ends here: the kernel of the test machine may lack dummy.
        the_ns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        the_ns.ip("addr", "add", f"{OWN_V4}/24", "dev", "d0")
        the_ns.ip("addr", "add", f"{OWN_V6}/64", "dev", "d0", "nodad")
        the_ns.ip("link", "set", "d0", "up")
        the_ns.ip("link", "set", "d1", "up")
        yield the_ns
    finally:
        for pid in the_ns.pids():
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", the_ns.name], check=True, timeout=10)


def exit_config(run_dir: Path, exit_id: NodeIdentity, entry: NodeIdentity) -> str:
    def table(name: str, port: int, extra: str = "") -> str:
        return (
            f'[[exit]]\nname = "{name}"\nlisten = "{HOST}:{port}"\ncert = "{exit_id.cert}"\n'
            f'key = "{exit_id.key}"\nallow = ["{entry.pin}"]\ntarget = "socks5"\n{extra}\n'
        )

    return (
        f'[relay]\nworkers = 1\nmax_connections = 100\nrun_dir = "{run_dir}"\n'
        "[timeouts]\nconnect_s = 2\n[stats]\ninterval_s = 0.2\n\n"
        + table("default", DEFAULT_PORT)
        + table("allowed", ALLOWED_PORT, f'allow_destinations = ["{OWN_V4}", "{OWN_V6}"]')
    )


def test_the_default_policy_refuses_every_address_of_the_exit_host(
    ns: Netns, tmp_path: Path
) -> None:
    exit_id = make_identity(tmp_path / "exit", "exit")
    entry = make_identity(tmp_path / "entry", "entry")
    run_dir = tmp_path / "run"

    def through(exit_port: int, host: str) -> dict[str, object]:
        args = ["socks5", str(exit_port), str(entry.cert), str(entry.key), host]
        out = ns.run(sys.executable, own_host.__file__, *args, str(SERVER_PORT))
        answer: dict[str, object] = json.loads(out)
        return answer

    server = [sys.executable, own_host.__file__, "serve", str(SERVER_PORT)]
    with (
        running(ns, server, tmp_path / "server.log", tmp_path) as banner,
        relay_process(exit_config(run_dir, exit_id, entry), tmp_path, wrapper=ns.argv()),
    ):
        banner.wait_output("listening", 10)
        for host in (OWN_V4, OWN_V6, "127.0.0.7"):
            assert through(DEFAULT_PORT, host) == {"reply": SOCKS5_NOT_ALLOWED, "data": ""}, host
        # An entry that names the address lets it through.
        for host in (OWN_V4, OWN_V6):
            assert through(ALLOWED_PORT, host) == {"reply": SOCKS5_OK, "data": BANNER}, host

        # Kept current: an address added while the exit runs is refused at once; once it
        # is gone again it is nobody's (nothing routes it: unreachable).
        new = "10.88.0.1"
        assert through(DEFAULT_PORT, new)["reply"] == SOCKS5_NET_UNREACHABLE
        ns.ip("addr", "add", f"{new}/32", "dev", "d0")
        assert through(DEFAULT_PORT, new)["reply"] == SOCKS5_NOT_ALLOWED
        ns.ip("addr", "del", f"{new}/32", "dev", "d0")
        assert through(DEFAULT_PORT, new)["reply"] == SOCKS5_NET_UNREACHABLE

        records = cli_json_lines("logs", "--run-dir", str(run_dir), "--connector", "default")
        denied = [r["reason"] for r in records if r["cause"] == "proxy_denied"]
        assert any(
            r.startswith(
                f"{OWN_V6} port {SERVER_PORT} is not an allowed destination (it is an"
                " address of the exit's own host"
            )
            for r in denied
        ), denied
