"""`relaycore run --watch`: a change of the config file is a reload, with reload's rule (a
bad file is rejected with its field path and the running generation stays), whether the
file is edited in place or is a Kubernetes ConfigMap whose ..data symlink is swapped.

Two upstreams tag their echoes ("A:" and "B:"), so every answer says which config serves.
For a fleet, /metrics says which file is in force (its SHA-256) and whether the latest
reload took.
"""

from __future__ import annotations

import hashlib
import urllib.request

import pytest
from control import TaggedEchoServer, round_trip
from support.configmap import ConfigMapVolume
from support.relay import relay_config, relay_process, with_session_io

from relaycore.lab.base import HOST, free_port
from relaycore.lab.relay import RelayProcess

pytestmark = pytest.mark.slow

TIMEOUT = 20.0


def served_by(port: int) -> bytes:
    return round_trip(port, b"ping\n")[:2]


def config_metrics(port: int) -> dict[str, str]:
    """Two relaycore_config_* samples of /metrics: name{labels} -> value."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=TIMEOUT) as r:
        lines = r.read().decode().splitlines()
    wanted = ("relaycore_config_info{", "relaycore_config_last_reload_successful ")
    return dict(line.rsplit(" ", 1) for line in lines if line.startswith(wanted))


def info(text: str) -> str:
    return f'relaycore_config_info{{sha256="{hashlib.sha256(text.encode()).hexdigest()}"}}'


def test_an_edited_file_is_reloaded_and_a_bad_one_refused(tmp_path):
    port = free_port()
    with TaggedEchoServer(b"A:") as a, TaggedEchoServer(b"B:") as b:
        config = relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=a.port)
        with relay_process(config, tmp_path, run_options=["--watch"]) as relay:
            assert served_by(port) == b"A:"
            mark = relay.line_count
            relay.write_config(config.replace(f':{a.port}"', f':{b.port}"'))
            relay.wait_line(r"config file changed: reloading", TIMEOUT, since=mark)
            relay.wait_line(r"ready generation=2 ", TIMEOUT, since=mark)
            assert served_by(port) == b"B:"

            mark = relay.line_count
            relay.write_config(config.replace('splice = "off"', 'splice = "on"'))
            relay.wait_line(
                r"reload rejected, generation 2 stays: relay\.splice: expected", TIMEOUT, since=mark
            )
            assert served_by(port) == b"B:"

            # Fixed by a rename over it (what editors and deploy tools do): generation 3.
            mark = relay.line_count
            fixed = tmp_path / "relay.toml.new"
            fixed.write_text(with_session_io(config))
            fixed.rename(relay.config_path)
            relay.wait_line(r"ready generation=3 ", TIMEOUT, since=mark)
            assert served_by(port) == b"A:"
            assert relay.stop() == 0


def test_a_configmap_update_is_reloaded_and_a_bad_one_refused(tmp_path):
    port, metrics = free_port(), free_port()
    volume = ConfigMapVolume(tmp_path / "configmap")
    with TaggedEchoServer(b"A:") as a, TaggedEchoServer(b"B:") as b:
        config = relay_config(run_dir=tmp_path / "run", listen_port=port, upstream_port=a.port)
        config += f'\n[stats]\nprometheus = "{HOST}:{metrics}"\n'
        config = with_session_io(config)  # as published: the metric names its digest
        volume.publish({"relay.toml": config})
        with RelayProcess(volume.path("relay.toml"), run_options=["--watch"]) as relay:
            relay.wait_ready(TIMEOUT)
            assert served_by(port) == b"A:"
            assert config_metrics(metrics) == {
                info(config): "1",
                "relaycore_config_last_reload_successful": "1",
            }

            mark = relay.line_count
            to_b = config.replace(f':{a.port}"', f':{b.port}"')
            volume.publish({"relay.toml": to_b})
            relay.wait_line(r"ready generation=2 ", TIMEOUT, since=mark)
            assert served_by(port) == b"B:"
            assert config_metrics(metrics) == {
                info(to_b): "1",
                "relaycore_config_last_reload_successful": "1",
            }

            mark = relay.line_count
            volume.publish({"relay.toml": config.replace("workers = 1", "workers = 0")})
            relay.wait_line(
                r"reload rejected, generation 2 stays: relay\.workers: expected",
                TIMEOUT,
                since=mark,
            )
            assert served_by(port) == b"B:"
            assert config_metrics(metrics) == {
                info(to_b): "1",  # still the file in force
                "relaycore_config_last_reload_successful": "0",
            }

            mark = relay.line_count
            volume.publish({"relay.toml": config})
            relay.wait_line(r"ready generation=3 ", TIMEOUT, since=mark)
            assert served_by(port) == b"A:"
            assert relay.stop() == 0
