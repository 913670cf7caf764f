"""contrib/kubernetes: every manifest is valid against the Kubernetes API schemas (strict:
no unknown field), offline, with kubernetes-validate's bundled schemas; and the pieces fit
together: the ConfigMap holds a config relaycore accepts, the probes and the scrape
annotations name its Prometheus port, the config and run_dir are where the DaemonSet
mounts them, the capabilities are the ones its mode needs, and the pod is given longer to
stop than the relay drains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from relaycore.addresses import parse_host_port
from relaycore.config import parse_config

DIR = Path(__file__).resolve().parents[2] / "contrib" / "kubernetes"
# The oldest Kubernetes release still maintained upstream when this was written, and the
# newest whose schemas the validator bundles.
VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]
KILL_GRACE_S = 5  # the supervisor's backstop after drain_timeout_s (supervisor.py)


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DIR.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [doc for _, doc in documents() if doc["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("name", "doc"), documents(), ids=lambda x: x if isinstance(x, str) else x["kind"]
)
def test_manifest_is_valid_against_the_api_schema(
    name: str, doc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_pieces_fit_together() -> None:
    configmap = by_kind("ConfigMap")
    daemonset = by_kind("DaemonSet")
    pod = daemonset["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["args"][:2] == ["run", "--watch"]
    config_path = Path(container["args"][container["args"].index("-c") + 1])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}

    # The config is the ConfigMap's key, mounted as a directory (a subPath never updates).
    assert "subPath" not in mounts["config"]
    assert Path(mounts["config"]["mountPath"]) == config_path.parent
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    config = parse_config(configmap["data"][config_path.name], "configmap")
    assert "emptyDir" in volumes["run"]
    assert mounts["run"]["mountPath"] == config.relay.run_dir

    # Probes and scraping on the Prometheus listener, reachable on the node's address.
    assert config.stats.prometheus is not None
    metrics = parse_host_port(config.stats.prometheus, require_ip=True)
    assert metrics.host == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": metrics.port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": metrics.port}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": metrics.port}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics.port)
    assert annotations["prometheus.io/path"] == "/metrics"

    # Gateway mode: the node's network, and NET_ADMIN because relaycore manages nftables.
    assert config.gateway is not None
    assert config.gateway.manage_rules
    assert pod["spec"]["hostNetwork"] is True
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False

    # SIGTERM, then the drain, then the supervisor's backstop, all before the SIGKILL.
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.relay.drain_timeout_s + KILL_GRACE_S
