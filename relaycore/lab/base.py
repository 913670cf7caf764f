"""What every other lab piece and test needs: a free loopback port, a bounded wait, and
the context manager every running piece is."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Self, TypeVar

HOST = "127.0.0.1"
# How often wait_for looks again: short enough not to slow a test, long enough not to spin.
POLL_INTERVAL = 0.02

T = TypeVar("T")


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now, for the config of a process that binds it a
    moment later (the relay, a peer program). Another process could take it in between;
    on loopback, in a test run, none does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], T], timeout: float, what: str, *, interval: float = POLL_INTERVAL
) -> T:
    """predicate()'s first true value, asked every `interval` seconds until `timeout`.

    For what gives no event to wait on (a file another process writes, a counter in a
    report); raises TimeoutError naming `what` at the deadline. An exception from the
    predicate ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    pacing = threading.Event()  # only paces the polls: nothing sets it
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        pacing.wait(interval)
    return value


class Running:
    """A piece that runs until stopped (a server, a child process): `with piece as p`
    starts it and stops it on the way out, whatever the way out."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
