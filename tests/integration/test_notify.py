"""relaycore/notify.py against a real datagram socket: each state is one datagram of
newline-separated assignments; STATUS is sent only when it changes; no NOTIFY_SOCKET, one
that is not a unix socket, or one nobody listens on: nothing breaks."""

from __future__ import annotations

import logging

import pytest
from support.notify import NotifySocket

from relaycore.notify import Notifier


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_states_and_status_changes_only(tmp_path, abstract):
    with NotifySocket(tmp_path / "notify.sock", abstract=abstract) as systemd:
        n = Notifier(systemd.address)
        try:
            assert n.enabled
            n.ready("generation 1, 2 workers, 0 connections")
            assert systemd.next(5) == {
                "READY": "1",
                "STATUS": "generation 1, 2 workers, 0 connections",
            }
            n.status("generation 1, 2 workers, 0 connections")  # unchanged: not sent
            n.status("generation 1, 2 workers, 3 connections")
            assert systemd.next(5) == {"STATUS": "generation 1, 2 workers, 3 connections"}
            n.reloading()
            message = systemd.next(5)
            assert message.keys() == {"RELOADING", "MONOTONIC_USEC", "STATUS"}
            assert int(message["MONOTONIC_USEC"]) > 0
            n.stopping("stopping: draining 2 workers")
            assert systemd.next(5) == {"STOPPING": "1", "STATUS": "stopping: draining 2 workers"}
        finally:
            n.close()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    quiet = Notifier()
    assert not quiet.enabled
    quiet.ready("x")
    quiet.close()

    # (A handler of its own: `relaycore` does not propagate once the CLI set up logging.)
    seen = Lines()
    logger = logging.getLogger("relaycore.notify")
    logger.addHandler(seen)
    try:
        vsock = Notifier("vsock:2:1234")
        assert not vsock.enabled
        gone = Notifier(str(tmp_path / "nobody-listens"))
        try:
            gone.ready("x")
            gone.stopping("y")
        finally:
            gone.close()
    finally:
        logger.removeHandler(seen)
    assert [line.split(":")[0] for line in seen.lines] == [
        "NOTIFY_SOCKET=vsock",
        "cannot notify systemd at NOTIFY_SOCKET",  # once, not per message
    ]
