"""`relaycore demo`: the TLS connector at work, between simulated devices and an HTTPS server.

Everything stays on 127.0.0.1. The demo makes a throwaway CA and a certificate for
`localhost` with the openssl command line, starts an HTTPS server with that certificate
(it stands in for a customer's server and records what it receives), and writes a config
whose one connector accepts plain TCP and speaks verified TLS to that server
(`server_name = "localhost"`, `ca` = the throwaway CA). It runs `relaycore run -c` on that
config as a child process: the same foreground command an operator runs. Once the relay
logs `ready generation=1`, a few simulated devices send plain-HTTP telemetry through it,
some requests on kept-alive connections and some on new connections (whose TLS legs the
relay resumes with the server's session tickets). The demo prints what each device saw
and what the server received: SNI, TLS version and cipher, resumed handshakes, a request.
Then the relay stays up for the user to try with curl, until Ctrl-C or `--duration`.

The child runs in its own session so that a Ctrl-C reaches only the demo, which then stops
the relay the way an operator would (SIGTERM: drain, exit 0) and can tell a clean stop
from a failed one. On every way out (success, failure, Ctrl-C, SIGTERM, SIGHUP) the relay,
its workers, the HTTPS server and the temp dir go with the demo.

This file is the narrative and the command line; the pieces (the PKI, the recording HTTPS
server, the relay process, the devices) are relaycore.lab's, which the tests and bench/
use too.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from relaycore.errors import EXIT_OK, RelayError
from relaycore.lab.base import HOST, free_port
from relaycore.lab.devices import DeviceReport, drive_devices, telemetry
from relaycore.lab.https import Failure, HttpsUpstream, Received
from relaycore.lab.pki import make_server_pki
from relaycore.lab.relay import READY_MARK, RelayProcess

SERVER_NAME = "localhost"
START_TIMEOUT_S = 30.0
# Short, so that Ctrl-C returns quickly even with a user's keep-alive connection open.
DRAIN_TIMEOUT_S = 2
EXIT_INTERRUPTED = 130
# A failed connection is in the relay's log within a tick: how long to wait for its line.
EXPLAIN_WAIT_S = 1.5
WARNING_LINE = re.compile(r" (ERROR|WARNING) (.*)")

# The embedded default: one TLS connector, on free loopback ports, trusting the demo's CA.
DEFAULT_CONFIG = """\
# Written by `relaycore demo`; removed when the demo exits.
[relay]
workers = {workers}
run_dir = {run_dir}
drain_timeout_s = {drain_timeout_s}

[timeouts]
connect_s = 10
handshake_s = 10
idle_s = 900

# Devices speak plain TCP (here HTTP) to `listen`. The relay speaks TLS to `upstream` and
# checks the server's certificate against `ca` and the name `server_name` (also the SNI).
# A device's HTTP names the address it dialled in its Host header; http_host = "rewrite"
# gives every request the server's name instead, which servers that check Host want.
[[connector]]
name = "demo-api"
listen = "{listen}"
upstream = "{upstream}"
server_name = {server_name}
ca = {ca}
http_host = "rewrite"
"""


def render_config(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    ca: Path,
    run_dir: Path,
    *,
    server_name: str = SERVER_NAME,
    workers: int = 2,
) -> str:
    """The demo's config text: one TLS connector from `listen` to `upstream`."""
    return DEFAULT_CONFIG.format(
        workers=workers,
        # A JSON string is a valid TOML basic string for any path.
        run_dir=json.dumps(str(run_dir)),
        drain_timeout_s=DRAIN_TIMEOUT_S,
        listen=f"{listen[0]}:{listen[1]}",
        upstream=f"{upstream[0]}:{upstream[1]}",
        server_name=json.dumps(server_name),
        ca=json.dumps(str(ca)),
    )


