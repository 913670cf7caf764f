"""A worker's upkeep between turns of its loop, besides reporting: one warning per episode
of fd exhaustion, freed memory given back to the system, and its resident memory.

* **fd exhaustion**: the loop pauses a listener when accept4 fails with EMFILE/ENFILE
  (ext/loop/listener.pxi, counted as accept_paused_emfile) and retries every 100 ms; the
  devices wait in the backlog. That is right, and silent: so the first pause of an
  episode is a WARNING, and the episode's end (no pause for EPISODE_END_S) an INFO line
  with how long it lasted and how many pauses it took.
* **memory**: glibc's malloc keeps what a closed connection freed (its SSL, its buffers)
  for the next one. After a burst (5,000 TLS connections: 26 -> 103 MB, and 103 MB once
  they had all closed) that is memory the worker holds for nothing, so once it has closed
  at least TRIM_MIN_CLOSED connections and then goes quiet (no accept or close for
  QUIET_S), or TRIM_EVERY_S after the last trim while it keeps churning, it calls
  malloc_trim(0), which returns free pages inside the heap too (glibc >= 2.8). It costs a
  walk of the heap, a few milliseconds, only at those moments.
"""

import ctypes
import logging
import os
import resource
import time
from collections.abc import Callable

log = logging.getLogger("relaycore.worker")

EPISODE_END_S = 2.0
TRIM_MIN_CLOSED = 256
QUIET_S = 1.0
TRIM_EVERY_S = 30.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Statm:
    """/proc/self/statm, opened once: reading it must work when the worker is out of fds,
    which is when it matters most that the worker keeps going."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)

    def rss_bytes(self) -> int:
        """This process's resident memory now."""
        return int(os.pread(self.fd, 256, 0).split()[1]) * _PAGE


def _malloc_trim() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to call, nothing lost
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class Upkeep:
    """Call tick() between turns with the loop's counters (Loop.counters())."""

    def __init__(self) -> None:
        self.statm = Statm()  # its fd now, while the worker has fds to spare
        self.trims = 0
        self._trim = _malloc_trim()
        self._paused = 0
        self._episode_start: float | None = None
        self._episode_paused = 0
        self._last_pause = 0.0
        self._seen = (0, 0)  # (accepted, closed) at the last tick
        self._last_change: float | None = None  # set by the first tick
        self._closed_at_trim = 0
        self._last_trim = 0.0

    def tick(self, counters: dict[str, int], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._watch_fds(counters.get("accept_paused_emfile", 0), now)
        self._maybe_trim(counters.get("accepted", 0), counters.get("closed", 0), now)

    def close(self) -> None:
        os.close(self.statm.fd)

    def counters(self) -> dict[str, int]:
        """What the worker reports about itself from here (gauges, not counters)."""
        return {"rss_bytes": self.statm.rss_bytes()}

    def _watch_fds(self, paused: int, now: float) -> None:
        if paused > self._paused:
            if self._episode_start is None:
                self._episode_start = now
                self._episode_paused = self._paused
                log.warning(
                    "out of file descriptors (limit %d): new connections wait in the listen"
                    " backlog until some close (counted as accept_paused_emfile)",
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                )
            self._last_pause = now
            self._paused = paused
        elif self._episode_start is not None and now - self._last_pause >= EPISODE_END_S:
            log.info(
                "file descriptors available again: accepting paused %d times in %.1f s",
                self._paused - self._episode_paused,
                self._last_pause - self._episode_start,
            )
            self._episode_start = None

    def _maybe_trim(self, accepted: int, closed: int, now: float) -> None:
        if self._last_change is None:
            self._last_change = self._last_trim = now
        if (accepted, closed) != self._seen:
            self._seen = (accepted, closed)
            self._last_change = now
            if now - self._last_trim < TRIM_EVERY_S:
                return
        elif now - self._last_change < QUIET_S:
            return
        if self._trim is None or closed - self._closed_at_trim < TRIM_MIN_CLOSED:
            return
        before = self.statm.rss_bytes()
        t0 = time.monotonic()
        self._trim()
        log.debug(
            "malloc_trim after %d closed connections: %.1f -> %.1f MiB in %.1f ms",
            closed - self._closed_at_trim,
            before / 2**20,
            self.statm.rss_bytes() / 2**20,
            (time.monotonic() - t0) * 1000,
        )
        self.trims += 1
        self._closed_at_trim = closed
        self._last_trim = now
