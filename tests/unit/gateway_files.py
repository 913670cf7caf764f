"""Config files for the gateway tests (test_gateway*.py): a [gateway] with connectors that
`match`, a plain connector, and the ruleset of the smallest gateway."""

CONNECTOR = """
[[connector]]
name = "{name}"
upstream = "10.99.2.2:8443"
tls = false
match = {match}
"""


def gateway_file(
    *, passthrough: str = "", connectors: str = "", gateway: str = "", interface: str = "dev0"
) -> str:
    """A file with a [gateway] (keys `gateway` added), the `passthrough` tables, and the
    `connectors` (default: one, "api", matching 192.0.2.10:80)."""
    return f'[gateway]\ninterface = "{interface}"\n{gateway}\n{passthrough}\n' + (
        connectors or CONNECTOR.format(name="api", match='["192.0.2.10:80"]')
    )


PLAIN = (
    '[[connector]]\nname = "p"\nlisten = "127.0.0.1:8080"\nupstream = "10.0.0.1:80"\ntls = false\n'
)

EMPTY_RULESET = """\
# relaycore gateway rules: devices on dev0
table inet relaycore
delete table inet relaycore
table inet relaycore {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname "dev0" meta l4proto tcp redirect to :15001
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tiifname "dev0" drop
\t}
}
"""
