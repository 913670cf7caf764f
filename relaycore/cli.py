"""`relaycore`: the one console script. Each subcommand is a function of parsed args.

A user sees `relaycore: error: <one line>` and an exit code from docs/ERRORS.md; a
traceback only with --debug.
"""

import argparse
import sys
from collections.abc import Callable, Sequence

from relaycore import __version__, demo
from relaycore.config import config_summary, load_config
from relaycore.errors import EXIT_UNEXPECTED, RelayError
from relaycore.logs import set_role, setup_logging

DEFAULT_CONFIG = "/etc/relaycore/relay.toml"

EPILOG = """exit codes: 0 ok, 1 unexpected error, 2 usage, 3 invalid config,
4 cannot start (address in use, unresolvable upstream), 5 workers kept crashing"""


def cmd_run(args: argparse.Namespace) -> int:
    from relaycore.supervisor.supervisor import Supervisor

    config = load_config(args.config)
    set_role("supervisor")
    return int(Supervisor(args.config, config).run())


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: ok")
    print(config_summary(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relaycore",
        description="Edge relay: devices speak plain TCP to it, it forwards to their servers.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"relaycore {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log lines below this level are not written (default: info)",
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
    p = command("check", cmd_check, "Validate a config file and print what it would serve.")
    config_option(p)
    p = command(
        "demo",
        demo.run,
        "Run the relay on its embedded default config with a local echo server and a few"
        " simulated devices, and show what happened.",
    )
    demo.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
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
