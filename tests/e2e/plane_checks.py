"""What the control-plane tests (test_control_plane.py, test_control_views.py) share: the
fields docs/PROTOCOL.md documents, a relay with a working and a refused connector, and a
Prometheus scrape."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

from control import HOST, with_connector
from prometheus_client.parser import text_string_to_metric_families
from support.relay import relay_config

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
    "notices",
    "cert",
    "alpn",
    "groups",
}
WORKER_FIELDS = {
    "slot",
    "generation",
    "pid",
    "started",
    "active",
    "reports_dropped",
    "draining",
    "rss_bytes",
    "counters",
}
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
