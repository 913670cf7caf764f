"""tests/ext: the compiled Loop in a thread of the test process, relaying loopback TCP.

`path` parametrizes the behavioural suite over the data paths: "copy" (splice "off": copy
through the scratch buffer), "splice" (splice "always": every direction through a pipe)
and "tls" (splice "off", the upstream speaks TLS 1.3: every byte through SSL_write and
SSL_read). `make_relay` starts a LoopThread and, when the test ends, checks the loop is
quiescent: no connection open, the pipe pool no bigger than allowed, and `pipes_open`
matching the pipe fds actually open. A relay the test stopped itself is not checked.

`ids`, `start_exit` and `start_entry` make the nodes of the tunnel-exit tests
(test_exit*.py, helpers in exit_nodes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from exit_nodes import ExitSetup, Identities, Identity, make_identities
from support.relay import (
    SPLICE_UNAVAILABLE,
    DataPath,
    LoopThread,
    TLSFiles,
    pipe_fds,
)

from relaycore import _core


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=["copy", "splice", "tls"])
def path(request: pytest.FixtureRequest, tls_files: TLSFiles) -> DataPath:
    name: str = request.param
    if name == "splice" and SPLICE_UNAVAILABLE:
        pytest.skip(SPLICE_UNAVAILABLE)
    return DataPath(name, tls_files)


@pytest.fixture
def make_relay() -> Iterator[Callable[..., LoopThread]]:
    relays: list[LoopThread] = []

    def make(upstream_port: int, **loop_kwargs: Any) -> LoopThread:
        relay = LoopThread(upstream_port, **loop_kwargs).start()
        relays.append(relay)
        return relay

    yield make
    problems: list[str] = []
    for relay in relays:
        if relay.stopped:
            continue
        try:
            check_quiescent(relay)
        except AssertionError as exc:
            problems.append(str(exc))
        finally:
            relay.stop()
    if problems:
        pytest.fail("loop not quiescent after the test:\n" + "\n".join(problems))


def check_quiescent(relay: LoopThread) -> None:
    counters = relay.wait_idle(timeout=10.0)
    assert relay.active() == 0, "Loop.active != 0 while counters say active == 0"
    assert counters["accepted"] == counters["closed"], f"accepted != closed: {counters}"
    pipes = counters["pipes_open"]
    assert pipes >= 0, counters
    max_pipes = relay.loop_kwargs.get("max_pipes", -1)
    if max_pipes >= 0:
        assert pipes <= max_pipes, f"pipes_open {pipes} > max_pipes {max_pipes}"
    if relay.loop_kwargs.get("splice", "auto") == "off":
        assert pipes == relay.initial_counters["pipes_open"], f"splice=off opened pipes: {counters}"
    open_pipe_fds = pipe_fds() - relay.pipe_fd_base
    assert open_pipe_fds == 2 * pipes, (
        f"pipes_open={pipes} but {open_pipe_fds} pipe fds are open in the process"
    )


@pytest.fixture(scope="session")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    return make_identities(tmp_path_factory.mktemp("identities"))


@pytest.fixture
def start_exit(make_relay: Callable[..., LoopThread], ids: Identities) -> ExitSetup:
    """start(target, host=, port=, allow=, allow_pins=, ca=, identity=, pq=, **loop_kwargs):
    an exit node (route 0) admitting ids.entry by default, allowed loopback destinations."""

    def start(
        target: str,
        *,
        host: str = "",
        port: int = 0,
        allow: Sequence[tuple[str, int]] | None = (("127.0.0.0/8", 0), ("::1", 0)),
        allow_pins: Sequence[bytes] | None = None,
        ca: str | None = None,
        identity: Identity | None = None,
        pq: str = "prefer",
        **loop_kwargs: Any,
    ) -> LoopThread:
        me = identity or ids.exit
        ctx = _core.TLSServerContext(
            cert=str(me.cert),
            key=str(me.key),
            allow_pins=[ids.entry.pin] if allow_pins is None else list(allow_pins),
            ca=ca,
            pq=pq,
        )

        def setup(loop: Any, fd: int) -> None:
            route = loop.add_exit(ctx, target, host, port)
            for network, p in allow or ():
                loop.allow_destination(route, network, p)
            loop.add_listener(fd, route)

        return make_relay(0, setup=setup, **loop_kwargs)

    return start


@pytest.fixture
def start_entry(make_relay: Callable[..., LoopThread], ids: Identities) -> ExitSetup:
    """start(exit_port, identity=, pin=, pq=): an entry connector to the exit, pinning it."""

    def start(
        exit_port: int,
        *,
        identity: Identity | None = None,
        pin: bytes | None = None,
        pq: str = "prefer",
    ) -> LoopThread:
        me = identity or ids.entry
        tls = _core.TLSClientContext(
            cert=str(me.cert), key=str(me.key), verify=False, pins=[pin or ids.exit.pin], pq=pq
        )
        return make_relay(exit_port, tls=tls)

    return start
