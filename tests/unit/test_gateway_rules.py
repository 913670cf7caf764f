"""The gateway's nftables side: the ruleset a config gives, how nft's answers become
errors (with a fake `nft` on PATH), and `relaycore rules`."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from gateway_files import EMPTY_RULESET, PLAIN, gateway_file

from relaycore import cli
from relaycore.config import parse_config
from relaycore.gateway import (
    PassthroughRule,
    apply_rules,
    config_rules,
    remove_rules,
    render_rules,
)

net = ipaddress.ip_network

# -- the nftables ruleset -------------------------------------------------------------------------


def test_ruleset_without_passthrough() -> None:
    # Create, delete, create: one transaction that works whether the table exists or not.
    assert render_rules("dev0", 15001, []) == EMPTY_RULESET


def test_ruleset_of_a_typical_gateway() -> None:
    rules = [
        PassthroughRule("icmp", None, None),
        PassthroughRule("udp", net("10.99.2.2/32"), 53),
        PassthroughRule("tcp", net("10.99.2.2/32"), 9000),
    ]
    accepts = [
        '\t\tiifname "lan0" meta l4proto { icmp, ipv6-icmp } accept',
        '\t\tiifname "lan0" ip daddr 10.99.2.2/32 meta l4proto udp udp dport 53 accept',
        '\t\tiifname "lan0" ip daddr 10.99.2.2/32 meta l4proto tcp tcp dport 9000 accept',
    ]
    assert render_rules("lan0", 15002, rules).splitlines() == [
        "# relaycore gateway rules: devices on lan0",
        "table inet relaycore",
        "delete table inet relaycore",
        "table inet relaycore {",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *accepts,
        '\t\tiifname "lan0" meta l4proto tcp redirect to :15002',
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tct state established,related accept",
        *accepts,
        '\t\tiifname "lan0" drop',
        "\t}",
        "}",
    ]


@pytest.mark.parametrize(
    ("passthrough", "match"),
    [
        (("icmp", None, None), "meta l4proto { icmp, ipv6-icmp }"),
        (("icmp", "10.0.0.0/8", None), "ip daddr 10.0.0.0/8 meta l4proto icmp"),
        (("icmp", "2001:db8::/32", None), "ip6 daddr 2001:db8::/32 meta l4proto ipv6-icmp"),
        (("udp", None, None), "meta l4proto udp"),
        (("udp", None, 53), "meta l4proto udp udp dport 53"),
        (("udp", "10.99.2.2/32", None), "ip daddr 10.99.2.2/32 meta l4proto udp"),
        (("udp", "10.99.2.2/32", 53), "ip daddr 10.99.2.2/32 meta l4proto udp udp dport 53"),
        (
            ("udp", "2001:db8::53/128", 53),
            "ip6 daddr 2001:db8::53/128 meta l4proto udp udp dport 53",
        ),
        (("tcp", None, None), "meta l4proto tcp"),
        (("tcp", None, 22), "meta l4proto tcp tcp dport 22"),
        (("tcp", "192.0.2.0/24", None), "ip daddr 192.0.2.0/24 meta l4proto tcp"),
        (("tcp", "10.99.2.2/32", 9000), "ip daddr 10.99.2.2/32 meta l4proto tcp tcp dport 9000"),
        (("tcp", "2001:db8::/32", None), "ip6 daddr 2001:db8::/32 meta l4proto tcp"),
        (
            ("tcp", "2001:db8::1/128", 443),
            "ip6 daddr 2001:db8::1/128 meta l4proto tcp tcp dport 443",
        ),
    ],
)
def test_each_passthrough_is_accepted_before_the_redirect_and_the_drop(
    passthrough: tuple[str, str | None, int | None], match: str
) -> None:
    protocol, ip, port = passthrough
    rules = [PassthroughRule(protocol, None if ip is None else net(ip), port)]  # type: ignore[arg-type]
    lines = render_rules("dev0", 15001, rules).splitlines()
    accept = f'\t\tiifname "dev0" {match} accept'
    at = [i for i, line in enumerate(lines) if line == accept]
    assert len(at) == 2, lines  # once in prerouting (no redirect), once in forward
    assert lines[at[0] + 1].endswith("redirect to :15001"), lines
    assert lines[at[1] + 1] == '\t\tiifname "dev0" drop', lines


def test_config_rules_use_the_interface_and_the_listen_port() -> None:
    config = parse_config(
        gateway_file(
            gateway='listen = ["0.0.0.0:15009", "[::]:15009"]',
            interface="wlan1",
            passthrough='[[passthrough]]\nprotocol = "tcp"\nip = "2001:db8::/48"\nport = 443\n'
            '[[passthrough]]\nprotocol = "icmp"\nip = "10.0.0.0/8"\n',
        )
    )
    assert config_rules(config) == render_rules(
        "wlan1",
        15009,
        [
            PassthroughRule("tcp", net("2001:db8::/48"), 443),
            PassthroughRule("icmp", net("10.0.0.0/8"), None),
        ],
    )


# -- nft, for real or not -------------------------------------------------------------------------

FAKE_NFT = """\
#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_NFT_DIR/args"
if [ "$1" = "-f" ]; then cat > "$FAKE_NFT_DIR/stdin"; fi
if [ -n "$FAKE_NFT_STDERR" ]; then printf '%s\\n' "$FAKE_NFT_STDERR" >&2; fi
exit "${FAKE_NFT_EXIT:-0}"
"""


@pytest.fixture
def fake_nft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `nft` first on PATH that records its arguments and stdin in the returned dir,
    and answers with $FAKE_NFT_STDERR and $FAKE_NFT_EXIT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nft = bin_dir / "nft"
    nft.write_text(FAKE_NFT)
    nft.chmod(nft.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_NFT_DIR", str(tmp_path))
    return tmp_path


def test_apply_rules_loads_the_ruleset_in_one_nft_run(fake_nft: Path) -> None:
    apply_rules(EMPTY_RULESET)
    assert (fake_nft / "args").read_text() == "-f -\n"
    assert (fake_nft / "stdin").read_text() == EMPTY_RULESET


def test_apply_rules_raises_with_nfts_own_words(
    fake_nft: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NFT_EXIT", "1")
    monkeypatch.setenv("FAKE_NFT_STDERR", "Error: Could not process rule: Operation not permitted")
    with pytest.raises(RuntimeError) as info:
        apply_rules(EMPTY_RULESET)
    assert str(info.value) == "nft -f -: Error: Could not process rule: Operation not permitted"


def test_remove_rules_deletes_the_table(fake_nft: Path) -> None:
    remove_rules()
    assert (fake_nft / "args").read_text() == "delete table inet relaycore\n"


def test_remove_rules_is_quiet_when_there_is_no_table(
    fake_nft: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NFT_EXIT", "1")
    monkeypatch.setenv(
        "FAKE_NFT_STDERR",
        "Error: Could not process rule: No such file or directory\n"
        "delete table inet relaycore\n^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    )
    # No table is the state remove_rules wants: nft was asked, and its "no such table"
    # is not an error.
    assert remove_rules() is None
    assert (fake_nft / "args").read_text() == "delete table inet relaycore\n"


def test_remove_rules_raises_on_other_errors(
    fake_nft: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NFT_EXIT", "1")
    monkeypatch.setenv("FAKE_NFT_STDERR", "Error: Operation not permitted")
    with pytest.raises(RuntimeError) as info:
        remove_rules()
    assert str(info.value) == "nft delete table inet relaycore: Error: Operation not permitted"


def test_nft_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError) as info:
        apply_rules(EMPTY_RULESET)
    assert str(info.value) == "nft not found: install the nftables package"


# -- relaycore rules ------------------------------------------------------------------------------


def test_rules_command_prints_the_ruleset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(gateway_file(passthrough='[[passthrough]]\nprotocol = "icmp"\n'))
    assert cli.main(["rules", "-c", str(path)]) == 0
    assert capsys.readouterr().out == config_rules(parse_config(path.read_text()))


def test_rules_command_applies_and_removes(
    tmp_path: Path, fake_nft: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(gateway_file())
    assert cli.main(["rules", "-c", str(path), "--apply"]) == 0
    assert capsys.readouterr().out == "applied: nftables table inet relaycore (dev0)\n"
    assert (fake_nft / "stdin").read_text() == EMPTY_RULESET
    assert cli.main(["rules", "--remove"]) == 0
    assert capsys.readouterr().out == "removed: nftables table inet relaycore\n"
    assert (fake_nft / "args").read_text() == "-f -\ndelete table inet relaycore\n"


def test_rules_command_needs_a_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(PLAIN)
    assert cli.main(["rules", "-c", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"relaycore: error: {path}: no [gateway] table, so no rules to make\n"
    )
