"""tests/ext: the compiled Loop in a thread of the test process, relaying loopback TCP.

`splice` parametrizes the behavioural suite over the data paths: "off" (copy through the
scratch buffer) and "always" (every direction through a pipe). `make_relay` starts a
LoopThread and, when the test ends, checks the loop is quiescent: no connection open, the
pipe pool no bigger than allowed, and `pipes_open` matching the pipe fds actually open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.relay import SPLICE_UNAVAILABLE, LoopThread, pipe_fds


@pytest.fixture(params=["off", "always"])
def splice(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    if mode != "off" and SPLICE_UNAVAILABLE:
        pytest.skip(SPLICE_UNAVAILABLE)
    return mode


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
