"""Workers' reports -> the relay's numbers and error log. Pure: no sockets, no clock.

Counters arrive cumulative per worker. The relay's total for a connector is the sum of
every worker's last report, including workers that have exited (a reload or a crash
must not make "opened" go backwards), so a worker's view is kept after it exits and
folded into `retired` once its last report can no longer arrive.

The error log merges records by (connector, cause, upstream): one entry with a count
and the first and last time, whatever the number of workers and failures. A flood of
10,000 refused connects is one entry with count 10000.

Upstream certificates: each report carries, per TLS connector, the leaf certificate the
worker's latest handshakes saw; the relay's view is the one seen last by any worker. Two
events go to the error log next to the failures, though they are none (no errors_<cause>
counts them): `cert_pin_changed` when a connector's server presents a key this relay has
not seen from it before (the first key is no change), and `cert_expiring` when the
certificate in use expires within the connector's cert_warn_days (again each day while
it does).
"""

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from relaycore.protocol import (
    NOTICE_CAUSES,
    ConnectorStats,
    CounterReport,
    ErrorRecord,
    StatsReport,
    UpstreamCert,
    WorkerStatus,
)

LOG_KEYS = 1000  # distinct (connector, cause, upstream) entries kept in the error log
RETIRE_AFTER_S = 10.0  # after its exit, a worker's last report is final
KNOWN_PINS = 8  # keys remembered per connector: a server that alternates is no news
CERT_WARN_EVERY_S = 86_400.0  # cert_expiring again after a day, while it holds


@dataclass(frozen=True)
class CertView:
    """A connector's upstream certificate, and the worker that saw it last."""

    cert: UpstreamCert
    slot: int
    generation: int


# A worker's own counters that only grow (docs/ERRORS.md), summed over every worker the
# relay ran; the rest of what it reports about itself (active, pipes_open, rss_bytes)
# is a gauge of one live worker.
WORKER_COUNTERS = (
    "accept_paused_emfile",
    "accept_paused_limit",
    "pipes_exhausted",
    "events_dropped",
)


@dataclass
class WorkerView:
    slot: int
    generation: int
    pid: int
    started: float
    report: CounterReport | None = None
    draining: bool = False
    exited: float | None = None


