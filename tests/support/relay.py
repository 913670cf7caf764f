"""Run the relay under test: the compiled Loop in a thread of the test process
(`LoopThread`), or the whole `relaycore run` in a subprocess (`relay_process`, on the
shared relaycore.lab.relay.RelayProcess).

LoopThread confines the Loop to one thread: `run(50)` in a loop, and between two runs it
executes the requests the test queued with `call()` (counters, pop_errors, ...). No lock is
held around run(), so a test never races the loop and never starves behind it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from relaycore.errors import StartupError
from relaycore.lab.pki import Issued, Pki, make_pki
from relaycore.lab.relay import RelayProcess, with_relay_io
from relaycore.protocol import NOTICE_CAUSES

from .servers import HOST, set_bufsize, tls_server_context

if TYPE_CHECKING:
    from relaycore._core import ErrorEvent

T = TypeVar("T")

RUN_SLICE_MS = 50
CALL_TIMEOUT = 5.0
JOIN_TIMEOUT = 5.0

# The Loop's io mode for this session: "epoll", or what `pytest --io=...` asked for
# (tests/conftest.py sets it, and RelayProcess.default_io for the CLI relays, before any
# test runs).
LOOP_IO = "epoll"


def io_kwargs() -> dict[str, str]:
    """The Loop keyword arguments that put it on the session's io mode: none for epoll,
    the Loop's default."""
    return {} if LOOP_IO == "epoll" else {"io": LOOP_IO}


def with_session_io(config_text: str) -> str:
    """A config for a `relaycore run` started without RelayProcess (which does this
    itself), on the session's io mode."""
    return config_text if LOOP_IO == "epoll" else with_relay_io(config_text, LOOP_IO)


def pipe_fds() -> int:
    """Pipe fds open in this process right now."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith("pipe:"):
                count += 1
    return count


class LoopThread:
    """relaycore._core.Loop(**loop_kwargs) relaying 127.0.0.1:<.port> (a fresh listener)
    through route 0 to upstream_host:upstream_port, over TLS made with `tls` (a
    TLSClientContext) when given, served by a daemon thread until stop()."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = HOST,
        backlog: int = 128,
        tls: Any = None,
        device_bufsize: int | None = None,
        setup: Callable[[Any, int], None] | None = None,
        **loop_kwargs: Any,
    ) -> None:
        """`device_bufsize`: SO_SNDBUF and SO_RCVBUF of the relay's sockets to its devices
        (set on the listener, whose accepted sockets inherit them, locked: no autotuning),
        so that a slow device fills the relay's side after a few KiB, not a few MiB.
        `setup(loop, listen_fd)`: give the loop its routes and the listener instead (a
        tunnel exit, say); upstream_port and tls are then unused."""
        from relaycore._core import Loop

        self.tls = tls
        self.loop_kwargs = dict(loop_kwargs)
        self.errors: list[ErrorEvent] = []
        self.notices: list[ErrorEvent] = []  # pop_errors: events that are not failures
        self.loop = Loop(**{**io_kwargs(), **loop_kwargs})
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if device_bufsize is not None:
                set_bufsize(lsock, device_bufsize)
            lsock.bind((HOST, 0))
            lsock.listen(backlog)
            self.port: int = lsock.getsockname()[1]
            if setup is None:
                route = self.loop.add_upstream(upstream_host, upstream_port, tls)
                self.loop.add_listener(lsock.detach(), route)
            else:
                setup(self.loop, lsock.detach())
        except BaseException:
            lsock.close()
            self.loop.close()
            raise
        self.initial_counters = dict(self.loop.counters())
        # Pipe fds that are not the pool's (pipes_open counts pool pipes, 2 fds each).
        self.pipe_fd_base = pipe_fds() - 2 * self.initial_counters["pipes_open"]
        self._requests: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="relay-loop", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.loop.run(RUN_SLICE_MS)
                self._service()
        except BaseException as exc:
            self._error = exc
        finally:
            self._fail_pending()

    def _service(self) -> None:
        while True:
            try:
                fn, fut = self._requests.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self.loop))
            except BaseException as exc:
                fut.set_exception(exc)

    def _fail_pending(self) -> None:
        while True:
            try:
                _, fut = self._requests.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError(f"loop thread ended: {self._error!r}"))

    @property
    def stopped(self) -> bool:
        return self._closed

    def stop(self) -> None:
        """Stop the thread, close the loop (twice: close() is idempotent), re-raise whatever
        the loop thread died of."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"loop.run({RUN_SLICE_MS}) did not return within {JOIN_TIMEOUT}s")
        self.loop.close()
        self.loop.close()
        if self._error is not None:
            raise self._error

    # -- talking to the loop -----------------------------------------------------------------

    def call(self, fn: Callable[[Any], T], timeout: float = CALL_TIMEOUT) -> T:
        """Run fn(loop) on the loop thread between two run() calls."""
        if self._error is not None:
            raise RuntimeError("loop thread died") from self._error
        if not self._thread.is_alive():
            raise RuntimeError("loop thread not running")
        fut: Future[T] = Future()
        self._requests.put((fn, fut))
        return fut.result(timeout)

    def counters(self) -> dict[str, int]:
        return self.call(lambda loop: dict(loop.counters()))

    def active(self) -> int:
        return self.call(lambda loop: int(loop.active))

    def pop_errors(self) -> list[ErrorEvent]:
        """The loop's new error events; NOTICES go to .notices instead."""
        events = self.call(lambda loop: list(loop.pop_errors()))
        errors = [e for e in events if e.cause not in NOTICES]
        self.notices.extend(e for e in events if e.cause in NOTICES)
        self.errors.extend(errors)
        return errors

    def wait_counters(
        self, predicate: Callable[[Mapping[str, int]], bool], timeout: float, what: str
    ) -> dict[str, int]:
        """Poll counters (one loop slice apart) until predicate holds; the last snapshot."""
        deadline = time.monotonic() + timeout
        pacing = threading.Event()
        for _ in range(int(timeout * 1000 / 10) + 1):
            snap = self.counters()
            if predicate(snap):
                return snap
            if time.monotonic() > deadline:
                break
            pacing.wait(0.01)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; counters: {snap}")

    def wait_idle(self, timeout: float = 10.0) -> dict[str, int]:
        """Wait until no relayed connection is open; the counters then."""
        return self.wait_counters(lambda c: c["active"] == 0, timeout, "active == 0")

    def wait_error(self, cause: str, timeout: float = 5.0) -> ErrorEvent:
        """The first error event with this cause (polling pop_errors until the deadline)."""
        deadline = time.monotonic() + timeout
        pacing = threading.Event()
        for _ in range(int(timeout * 1000 / 10) + 1):
            self.pop_errors()
            for event in self.errors + self.notices:
                if event.cause == cause:
                    return event
            if time.monotonic() > deadline:
                break
            pacing.wait(0.01)
        raise AssertionError(f"no {cause!r} error event after {timeout}s; got {self.errors}")


