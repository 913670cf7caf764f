"""A tunnel's two relaycore nodes agree on the post-quantum hybrid group X25519MLKEM768 out of
the box (no `pq` or `groups` written), curl's HTTPS through the tunnel still works, and the
group each handshake used reaches `relaycore stats --json` and Prometheus on both nodes.

The nodes, identities and curl helpers are test_tunnel.py's.
"""

from __future__ import annotations

import urllib.request

from control import cli_json, connector
from support.servers import HOST
from test_tunnel import (  # noqa: F401 (fixtures)
    Identities,
    Site,
    entry_table,
    exit_table,
    explain,
    ids,
    node,
    server,
    site,
    via_socks5h,
)

from relaycore.lab.base import free_port, wait_for
from relaycore.lab.https import HttpsUpstream

HYBRID = "X25519MLKEM768"
STATS_TIMEOUT = 10.0


def stats_table(port: int) -> str:
    return f'\n[stats]\ninterval_s = 0.2\nprometheus = "{HOST}:{port}"\n'


def groups_of(run_dir: str, name: str) -> dict[str, int]:
    report = cli_json("stats", "--run-dir", run_dir)
    groups: dict[str, int] = connector(report, name)["groups"]
    return groups


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def test_tunnel_nodes_negotiate_the_hybrid_group_and_curl_gets_through(
    tmp_path,
    ids: Identities,  # noqa: F811 (test_tunnel's fixtures)
    site: Site,  # noqa: F811
    server: HttpsUpstream,  # noqa: F811
) -> None:
    exit_port, entry_port = free_port(), free_port()
    exit_metrics, entry_metrics = free_port(), free_port()
    exit_tables = exit_table(
        exit_port, ids.exit, allow=[ids.entry.pin], target="socks5"
    ) + stats_table(exit_metrics)
    entry_tables = entry_table(
        "entry", entry_port, exit_port, ids.exit.pin, ids.entry
    ) + stats_table(entry_metrics)
    with (
        node(tmp_path, "exit", exit_tables) as exit_node,
        node(tmp_path, "entry", entry_tables) as entry_node,
    ):
        fetched = via_socks5h(entry_port, site, server)
        assert fetched.ok, explain(fetched, exit_node, entry_node)
        for n, name in ((exit_node, "exit"), (entry_node, "entry")):
            groups = wait_for(
                lambda n=n, name=name: groups_of(str(n.run_dir), name) or None,
                STATS_TIMEOUT,
                f"{name}'s handshake in its stats",
            )
            assert groups == {HYBRID: 1}, groups
        line = f'relaycore_tls_handshake_groups_total{{connector="entry",group="{HYBRID}"}} 1'
        assert line in metrics(entry_metrics).splitlines()
        line = f'relaycore_tls_handshake_groups_total{{connector="exit",group="{HYBRID}"}} 1'
        assert line in metrics(exit_metrics).splitlines()
        # Post-quantum both ways: no pq_classical notice on either node.
        assert exit_node.records() == []
        assert entry_node.records() == []
