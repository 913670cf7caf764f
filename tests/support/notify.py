"""What systemd's side of sd_notify(3) sees: a unix datagram socket bound where
$NOTIFY_SOCKET says (a path, or "@name" in the abstract namespace), and the messages a
service sends to it, each parsed into its assignments."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Self


class NotifySocket:
    """Bound at `path`, or in the abstract namespace with `abstract` (a unique name is
    made from the path). `.address` is the value for $NOTIFY_SOCKET."""

    def __init__(self, path: Path, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if abstract:
            name = f"relaycore-test-{os.getpid()}-{abs(hash(str(path)))}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.messages: list[dict[str, str]] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def next(self, timeout: float) -> dict[str, str]:
        """The next message: {"READY": "1", "STATUS": "..."}. TimeoutError if none comes."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise TimeoutError(
                f"no notification within {timeout}s; so far: {self.messages}"
            ) from None
        message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(message)
        return message

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        """The next message that sets `key` (READY, RELOADING, STOPPING...), skipping
        others (STATUS updates)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if key in message:
                return message