def _splice_probe() -> str | None:
    """None if splice(2) moves bytes from a loopback TCP socket into a pipe, else why not."""
    if not hasattr(os, "splice"):
        return "os.splice unavailable"
    with (
        socket.create_server((HOST, 0)) as lsock,
        socket.create_connection(lsock.getsockname(), timeout=5) as a,
    ):
        b, _ = lsock.accept()
        r, w = os.pipe()
        try:
            a.sendall(b"x")
            if not select.select([b], [], [], 5.0)[0]:
                return "probe byte never arrived"
            if os.splice(b.fileno(), w, 1) != 1:
                return "splice moved nothing"
        except OSError as exc:
            return f"splice from a TCP socket failed: {exc}"
        finally:
            b.close()
            os.close(r)
            os.close(w)
    return None


# Why the splice data paths cannot run here (None: they can).
SPLICE_UNAVAILABLE = _splice_probe()


# -- the whole relay in a subprocess -------------------------------------------------------


def relay_config(
    *,
    run_dir: Path,
    listen_port: int,
    upstream_port: int,
    splice: str = "off",
    workers: int = 1,
    max_connections: int = 1000,
    connect_s: float = 2,
    idle_s: float = 30,
) -> str:
    return f"""\
[relay]
workers = {workers}
run_dir = "{run_dir}"
splice = "{splice}"
max_connections = {max_connections}

[timeouts]
connect_s = {connect_s}
idle_s = {idle_s}

[[connector]]
name = "t"
listen = "{HOST}:{listen_port}"
upstream = "{HOST}:{upstream_port}"
tls = false
"""


@contextlib.contextmanager
def relay_process(
    config_text: str,
    tmp_path: Path,
    *,
    ready_timeout: float = 20.0,
    options: Sequence[str] = (),
    wrapper: Sequence[str] = (),
    run_options: Sequence[str] = (),
) -> Iterator[RelayProcess]:
    """`config_text` written to tmp_path/relay.toml, and `relaycore [OPTIONS] run -c` on it
    (a RelayProcess, in tmp_path) until the block ends, once it is ready. Not ready in
    time, or exited first: AssertionError with its output."""
    config_path = tmp_path / "relay.toml"
    config_path.write_text(config_text)
    with RelayProcess(
        config_path, options=options, wrapper=wrapper, cwd=tmp_path, run_options=run_options
    ) as relay:
        try:
            relay.wait_ready(ready_timeout)
        except StartupError as err:
            raise AssertionError(f"{err}\n{relay.output()}") from None
        yield relay


