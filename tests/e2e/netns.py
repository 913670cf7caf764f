"""Network namespaces for the gateway tests, and the programs that run inside them.

`lab()` builds three namespaces joined by two veth pairs, nothing else:

    device              gateway                                  server
    eth0 10.99.1.2 ---- dev0 10.99.1.1        up0 10.99.2.1 ---- eth0 10.99.2.2
         fd99:1::2           fd99:1::1            fd99:2::1           fd99:2::2
    default via the     forwarding on (v4, v6)                  routes back to the
    gateway (v4, v6)    192.0.2.0/24 via 10.99.2.2              devices via the gateway
                                                                lo: 192.0.2.99/32

Every link is created inside a namespace (never in the caller's), no namespace has a way
out, and deleting the namespaces deletes the links: no packet leaves the lab, and nothing
is left behind. The names carry the caller's tag (the pid), so concurrent runs do not meet.

Run as a script (`python netns.py COMMAND`, inside a namespace with `ip netns exec`) this
file is also the lab's software (the stdlib, and relaycore.lab's HTTPS server):

    serve RECORDS CERT KEY CA   the server namespace's servers (below); each connection
                                they see is one JSON line appended to RECORDS
    tcp HOST PORT TIMEOUT       connect, read to EOF; print {"data", "error", "seconds"}
    dns HOST PORT NAME TIMEOUT  one A query; print {"answer", "error"}

The servers: HTTPS on 10.99.2.2:8443 for api.test (records path, SNI, client certificate
CN, peer; or the failure), a DNS responder on udp 10.99.2.2:53 and :5353 (A records: DNS_ANSWER), a
"firmware" server on tcp 10.99.2.2:9000 and [fd99:2::2]:9000, and a plain one on
192.0.2.99:80 (each sends a banner, records its peer, closes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaycore.lab.base import wait_for
from relaycore.lab.https import Failure, HttpsUpstream, Received, Reply

DEVICE_IP = "10.99.1.2"
GATEWAY_DEVICE_IP = "10.99.1.1"  # on the device-facing interface, DEVICE_IFACE
GATEWAY_UPLINK_IP = "10.99.2.1"
SERVER_IP = "10.99.2.2"
DEVICE_IP6 = "fd99:1::2"
GATEWAY_DEVICE_IP6 = "fd99:1::1"
GATEWAY_UPLINK_IP6 = "fd99:2::1"
SERVER_IP6 = "fd99:2::2"
DEVICE_IFACE = "dev0"
OTHER_SERVER_IP = "192.0.2.99"  # a "dummy" destination: on the server's loopback only

HTTPS_PORT = 8443
DNS_PORT = 53
DNS_BLOCKED_PORT = 5353  # a responder no passthrough rule lets the devices reach
FIRMWARE_PORT = 9000
PROXY_PORT = 9001  # answers with the PROXY v1 line a connector sent first
OTHER_PORT = 80
DNS_ANSWER = "198.51.100.7"
FIRMWARE_BANNER = "FIRMWARE relaycore-lab 1.0\n"
OTHER_BANNER = f"hello from {OTHER_SERVER_IP}\n"

CMD_TIMEOUT = 10.0


class LabError(RuntimeError):
    pass


def _run(args: list[str], *, timeout: float = CMD_TIMEOUT, check: bool = True) -> str:
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def unavailable(tag: str) -> str | None:
    """None if this process may create network namespaces, else why not (`ip netns add`
    said so: not root, no CAP_SYS_ADMIN, no iproute2)."""
    name = f"rcgw-probe-{tag}"
    try:
        done = subprocess.run(
            ["ip", "netns", "add", name],
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ip netns add failed: {e}"
    if done.returncode != 0:
        return f"ip netns add failed (root needed): {done.stderr.strip()}"
    _run(["ip", "netns", "del", name])
    return None


@dataclass(frozen=True)
class Netns:
    name: str

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, timeout: float = CMD_TIMEOUT, check: bool = True) -> str:
        return _run(self.argv(*cmd), timeout=timeout, check=check)

    def completed(
        self, *cmd: str, timeout: float = CMD_TIMEOUT, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """The command's exit code and output, whatever they are."""
        return subprocess.run(
            self.argv(*cmd), capture_output=True, text=True, timeout=timeout, input=input
        )

    def ip(self, *args: str) -> None:
        _run(["ip", "-n", self.name, *args])

    def python(self, *args: str, timeout: float = CMD_TIMEOUT) -> Any:
        """This file run as a script in the namespace; its one JSON line, decoded."""
        out = self.run(sys.executable, __file__, *args, timeout=timeout)
        return json.loads(out)

    def pids(self) -> list[int]:
        return [int(p) for p in _run(["ip", "netns", "pids", self.name], check=False).split()]


@dataclass(frozen=True)
class Lab:
    device: Netns
    gateway: Netns
    server: Netns

    @property
    def all(self) -> tuple[Netns, Netns, Netns]:
        return (self.device, self.gateway, self.server)


