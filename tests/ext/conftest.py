"""tests/ext: the compiled Loop in a thread of the test process, relaying loopback TCP.

`path` parametrizes the behavioural suite over the data paths: "copy" (splice "off": copy
through the scratch buffer), "splice" (splice "always": every direction through a pipe)
and "tls" (splice "off", the upstream speaks TLS 1.3: every byte through SSL_write and
SSL_read). `make_relay` starts a LoopThread and, when the test ends, checks the loop is
quiescent: no connection open, the pipe pool no bigger than allowed, and `pipes_open`
matching the pipe fds actually open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.relay import (
    SERVER_NAME,
    SPLICE_UNAVAILABLE,
    DataPath,
    LoopThread,
    TLSFiles,
    pipe_fds,
)

from relaycore.lab.pki import make_pki


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    return TLSFiles(
        pki=pki,
        server=pki.issue("upstream", dns=[SERVER_NAME], ips=["127.0.0.1"]),
        client=pki.issue("device-7", client=True),
    )


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
