"""Names that move: the upstream names of connectors (and fixed exit targets) resolved
again every `[relay] resolve_interval_s`, in the supervisor, for every worker at once.

Why here and not in each worker: one lookup per name per interval whatever the number of
workers, one log line per change, every worker switching together, and nothing in a
worker's loop that can block (getaddrinfo waits seconds on a broken resolver). The
lookups run on one thread, so that the supervisor's own loop (signals, crashes, admin,
stats) never waits on a resolver either; a result wakes that loop through its self-pipe,
and the supervisor hands the addresses to the workers (protocol.UpstreamAddresses on the
control socket), which apply them between two turns of their loops: connections in
flight keep theirs.

A name that no longer resolves keeps its last good addresses, and says so once (and in
the error log, cause resolve_failed, each time). A change is logged once, as it happens.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from relaycore import protocol
from relaycore.addresses import HostPort
from relaycore.plan import Address, Plan, lookup

log = logging.getLogger("relaycore.supervisor")

IDLE_WAIT_S = 60.0  # how often a watcher with nothing to look up checks again


@dataclass(frozen=True)
class Lookup:
    """One round's answer for one name: its addresses, or why there are none."""

    name: HostPort
    addresses: tuple[Address, ...]
    error: str = ""


@dataclass
class Watched:
    """A route whose upstream comes from a name, and what the workers dial now."""

    route: int
    route_name: str
    name: HostPort
    addresses: tuple[Address, ...]
    failing: str = ""  # the error of the last lookup, "" once it resolves again


@dataclass
class Change:
    """What a round of lookups changed, for the supervisor to tell and log."""

    route: Watched
    addresses: tuple[Address, ...]  # what the workers are to dial (unchanged on failure)
    changed: bool
    error: str = ""  # a failure that keeps the last good addresses


def describe(addresses: tuple[Address, ...]) -> str:
    return ", ".join(str(HostPort(ip, port)) for ip, port in addresses)


@dataclass
class NameWatcher:
    """Resolves the plan's names on a thread every `interval_s`; `results()` (from the
    supervisor's loop, after a wake-up byte on `wake_fd`) applies what came back."""

    interval_s: float
    wake_fd: int
    generation: int = 0
    routes: dict[int, Watched] = field(default_factory=dict)
    _answers: list[Lookup] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, plan: Plan) -> None:
        """Follow the names of `plan` (a new generation) and its resolve_interval_s: its
        addresses are the current ones; the next round looks them up again."""
        with self._lock:
            self.generation = plan.generation
            self.interval_s = plan.resolve_interval_s  # a reload may change it
            self.routes = {
                k: Watched(k, plan.routes[k].name, name, plan.routes[k].addresses)  # type: ignore[union-attr]
                for k, name in plan.names().items()
            }
            self._answers.clear()

    def start(self) -> None:
        """Look the names up every interval from now on, on a thread of its own."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="names", daemon=True)
            self._thread.start()

    def current(self) -> dict[int, tuple[Address, ...]]:
        """{route id: the addresses workers of this generation dial now}."""
        return {k: w.addresses for k, w in self.routes.items()}

    def stop(self) -> None:
        """Stop the thread (a lookup in progress finishes on its own: it is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        # An interval of 0 (a reload turned lookups off) only waits, for a later reload.
        while not self._stop.wait(self.interval_s or IDLE_WAIT_S):
            with self._lock:
                names = sorted({w.name for w in self.routes.values()} if self.interval_s else ())
            if not names:
                continue
            answers = [self._lookup(name) for name in names if not self._stop.is_set()]
            with self._lock:
                self._answers.extend(answers)
            try:
                os.write(self.wake_fd, b"n")
            except OSError:
                pass  # the pipe is full: the supervisor is awake already

    @staticmethod
    def _lookup(name: HostPort) -> Lookup:
        try:
            found = lookup(name)
        except (socket.gaierror, UnicodeError) as e:
            return Lookup(name, (), getattr(e, "strerror", None) or str(e))
        if not found:
            return Lookup(name, (), "no address")
        return Lookup(name, tuple(found))

    def results(self) -> list[Change]:
        """Apply the answers that came back since the last call: one Change per watched
        route, changed or not (the supervisor sends them all: see protocol.py)."""
        with self._lock:
            answers, self._answers = self._answers, []
        changes = []
        for answer in answers:
            for w in self.routes.values():
                if w.name != answer.name:
                    continue
                if answer.error:
                    changes.append(Change(w, w.addresses, False, answer.error))
                    continue
                changed = answer.addresses != w.addresses
                if changed:
                    log.info(
                        "%s: upstream %s now resolves to %s (was %s)",
                        w.route_name,
                        w.name,
                        describe(answer.addresses),
                        describe(w.addresses),
                    )
                elif w.failing:
                    log.info("%s: upstream %s resolves again", w.route_name, w.name)
                w.addresses = answer.addresses
                w.failing = ""
                changes.append(Change(w, w.addresses, changed))
        for c in changes:
            if c.error and c.route.failing != c.error:
                log.warning(
                    "%s: cannot resolve %s: %s; keeping %s",
                    c.route.route_name,
                    c.route.name.host,
                    c.error,
                    describe(c.route.addresses),
                )
                c.route.failing = c.error
        return changes

    def messages(
        self, now: float
    ) -> tuple[list[protocol.UpstreamAddresses], list[protocol.ErrorRecord]]:
        """results() as the supervisor passes them on: the addresses for the workers
        (every name's, so that a worker that missed a message catches up), and an error
        record for each name that failed to resolve."""
        tell: list[protocol.UpstreamAddresses] = []
        failed: list[protocol.ErrorRecord] = []
        for change in self.results():
            route = change.route
            tell.append(
                protocol.UpstreamAddresses(
                    generation=self.generation, route=route.route, addresses=list(change.addresses)
                )
            )
            if change.error:
                failed.append(
                    protocol.ErrorRecord(
                        connector=route.route_name,
                        cause="resolve_failed",
                        upstream=str(route.name),
                        reason=f"cannot resolve {route.name.host}: {change.error};"
                        f" keeping {describe(route.addresses)}",
                        count=1,
                        first=now,
                        last=now,
                        client="-",
                        worker=-1,
                        generation=self.generation,
                    )
                )
        return tell, failed