@contextlib.contextmanager
def lab(tag: str) -> Iterator[Lab]:
    """The three namespaces, wired as the module docstring shows; deleted on exit, with
    whatever still runs in them (processes of this test run only: the names are ours)."""
    the_lab = Lab(Netns(f"rcgw-dev-{tag}"), Netns(f"rcgw-gw-{tag}"), Netns(f"rcgw-srv-{tag}"))
    created: list[Netns] = []
    try:
        for ns in the_lab.all:
            _run(["ip", "netns", "add", ns.name])
            created.append(ns)
        _wire(the_lab)
        yield the_lab
    finally:
        errors = []
        for ns in reversed(created):
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                _run(["ip", "netns", "del", ns.name])
            except LabError as e:
                errors.append(str(e))
        if errors:
            raise LabError("; ".join(errors))


def _wire(lab: Lab) -> None:
    dev, gw, srv = lab.all
    # Both ends of each pair are made inside namespaces: nothing appears in ours.
    gw.ip("link", "add", DEVICE_IFACE, "type", "veth", "peer", "name", "eth0", "netns", dev.name)
    gw.ip("link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", srv.name)
    for ns, iface, addr in (
        (dev, "eth0", f"{DEVICE_IP}/24"),
        (gw, DEVICE_IFACE, f"{GATEWAY_DEVICE_IP}/24"),
        (gw, "up0", f"{GATEWAY_UPLINK_IP}/24"),
        (srv, "eth0", f"{SERVER_IP}/24"),
    ):
        ns.ip("addr", "add", addr, "dev", iface)
        ns.ip("link", "set", iface, "up")
    for ns, iface, addr in (
        (dev, "eth0", f"{DEVICE_IP6}/64"),
        (gw, DEVICE_IFACE, f"{GATEWAY_DEVICE_IP6}/64"),
        (gw, "up0", f"{GATEWAY_UPLINK_IP6}/64"),
        (srv, "eth0", f"{SERVER_IP6}/64"),
    ):
        # nodad: usable at once, not after duplicate address detection's second or two.
        ns.ip("addr", "add", addr, "dev", iface, "nodad")
    for ns in lab.all:
        ns.ip("link", "set", "lo", "up")
    srv.ip("addr", "add", f"{OTHER_SERVER_IP}/32", "dev", "lo")
    dev.ip("route", "add", "default", "via", GATEWAY_DEVICE_IP)
    dev.ip("-6", "route", "add", "default", "via", GATEWAY_DEVICE_IP6)
    gw.ip("route", "add", "192.0.2.0/24", "via", SERVER_IP)
    srv.ip("route", "add", "10.99.1.0/24", "via", GATEWAY_UPLINK_IP)
    srv.ip("-6", "route", "add", "fd99:1::/64", "via", GATEWAY_UPLINK_IP6)
    gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")


# -- processes in a namespace ----------------------------------------------------------------


class NsProcess:
    """A long-running command in a namespace, its output (stdout and stderr) in a file.
    stop(): SIGTERM, then SIGKILL after a deadline; its exit code."""

    def __init__(self, ns: Netns, argv: list[str], log: Path, cwd: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ns.argv(*argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=cwd
            )

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_output(self, text: str, timeout: float) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited with {self.proc.returncode} before {text!r}:\n{self.output()}"
                )
            return False

        try:
            wait_for(seen, timeout, repr(text))
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{self.output()}") from None

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@contextlib.contextmanager
def running(ns: Netns, argv: list[str], log: Path, cwd: Path) -> Iterator[NsProcess]:
    process = NsProcess(ns, argv, log, cwd)
    try:
        yield process
    finally:
        process.stop()


def read_records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    # A line being appended right now may be incomplete: only whole lines count.
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


# -- the lab's software (run as a script) -----------------------------------------------------


