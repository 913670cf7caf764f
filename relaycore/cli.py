"""`relaycore`: the one console script. Each subcommand is a function of parsed args.

A user sees `relaycore: error: <one line>` and an exit code from docs/ERRORS.md; a
traceback only with --debug.
"""

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence

import msgspec

from relaycore import (
    __version__,
    client,
    demo,
    gateway,
    hostcheck,
    identity,
    protocol,
    render,
    tls,
)
from relaycore.capabilities import openssl_summary
from relaycore.config import Relay, load_config
from relaycore.errors import EXIT_UNEXPECTED, ConfigError, RelayError
from relaycore.logs import set_role, setup_logging

DEFAULT_CONFIG = "/etc/relaycore/relay.toml"

EPILOG = """exit codes: 0 ok, 1 unexpected error, 2 usage, 3 invalid config (or a reload
rejected), 4 cannot start (address in use, unresolvable upstream), 5 workers kept
crashing, 6 relaycore is not running at that run_dir"""


def cmd_run(args: argparse.Namespace) -> int:
    from relaycore.supervisor.supervisor import Supervisor
    from relaycore.watch import ConfigWatch

    # Watching from before the first load: a change meanwhile is not missed.
    watch = ConfigWatch(args.config) if args.watch else None
    try:
        config = load_config(args.config)
        set_role("supervisor")
        return Supervisor(args.config, config, watch=watch).run()
    finally:
        if watch is not None:
            watch.close()


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tls.check_contexts(config)
    hostcheck.log_warnings(config)
    print(f"{args.config}: ok")
    print(render.config_summary(config))
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    if args.remove:
        gateway.remove_rules()
        print(f"removed: nftables table inet {gateway.TABLE}")
        return 0
    config = load_config(args.config)
    if config.gateway is None:
        raise ConfigError(f"{args.config}: no [gateway] table, so no rules to make")
    ruleset = gateway.config_rules(config)
    if not args.apply:
        print(ruleset, end="")
        return 0
    gateway.apply_rules(ruleset)
    print(f"applied: nftables table inet {gateway.TABLE} ({config.gateway.interface})")
    return 0


def run_dir_of(args: argparse.Namespace) -> str:
    """Where the running relay's sockets are: --run-dir, else the config's run_dir."""
    if args.run_dir:
        return str(args.run_dir)
    if args.config == DEFAULT_CONFIG and not os.path.exists(DEFAULT_CONFIG):
        return Relay().run_dir
    return load_config(args.config).relay.run_dir