def _avg(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "-"


def _format_reports(reports: list[DeviceReport]) -> list[str]:
    widths = (8, 7, 10, 5, 10, 17, 17)
    head = ("device", "conns", "requests", "ok", "resumed", "1st request ms", "kept-alive ms")

    def line(cells: tuple[str, ...]) -> str:
        first = f"  {cells[0]:<{widths[0]}}"
        return first + "".join(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))

    def row(r: DeviceReport) -> str:
        resumed = f"{r.resumed}/{len(r.first_ms)}"
        cells = (r.name, str(r.connections), str(r.requests), str(r.ok), resumed)
        return line((*cells, _avg(r.first_ms), _avg(r.kept_ms)))

    total = DeviceReport(
        "total",
        connections=sum(r.connections for r in reports),
        requests=sum(r.requests for r in reports),
        ok=sum(r.ok for r in reports),
        resumed=sum(r.resumed for r in reports),
        first_full_ms=[t for r in reports for t in r.first_full_ms],
        first_resumed_ms=[t for r in reports for t in r.first_resumed_ms],
        kept_ms=[t for r in reports for t in r.kept_ms],
    )
    return [line(head), *(row(r) for r in reports), row(total)]


def _drive_devices(
    relay: tuple[str, int], devices: int, connections: int, requests: int
) -> list[DeviceReport]:
    """All devices at once, their table printed; RelayError if any answer was wrong."""
    try:
        done = drive_devices(relay, devices, connections, requests)
    except TimeoutError as err:
        raise RelayError(str(err)) from None
    for line in _format_reports(done):
        _say(line)
    failed = [r for r in done if r.error]
    if failed:
        raise RelayError(f"{failed[0].name}: {failed[0].error}")
    return done


def _explain_columns() -> None:
    _say("  resumed         connections whose TLS leg, relay to server, resumed a session")
    _say("  1st request ms  the relay first connects to the server and does the TLS handshake")
    _say("  kept-alive ms   later requests on the same connection: they only cross the relay")
    _say("  (times include this demo's own Python devices and server, in one process)")


def _describe_received(upstream: HttpsUpstream) -> None:
    legs, got = upstream.legs, upstream.requests
    resumed = sum(1 for leg in legs if leg.resumed)
    peers = sorted({leg.peer for leg in legs})
    host, port = upstream.address
    _say(f"What the HTTPS server on {host}:{port} received (from the relay, not the devices):")
    _say(
        f"  TLS connections  {len(legs)} from {', '.join(peers) or '-'},"
        f" {resumed} of them resumed with a session ticket"
    )
    snis = collections.Counter(leg.sni or "(none)" for leg in legs)
    _say("  SNI              " + ", ".join(f"{n} on {c}" for n, c in snis.most_common()))
    suites = collections.Counter(f"{leg.version} {leg.cipher}" for leg in legs)
    _say("  TLS              " + ", ".join(f"{s} on {c}" for s, c in suites.most_common()))
    lines = collections.Counter(f"{r.method} {r.path}" for r in got)
    _say(
        f"  requests         {len(got)}: "
        + ", ".join(f"{c} x {what}" for what, c in lines.most_common())
    )
    if got:
        sample = got[0]
        _say(f"  a request as the server read it (TLS connection {sample.leg.number}):")
        _say(f"    {sample.request_line}")
        for name, value in sample.headers:
            _say(f"    {name}: {value}")
        _say("    ")
        _say(f"    {sample.body.decode(errors='replace')}")
    _say("  The bytes are the device's own but for the Host header: the device named the")
    _say("  address it dialled (the relay's), and the relay wrote the server's name there")
    _say('  (http_host = "rewrite"). The TLS, the SNI and the certificate check are the')
    _say("  relay's.")
    full = len(legs) - resumed
    if full and resumed:
        _say(f"  The {full} full handshakes are the relay's first connections: each worker")
        _say("  keeps its own sessions, and had none from the server yet.")