@dataclass
class Aggregator:
    workers: dict[int, WorkerView] = field(default_factory=dict)
    retired: dict[str, Counter[str]] = field(default_factory=dict)
    log: OrderedDict[tuple[str, str, str], ErrorRecord] = field(default_factory=OrderedDict)
    retired_reports_dropped: int = 0
    retired_worker: Counter[str] = field(default_factory=Counter)
    _last_opened: dict[str, int] = field(default_factory=dict)
    _last_time: float | None = None
    _rates: dict[str, float] = field(default_factory=dict)
    certs: dict[str, CertView] = field(default_factory=dict)
    cert_pins: dict[str, list[str]] = field(default_factory=dict)
    cert_warned: dict[tuple[str, str], float] = field(default_factory=dict)

    def started(self, pid: int, slot: int, generation: int, now: float) -> None:
        self.workers[pid] = WorkerView(slot, generation, pid, now)

    def draining(self, pid: int) -> None:
        if pid in self.workers:
            self.workers[pid].draining = True

    def exited(self, pid: int, now: float) -> None:
        if pid in self.workers:
            self.workers[pid].exited = now

    def counters(self, report: CounterReport) -> None:
        view = self.workers.get(report.pid)
        if view is None:  # a report that overtook our record of the fork
            view = self.workers[report.pid] = WorkerView(
                report.slot, report.generation, report.pid, report.time
            )
        view.report = report

    def certs_seen(self, report: CounterReport, upstreams: dict[str, str]) -> list[ErrorRecord]:
        """Take the report's upstream certificates; the cert_pin_changed events they make.
        `upstreams`: connector name -> its upstream, as the records name it."""
        events = []
        for name, cert in report.certs.items():
            known = self.cert_pins.setdefault(name, [])
            for pin in (cert.previous_pin, cert.pin):
                if not pin or pin in known:
                    continue
                if known:
                    detail = (
                        f" ({_describe(cert)})" if pin == cert.pin else " (seen between reports)"
                    )
                    events.append(
                        _event(
                            name,
                            "cert_pin_changed",
                            upstreams.get(name, "?"),
                            f"the server presents another key: {pin}, before {known[-1]}{detail}",
                            report.time,
                            report.slot,
                            report.generation,
                        )
                    )
                known.append(pin)
                del known[:-KNOWN_PINS]
            current = self.certs.get(name)
            if current is None or cert.seen >= current.cert.seen:
                self.certs[name] = CertView(cert, report.slot, report.generation)
        return events

    def certs_expiring(
        self, now: float, warn_days: dict[str, int], upstreams: dict[str, str]
    ) -> list[ErrorRecord]:
        """cert_expiring events: connectors whose certificate in use expires within their
        `warn_days` (connector name -> cert_warn_days; 0 or absent: never), once a day."""
        events = []
        for name, view in self.certs.items():
            days = warn_days.get(name, 0)
            left = view.cert.not_after - now
            if not days or left >= days * 86_400:
                continue
            last = self.cert_warned.get((name, view.cert.pin))
            if last is not None and now - last < CERT_WARN_EVERY_S:
                continue
            self.cert_warned[name, view.cert.pin] = now
            when = _date(view.cert.not_after)
            if left > 0:
                what = f"expires {when}, in {left / 86_400:.1f} days (cert_warn_days = {days})"
            else:
                what = f"expired {when}, {-left / 86_400:.1f} days ago"
            events.append(
                _event(
                    name,
                    "cert_expiring",
                    upstreams.get(name, "?"),
                    f"the server's certificate {what}: {_describe(view.cert)}",
                    now,
                    view.slot,
                    view.generation,
                )
            )
        return events

    def errors(self, records: list[ErrorRecord]) -> None:
        for r in records:
            old = self.log.pop(r.key, None)  # re-inserted: the least recently updated go first
            self.log[r.key] = r if old is None else old.merge(r)
            while len(self.log) > LOG_KEYS:
                self.log.popitem(last=False)

    def recent_errors(self, connector: str | None, limit: int) -> list[ErrorRecord]:
        records = [r for r in self.log.values() if connector in (None, r.connector)]
        records.sort(key=lambda r: r.last)
        return records[-limit:] if limit > 0 else records

    def retire(self, now: float) -> None:
        for pid, view in list(self.workers.items()):
            if view.exited is not None and now - view.exited >= RETIRE_AFTER_S:
                if view.report is not None:
                    for name, values in view.report.connectors.items():
                        self.retired.setdefault(name, Counter()).update(_final(values))
                    self.retired_reports_dropped += view.report.reports_dropped
                    self.retired_worker.update(_worker_counters(view.report.worker))
                del self.workers[pid]

    def totals(self) -> dict[str, Counter[str]]:
        totals = {name: Counter(values) for name, values in self.retired.items()}
        for view in self.workers.values():
            if view.report is not None:
                for name, values in view.report.connectors.items():
                    counted = values if view.exited is None else _final(values)
                    totals.setdefault(name, Counter()).update(counted)
        return totals

    def reports_dropped(self) -> int:
        """Since start, all workers, exited ones included (a counter never goes down)."""
        return self.retired_reports_dropped + sum(
            v.report.reports_dropped for v in self.workers.values() if v.report is not None
        )

    def worker_totals(self) -> Counter[str]:
        """WORKER_COUNTERS since start, all workers, exited ones included."""
        totals = Counter(self.retired_worker)
        for v in self.workers.values():
            if v.report is not None:
                totals.update(_worker_counters(v.report.worker))
        return totals

    def live_workers(self) -> list[WorkerStatus]:
        return [
            WorkerStatus(
                slot=v.slot,
                generation=v.generation,
                pid=v.pid,
                started=v.started,
                active=sum(c.get("active", 0) for c in v.report.connectors.values())
                if v.report
                else 0,
                reports_dropped=v.report.reports_dropped if v.report else 0,
                draining=v.draining,
                rss_bytes=v.report.worker.get("rss_bytes", 0) if v.report else 0,
                counters={k: n for k, n in v.report.worker.items() if k != "rss_bytes"}
                if v.report
                else {},
            )
            for v in sorted(self.workers.values(), key=lambda v: (v.generation, v.slot))
            if v.exited is None
        ]

    def stats(
        self, names: list[str], generation: int, now: float, *, advance: bool = False
    ) -> StatsReport:
        """The relay's numbers; `names` are the connectors in force (their order).
        opened_per_s is over the last published interval: only the publisher passes
        advance=True, so an admin request or a scrape does not reset the window."""
        totals = self.totals()
        if advance:
            elapsed = now - self._last_time if self._last_time is not None else 0.0
            for name, c in totals.items():
                opened = c["accepted"]
                previous = self._last_opened.get(name, opened)
                self._rates[name] = round((opened - previous) / elapsed, 1) if elapsed else 0.0
                self._last_opened[name] = opened
            self._last_time = now
        connectors = []
        for name in names + sorted(set(totals) - set(names)):
            c = totals.get(name, Counter())
            opened = c["accepted"]
            connectors.append(
                ConnectorStats(
                    name=name,
                    active=c["active"],
                    opened=opened,
                    closed=c["closed"],
                    opened_per_s=self._rates.get(name, 0.0),
                    bytes_in=c["bytes_in"],
                    bytes_out=c["bytes_out"],
                    handshakes=c["handshakes"],
                    handshakes_resumed=c["handshakes_resumed"],
                    errors={cause: n for cause, n in causes(c) if cause not in NOTICE_CAUSES},
                    notices={cause: n for cause, n in causes(c) if cause in NOTICE_CAUSES},
                    cert=self.certs[name].cert if name in self.certs else None,
                    alpn={
                        k.removeprefix("alpn:"): n
                        for k, n in sorted(c.items())
                        if k.startswith("alpn:") and n
                    },
                    groups={
                        k.removeprefix("group_"): n
                        for k, n in sorted(c.items())
                        if k.startswith("group_") and n
                    },
                )
            )
        return StatsReport(
            time=now, generation=generation, connectors=connectors, workers=self.live_workers()
        )