# -- data paths ----------------------------------------------------------------------------

# The data paths of the behavioural suite (tests/ext), and the Loop's splice mode for each.
PATH_SPLICE = {"copy": "off", "splice": "always", "tls": "off"}
SERVER_NAME = "relay.test"


@dataclass(frozen=True)
class TLSFiles:
    """The session's test PKI: `server` is valid for SERVER_NAME and 127.0.0.1, `client`
    is a client certificate (CN device-7) from the same CA."""

    pki: Pki
    server: Issued
    client: Issued

    @classmethod
    def make(cls, directory: Path) -> TLSFiles:
        """A fresh CA in `directory`, and the two certificates."""
        pki = make_pki(directory)
        return cls(
            pki=pki,
            server=pki.issue("upstream", dns=[SERVER_NAME], ips=["127.0.0.1"]),
            client=pki.issue("device-7", client=True),
        )


@dataclass(frozen=True)
class DataPath:
    """One data path: `upstream()` are the server's keyword arguments for it and
    `relay(**loop_kwargs)` make_relay's (fresh TLS contexts each call, so no session
    cache is shared between relays)."""

    name: str
    files: TLSFiles

    @property
    def tls(self) -> bool:
        return self.name == "tls"

    @property
    def splice(self) -> str:
        return PATH_SPLICE[self.name]

    def upstream(self) -> dict[str, Any]:
        if not self.tls:
            return {}
        return {"tls": tls_server_context(self.files.server.chain, self.files.server.key)}

    def client_context(self) -> Any:
        from relaycore._core import TLSClientContext

        return TLSClientContext(server_name=SERVER_NAME, ca=str(self.files.pki.ca_cert))

    def relay(self, **loop_kwargs: Any) -> dict[str, Any]:
        kwargs = {"splice": self.splice, **loop_kwargs}
        if self.tls:
            kwargs["tls"] = self.client_context()
        return kwargs


# Events that report, not fail: a classical key exchange where the hybrid one was offered
# (pq = "prefer"), which every upstream on OpenSSL 3.0 (Python's ssl, s_server) brings.
NOTICES = NOTICE_CAUSES


def tls_failures(counters: Mapping[str, int]) -> int:
    """Failures counted under a TLS cause (errors_tls_*: handshake, stream, truncation)."""
    return sum(n for name, n in counters.items() if name.startswith("errors_tls_"))


def assert_data_path(
    counters: Mapping[str, int],
    splice: str,
    *,
    bytes_in: int,
    bytes_out: int,
    conns: int | None = None,
) -> None:
    """The loop counted exactly these bytes, and moved them on the path `splice` asks for:
    "off" (or "copy") copies everything, "always" (or "splice") splices everything (the
    pool being big enough). "tls": user-space TLS, where every byte goes through SSL_read
    or SSL_write, so is copied; then `conns` handshakes (when given) and no TLS failure,
    error or truncation were counted."""
    assert counters["bytes_in"] == bytes_in, counters
    assert counters["bytes_out"] == bytes_out, counters
    total = bytes_in + bytes_out
    splice = {"copy": "off", "splice": "always"}.get(splice, splice)
    if splice in ("off", "tls"):
        assert counters["bytes_spliced"] == 0, f"{splice} spliced: {counters}"
        assert counters["bytes_copied"] == total, counters
        assert counters["splice_promoted"] == 0, counters
    elif splice == "always":
        assert counters["bytes_copied"] == 0, f"splice=always copied: {counters}"
        assert counters["bytes_spliced"] == total, counters
    else:
        assert counters["bytes_copied"] + counters["bytes_spliced"] == total, counters
    if splice == "tls":
        assert tls_failures(counters) == counters["errors_handshake_timeout"] == 0, counters
        assert counters["ktls_conns"] == 0, counters
        if conns is not None:
            assert counters["handshakes"] == conns, counters


def one_route_counters() -> dict[str, int]:
    """The counters of a loop's one route (a reject route: no upstream needed)."""
    from relaycore._core import Loop

    loop = Loop(max_connections=1, **io_kwargs())
    try:
        loop.add_reject()
        [counters] = loop.route_counters()
    finally:
        loop.close()
    return dict(counters)