def _relay_explains(relay: RelayProcess, since: int) -> str:
    """The relay's warning about the failure, as '; the relay logged: ...', or ''. The
    relay logs a failed connection within a tick of it, so this waits a moment for one."""
    try:
        line = relay.wait_line(WARNING_LINE, EXPLAIN_WAIT_S, since=since)
    except TimeoutError:
        return ""
    # The latest such line says how it ended.
    line = next((x for x in reversed(relay.tail(20)) if WARNING_LINE.search(x)), line)
    match = WARNING_LINE.search(line)
    return f"; the relay logged: {match[2].strip()}" if match else ""


def _show_request(got: Received) -> None:
    leg = got.leg
    body = got.body.decode(errors="replace")
    if len(body) > 60:
        body = body[:57] + "..."
    host = got.host or "-"
    resumed = "resumed" if leg.resumed else "full handshake"
    _say(
        f"  server | {got.request_line} (Host {host}) on TLS connection {leg.number}:"
        f" SNI {leg.sni or '(none)'}, {leg.version} {leg.cipher}, {resumed}"
        + (f", body {body}" if body else "")
    )


def _show_failure(failure: Failure) -> None:
    _say(f"  server | {failure}")


_say_lock = threading.Lock()


def _say(line: str = "") -> None:
    # Device, server and relay-log threads print too: one whole line at a time.
    with _say_lock:
        print(line, flush=True)


# The signal that is stopping the demo, when it is not Ctrl-C.
_stop_signal: list[str] = []


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # SIGTERM or SIGHUP: stop exactly as on Ctrl-C.
    _stop_signal.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


DESCRIPTION = (
    "Run the relay on its embedded default config: one TLS connector from a local port to a"
    " local HTTPS server whose certificate comes from a throwaway CA. Simulated devices send"
    " plain HTTP through it; the demo shows what they got back and what the server"
    " received (SNI, TLS version and cipher, resumed sessions, the requests)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `relaycore demo`."""
    parser.description = DESCRIPTION
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="keep the relay up this long after the device traffic, then exit 0 "
        "(default: until Ctrl-C; 0 exits right after the traffic)",
    )
    parser.add_argument(
        "--devices", type=int, default=5, metavar="N", help="simulated devices (default 5)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=3,
        metavar="N",
        help="connections each device opens to the relay, one after the other (default 3)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=2,
        metavar="N",
        help="POST /telemetry requests on each connection, kept alive (default 2)",
    )
    parser.add_argument(
        "--relay-log",
        action="store_true",
        help="show every relay log line (default: only after the device traffic)",
    )