def print_json(message: msgspec.Struct) -> None:
    print(msgspec.json.encode(message).decode(), flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    reply = client.admin(run_dir_of(args), protocol.StatusRequest())
    assert isinstance(reply, protocol.StatusReply)
    if args.json:
        print_json(reply)
    else:
        print(render.status(reply))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    if not args.follow:
        reply = client.admin(run_dir, protocol.StatsRequest())
        assert isinstance(reply, protocol.StatsReport)
        print_json(reply) if args.json else print(render.stats(reply))
        return 0
    # On a terminal the table refreshes in place; into a pipe, one report after another.
    in_place = sys.stdout.isatty() and not args.json
    try:
        for report in client.subscribe(run_dir, protocol.TOPIC_STATS):
            assert isinstance(report, protocol.StatsReport)
            if args.json:
                print_json(report)
            else:
                print(("\x1b[H\x1b[2J" if in_place else "") + render.stats(report), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)

    def show(record: protocol.ErrorRecord) -> None:
        if args.json:
            print_json(record)
        else:
            print(render.error_line(record, dated=True), flush=True)

    reply = client.admin(run_dir, protocol.LogsRequest(connector=args.connector, limit=args.lines))
    assert isinstance(reply, protocol.LogsReply)
    for record in reply.records:
        show(record)
    if not args.follow:
        return 0
    try:
        for message in client.subscribe(run_dir, protocol.TOPIC_LOG):
            assert isinstance(message, protocol.ErrorRecord)
            if args.connector in (None, message.connector):
                show(message)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    reply = client.admin(run_dir_of(args), protocol.ReloadRequest(), client.RELOAD_TIMEOUT_S)
    assert isinstance(reply, protocol.ReloadReply)
    if not reply.ok:
        raise ConfigError(f"reload rejected, generation {reply.generation} stays: {reply.error}")
    print(f"reloaded: generation {reply.generation} is serving")
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    if args.init is None:
        options = {
            "--cn": args.cn,
            "--days": args.days,
            "--key-type": args.key_type,
            "--force": args.force or None,
        }
        given = [name for name, value in options.items() if value is not None]
        if given:
            args.usage_error(f"{given[0]} goes with --init")
        print(identity.pin_of(args.path))
        return 0
    made = identity.create(
        args.init,
        socket.gethostname() if args.cn is None else args.cn,
        identity.DEFAULT_DAYS if args.days is None else args.days,
        force=args.force,
        key_type=identity.KEY_TYPES[0] if args.key_type is None else args.key_type,
    )
    # stdout carries the pin alone, so that `$(relaycore identity --init DIR)` is the pin.
    print(made.pin, flush=True)
    print(
        f"created {made.key} (the private key: it stays on this node) and {made.cert}."
        " Give the pin above to the other node: in `allow` of its [[exit]] if this node is"
        " an entry, in `pin` of its entry [[connector]] if this node is the exit.",
        file=sys.stderr,
    )
    return 0


IDENTITY_HELP = """\
Tunnel mode: make or show this node's identity, a key and a self-signed
certificate that the other node knows by its pin, sha256/<base64>.

  relaycore identity --init DIR   create DIR/node.key (mode 0600) and DIR/node.crt
                                  (ECDSA P-256, or Ed25519 with --key-type ed25519),
                                  and DIR itself (0700) if missing; print the pin on
                                  stdout (and nothing else)
  relaycore identity DIR|CERT     print the pin of DIR/node.crt, or of a certificate

Exchange pins: on the exit node, list each entry node's pin in `allow` of the
[[exit]]; on the entry node, put the exit's pin in `pin` of the [[connector]]
whose upstream is the exit, with cert/key = this node's node.crt/node.key
and verify = false (the pin, not a CA, authenticates the exit).
Existing files are never overwritten without --force: a new key is a new pin,
and peers that hold the old one refuse the node until they are told the new one.
The pin is what `openssl x509 -in node.crt -pubkey -noout | openssl pkey -pubin
-outform der | openssl dgst -sha256 -binary | base64` prints, after sha256/."""


class _Version(argparse.Action):
    """--version: one line, unwrapped (argparse's own action wraps it to the terminal)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"relaycore {__version__} with {openssl_summary()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relaycore",
        description="Edge relay: devices speak plain TCP to it, it forwards to their servers.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show the version and the OpenSSL linked"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log lines below this level are not written (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (default: text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, epilog=EPILOG)
        p.set_defaults(func=func)
        return p

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            default=DEFAULT_CONFIG,
            metavar="FILE",
            help=f"TOML config file (default: {DEFAULT_CONFIG}; keys in docs/CONFIG.md)",
        )

    p = command(
        "run",
        cmd_run,
        "Run the relay in the foreground: bind, fork the workers, serve. SIGHUP reloads"
        " the config file; SIGTERM or Ctrl-C drains in-flight connections and exits 0.",
    )
    config_option(p)
    p.add_argument(
        "--watch",
        action="store_true",
        help="reload when the config file changes (an edit, a rename over it, or a"
        " Kubernetes ConfigMap update); a bad file is refused and the running config stays",
    )
    p = command("check", cmd_check, "Validate a config file and print what it would serve.")
    config_option(p)

    def running_options(p: argparse.ArgumentParser, *, json: bool = True) -> None:
        config_option(p)
        p.add_argument(
            "--run-dir",
            metavar="DIR",
            help="the running relay's run_dir (default: the config's [relay] run_dir)",
        )
        if json:
            p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = command(
        "rules",
        cmd_rules,
        "Print the nftables ruleset of the config's [gateway] (passthrough accepted first,"
        " all other TCP from the device interface redirected to the gateway listener), or"
        " load it (--apply, atomic and idempotent) or delete it (--remove).",
    )
    config_option(p)
    action = p.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true", help="load the rules with nft -f")
    action.add_argument("--remove", action="store_true", help="delete relaycore's table")
    running_options(
        command("status", cmd_status, "Show the running relay: workers, capabilities, config.")
    )
    p = command(
        "stats",
        cmd_stats,
        "Per connector: active connections, opened per second, bytes, handshakes, errors.",
    )
    running_options(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing, every second")
    p = command(
        "logs",
        cmd_logs,
        "The error log: every failure towards a server, merged by connector, cause and"
        " upstream, with a count and the reason.",
    )
    running_options(p)
    p.add_argument("-f", "--follow", action="store_true", help="then print new ones live")
    p.add_argument("--connector", metavar="NAME", help="only this connector's")
    p.add_argument("-n", "--lines", type=int, default=100, help="how many (default: 100)")
    running_options(
        command(
            "reload",
            cmd_reload,
            "Load the config file again (like SIGHUP) and say whether it took: new"
            " connections get the new settings, open ones keep theirs.",
        ),
        json=False,
    )
    p = sub.add_parser(
        "identity",
        help="Tunnel mode: create a node's key and certificate, or print a node's pin.",
        description=IDENTITY_HELP,
        epilog="exit codes: 0 ok, 1 unexpected error, 2 usage, 3 a path that cannot be read or"
        " written, or an identity already there (without --force)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_identity, usage_error=p.error)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "path",
        nargs="?",
        metavar="DIR|CERT",
        help="print the pin of DIR/node.crt, or of this PEM certificate",
    )
    which.add_argument(
        "--init", metavar="DIR", help="create a new identity in DIR and print its pin"
    )
    p.add_argument(
        "--cn",
        metavar="NAME",
        help="with --init: the certificate's common name (default: this host's name)",
    )
    p.add_argument(
        "--days",
        type=int,
        metavar="N",
        help=f"with --init: days the certificate is valid (default: {identity.DEFAULT_DAYS})",
    )
    p.add_argument(
        "--key-type",
        choices=identity.KEY_TYPES,
        help="with --init: p256 (ECDSA P-256, the default) or ed25519; both ends of a"
        " tunnel are relaycore, which speaks either",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --init: replace an existing identity (the node's pin changes)",
    )
    p = command(
        "demo",
        demo.run,
        "Run the relay on its embedded default config: a local HTTPS server with a"
        " throwaway CA, simulated devices sending plain HTTP through a TLS connector, and"
        " what the server received.",
    )
    demo.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
        return code
    except RelayError as e:
        if args.debug:
            raise
        print(f"relaycore: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(
            f"relaycore: error: unexpected {type(e).__name__}: {e} (--debug shows where)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
