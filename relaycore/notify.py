"""systemd's service notification protocol (sd_notify(3)), spoken without libsystemd.

Under `Type=notify` systemd puts the path of a unix datagram socket in $NOTIFY_SOCKET
(a leading "@" names a socket in the abstract namespace) and waits for "READY=1" before
it calls the service started. Each state is one datagram of newline-separated
assignments:

    READY=1                                 the first generation serves (after a reload too)
    RELOADING=1 + MONOTONIC_USEC=<now>      a reload began; READY=1 follows when it ends,
                                            whether it took or was rejected
    STOPPING=1                              draining after SIGTERM
    STATUS=<one line>                       what `systemctl status` shows

Only the supervisor notifies: it is the unit's main process, and systemd drops messages
from other pids unless NotifyAccess= says otherwise. Without $NOTIFY_SOCKET (a shell, a
container) every call does nothing.

State changes are sent blocking, with a short timeout, because a lost READY=1 leaves the
unit "activating" until systemd kills it; STATUS updates are sent without waiting, since
the next one carries the same news. A failure to send is logged once and never stops the
relay: the relay serves whether or not anyone listens.
"""

import logging
import os
import socket
import time

log = logging.getLogger("relaycore.notify")

SEND_TIMEOUT_S = 1.0


class Notifier:
    """The supervisor's line to systemd. `address` defaults to $NOTIFY_SOCKET."""

    def __init__(self, address: str | None = None) -> None:
        self._sock: socket.socket | None = None
        self._status: str | None = None
        self._complained = False
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        if not address:
            return
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        else:
            # systemd 254+ may also hand out vsock: addresses (for VMs); not ours to speak.
            log.warning("NOTIFY_SOCKET=%s: not a unix socket path, not notifying", address)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, status: str) -> None:
        self._send(["READY=1", f"STATUS={status}"], wait=True)
        self._status = status

    def reloading(self) -> None:
        # systemd compares MONOTONIC_USEC with its own clock to tell this reload from an
        # older one (systemd.service(5), Type=notify-reload); CLOCK_MONOTONIC, microseconds.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading"], wait=True)
        self._status = "reloading"

    def stopping(self, status: str) -> None:
        self._send(["STOPPING=1", f"STATUS={status}"], wait=True)
        self._status = status

    def status(self, status: str) -> None:
        """STATUS=status, only when it differs from the last one sent."""
        if status != self._status and self._send([f"STATUS={status}"], wait=False):
            self._status = status

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, fields: list[str], *, wait: bool) -> bool:
        if self._sock is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if wait:
                self._sock.settimeout(SEND_TIMEOUT_S)
                self._sock.sendto(data, self._address)
            else:
                self._sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except OSError as e:
            if not self._complained:
                self._complained = True
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", e.strerror or e)
            return False
        return True