class _Recorder:
    """Appends each record, one JSON line, to the records file (the test reads it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def __call__(self, **record: Any) -> None:
        line = json.dumps(record) + "\n"
        with self.lock, open(self.path, "a") as f:
            f.write(line)


def dns_query(ident: int, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    # RD set; one question: name, type A, class IN.
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0\0\1\0\1"


def _skip_name(packet: bytes, at: int) -> int:
    while packet[at]:
        if packet[at] & 0xC0 == 0xC0:  # a compression pointer ends the name
            return at + 2
        at += 1 + packet[at]
    return at + 1


def _question_name(packet: bytes) -> str:
    labels, at = [], 12
    while packet[at]:
        labels.append(packet[at + 1 : at + 1 + packet[at]].decode())
        at += 1 + packet[at]
    return ".".join(labels)


def dns_answer(query: bytes, address: str) -> bytes:
    """The response to an A query: the question echoed, one answer with `address`."""
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1:
        return struct.pack("!HHHHHH", ident, 0x8181, 0, 0, 0, 0)  # FORMERR
    end = _skip_name(query, 12) + 4
    question = query[12:end]
    (qtype,) = struct.unpack("!H", query[end - 4 : end - 2])
    answers = b""
    if qtype == 1:
        # The name as a pointer to the question (offset 12), A, IN, TTL 60, 4 bytes.
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
    header = struct.pack("!HHHHHH", ident, 0x8180, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def parse_dns_answer(response: bytes, ident: int) -> str:
    """The first A record in a response to query `ident`."""
    rid, flags, qdcount, ancount = struct.unpack("!HHHH", response[:8])
    if rid != ident or not flags & 0x8000:
        raise ValueError(f"not the response to query {ident}: {response!r}")
    if flags & 0xF:
        raise ValueError(f"rcode {flags & 0xF}")
    at = 12
    for _ in range(qdcount):
        at = _skip_name(response, at) + 4
    for _ in range(ancount):
        at = _skip_name(response, at)
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", response[at : at + 10])
        at += 10
        if rtype == 1 and length == 4:
            return socket.inet_ntoa(response[at : at + 4])
        at += length
    raise ValueError("no A record in the answer")


def _serve_dns(sock: socket.socket, record: _Recorder) -> None:
    while True:
        query, peer = sock.recvfrom(512)
        try:
            name = _question_name(query)
            sock.sendto(dns_answer(query, DNS_ANSWER), peer)
        except (IndexError, struct.error, UnicodeDecodeError, ValueError) as e:
            record(kind="dns_error", error=str(e), peer=peer[0])
            continue
        record(kind="dns", port=sock.getsockname()[1], name=name, peer=peer[0])


class _BannerHandler(socketserver.BaseRequestHandler):
    server: _BannerServer

    def handle(self) -> None:
        host, port = self.server.server_address[:2]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server.record(kind="banner", server=where, peer=self.client_address[0])
        self.request.sendall(self.server.banner.encode())


class _BannerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], banner: str, record: _Recorder) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.banner = banner
        self.record = record
        super().__init__(addr, _BannerHandler)


class _ProxyLineHandler(socketserver.StreamRequestHandler):
    """Reads the PROXY v1 line a connector sends first and answers with it."""

    def handle(self) -> None:
        line = self.rfile.readline(108)
        self.server.record(kind="proxy", line=line.decode(errors="replace"))  # type: ignore[attr-defined]
        self.wfile.write(line)


class _ProxyLineServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], record: _Recorder) -> None:
        self.record = record
        super().__init__(addr, _ProxyLineHandler)


def _https(cert: str, key: str, ca: str, record: _Recorder) -> HttpsUpstream:
    """api.test: answers every GET with a line naming its path. Each request is a record
    (path, Host, SNI, the client certificate's CN, peer), and so is each failure."""

    def answer(got: Received) -> Reply:
        return Reply(200, f"api.test got {got.path}\n".encode(), close=True)

    def on_request(got: Received) -> None:
        record(
            kind="https",
            path=got.path,
            host=got.host,
            sni=got.sni,
            client_cn=got.leg.client_cn,
            peer=got.peer,
        )

    def on_failure(failure: Failure) -> None:
        record(kind="https_error", error=failure.error, peer=failure.peer, stage=failure.stage)

    https = HttpsUpstream(
        Path(cert), Path(key), answer=answer, client_ca=Path(ca), host=SERVER_IP, port=HTTPS_PORT
    )
    https.on_request, https.on_failure = on_request, on_failure
    return https


def serve(records: str, cert: str, key: str, ca: str) -> None:
    record = _Recorder(records)
    https = _https(cert, key, ca, record).start()
    servers: list[socketserver.BaseServer] = [
        _BannerServer((SERVER_IP, FIRMWARE_PORT), FIRMWARE_BANNER, record),
        _BannerServer((SERVER_IP6, FIRMWARE_PORT), FIRMWARE_BANNER, record),
        _BannerServer((OTHER_SERVER_IP, OTHER_PORT), OTHER_BANNER, record),
        _ProxyLineServer((SERVER_IP, PROXY_PORT), record),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    for port in (DNS_PORT, DNS_BLOCKED_PORT):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((SERVER_IP, port))
        threading.Thread(target=_serve_dns, args=(sock, record), daemon=True).start()
    record(kind="ready", pid=os.getpid())
    signal.sigwait({signal.SIGTERM, signal.SIGINT})  # blocked in every thread: see main()
    https.stop()


def tcp_client(host: str, port: int, timeout: float) -> dict[str, Any]:
    """Connect and read to EOF: what came, and how it ended."""
    data, error = b"", None
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            while chunk := sock.recv(4096):
                data += chunk
    except OSError as e:
        error = type(e).__name__
    return {
        "data": data.decode(errors="replace"),
        "error": error,
        "seconds": round(time.monotonic() - started, 3),
    }


def dns_client(host: str, port: int, name: str, timeout: float) -> dict[str, Any]:
    ident = int.from_bytes(os.urandom(2), "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(dns_query(ident, name), (host, port))
        try:
            response = sock.recv(512)
        except OSError as e:
            return {"answer": None, "error": type(e).__name__}
    return {"answer": parse_dns_answer(response, ident), "error": None}


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "serve":
        # Blocked before any thread starts, so that every thread inherits the mask and
        # serve() takes SIGTERM with sigwait, then returns: a clean exit 0.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        serve(*args)
    elif command == "tcp":
        print(json.dumps(tcp_client(args[0], int(args[1]), float(args[2]))))
    elif command == "dns":
        print(json.dumps(dns_client(args[0], int(args[1]), args[2], float(args[3]))))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