def _worker_counters(values: dict[str, int]) -> dict[str, int]:
    return {k: values.get(k, 0) for k in WORKER_COUNTERS}


def _final(values: dict[str, int]) -> dict[str, int]:
    # An exited worker holds no connection, whatever its last report said (a SIGKILL or
    # a drain timeout leaves one that still counts some).
    return {k: v for k, v in values.items() if k != "active"}


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _describe(cert: UpstreamCert) -> str:
    return f"{cert.subject}, issuer {cert.issuer}, expires {_date(cert.not_after)}, key {cert.pin}"


def _event(
    connector: str,
    cause: str,
    upstream: str,
    reason: str,
    now: float,
    slot: int,
    generation: int,
) -> ErrorRecord:
    # An event of the supervisor's, in the error log's one shape: no device is involved.
    return ErrorRecord(
        connector=connector,
        cause=cause,
        upstream=upstream,
        reason=reason,
        count=1,
        first=now,
        last=now,
        client="-",
        worker=slot,
        generation=generation,
    )


def causes(counters: dict[str, int]) -> list[tuple[str, int]]:
    """The errors_<cause> counters that counted something, as (cause, count), sorted."""
    return [
        (k.removeprefix("errors_"), n)
        for k, n in sorted(counters.items())
        if k.startswith("errors_") and n
    ]