def run(args: argparse.Namespace) -> int:
    """`relaycore demo`: returns the exit code."""
    duration: float | None = args.duration
    if duration is not None and not 0 <= duration < float("inf"):
        print("relaycore: error: --duration must be a number >= 0", file=sys.stderr)
        return 2
    for name, most in (("devices", 200), ("connections", 1000), ("requests", 1000)):
        if not 1 <= getattr(args, name) <= most:
            print(f"relaycore: error: --{name} must be 1..{most}", file=sys.stderr)
            return 2
    _stop_signal.clear()
    in_main = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, Any] = {}
    if in_main:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _raise_stop)
    try:
        with ExitStack() as stack:
            return _run(args, duration, stack)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(args: argparse.Namespace, duration: float | None, stack: ExitStack) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="relaycore-demo-"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    config = tmp / "relay.toml"
    relay = RelayProcess(config)
    waiting = False

    def stop_relay() -> None:
        _say(
            f"stopping the relay (SIGTERM: stop accepting, drain open connections"
            f" for up to {DRAIN_TIMEOUT_S} s, exit) ..."
        )
        code = relay.stop(timeout=DRAIN_TIMEOUT_S + 10)
        if code != 0:
            raise RelayError(f"the relay exited with code {code} on SIGTERM, not 0")
        _say("relay stopped cleanly (exit code 0).")

    def log_line(line: str) -> None:
        _say(f"  relay  | {line}")

    try:
        _say("relaycore demo: simulated devices speak plain HTTP to the relay, and the relay")
        _say("speaks verified TLS to an HTTPS server. Everything runs on 127.0.0.1.")
        _say()
        pki = make_server_pki(tmp / "pki", SERVER_NAME)
        _say(f"CA        a throwaway CA, made with openssl: {pki.ca}")
        upstream = HttpsUpstream(pki.cert, pki.key)
        stack.callback(upstream.stop)
        upstream.start()
        host, port = upstream.address
        _say(
            f"upstream  HTTPS server on {host}:{port} (your server's stand-in), certificate"
            f" for {SERVER_NAME!r} from that CA"
        )
        listen = (HOST, free_port())
        config.write_text(render_config(listen, upstream.address, pki.ca, tmp / "run"))
        _say(f"config    {config}:")
        for line in config.read_text().splitlines():
            _say(f"            {line}")
        _say(f"relay     python -m {' '.join(relay.command[2:])}")
        if args.relay_log:
            relay.on_line = log_line
        relay.start()
        stack.callback(relay.stop, DRAIN_TIMEOUT_S + 10)
        took = relay.wait_ready(START_TIMEOUT_S)
        ready = relay.ready_line[relay.ready_line.index(READY_MARK) :].strip()
        _say(f"          ready after {took:.2f} s: {ready}")
        _say()
        _say(
            f"{args.devices} devices, each opening {args.connections} connection(s) to the relay"
            f" on {listen[0]}:{listen[1]},"
        )
        _say(f"one after the other, and sending {args.requests} request(s) on each:")
        _say(f"  POST /telemetry  {telemetry('dev-1', 0, 20.1).decode()}")
        _say()
        mark = relay.line_count
        try:
            reports = _drive_devices(listen, args.devices, args.connections, args.requests)
        except RelayError as err:
            raise RelayError(f"{err}{_relay_explains(relay, mark)}") from err
        total = sum(r.ok for r in reports)
        _say()
        _explain_columns()
        _say()
        _say(f"All {total} requests were answered 200 by the HTTPS server through the relay.")
        _say()
        _describe_received(upstream)
        _say()
        relay.on_line = log_line
        upstream.on_request = _show_request
        upstream.on_failure = _show_failure
        _say("The relay keeps running. Try it yourself (plain HTTP to the relay; it speaks")
        _say("HTTPS to the server, which answers with what it got, in JSON):")
        _say(f"  curl http://{listen[0]}:{listen[1]}/hello")
        _say(f"  curl -d '{{\"temp_c\": 21.5}}' http://{listen[0]}:{listen[1]}/telemetry")
        if shutil.which("curl") is None:
            _say("  (curl is in the Debian package curl)")
        _say('Each request that reaches the server is shown as "server |".')
        waiting = True
        if duration is None:
            _say("Press Ctrl-C to stop.")
            code = relay.wait()
        else:
            _say(f"Stopping in {duration:g} s (--duration); Ctrl-C stops sooner.")
            code = relay.wait(timeout=duration)
        if code is not None:
            raise RelayError(f"the relay exited on its own with code {code}")
        stop_relay()
        return EXIT_OK
    except KeyboardInterrupt:
        how = _stop_signal[-1] if _stop_signal else "Ctrl-C"
        _say()
        _say(f"{how} received.")
        try:
            stop_relay()
        except RelayError as err:
            return _fail(err, relay)
        return EXIT_OK if waiting else EXIT_INTERRUPTED
    except RelayError as err:
        return _fail(err, relay)


def _fail(err: RelayError, relay: RelayProcess) -> int:
    tail = relay.tail()
    if tail and relay.on_line is None:
        print("last relay log lines:", file=sys.stderr)
        for line in tail:
            print(f"  relay | {line}", file=sys.stderr)
    print(f"relaycore: error: {err}", file=sys.stderr)
    return err.exit_code
