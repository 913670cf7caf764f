"""Workers' reports -> the relay's numbers and error log. Pure: no sockets, no clock.

Counters arrive cumulative per worker. The relay's total for a connector is the sum of
every worker's last report, including workers that have exited (a reload or a crash
must not make "opened" go backwards), so a worker's view is kept after it exits and
folded into `retired` once its last report can no longer arrive.

The error log merges records by (connector, cause, upstream): one entry with a count
and the first and last time, whatever the number of workers and failures. A flood of
10,000 refused connects is one entry with count 10000.
"""

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from relaycore.protocol import (
    ConnectorStats,
    CounterReport,
    ErrorRecord,
    StatsReport,
    WorkerStatus,
)

LOG_KEYS = 1000  # distinct (connector, cause, upstream) entries kept in the error log
RETIRE_AFTER_S = 10.0  # after its exit, a worker's last report is final


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
    _last_opened: dict[str, int] = field(default_factory=dict)
    _last_time: float | None = None
    _rates: dict[str, float] = field(default_factory=dict)

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
                    errors={
                        k.removeprefix("errors_"): n
                        for k, n in sorted(c.items())
                        if k.startswith("errors_") and n
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


def _final(values: dict[str, int]) -> dict[str, int]:
    # An exited worker holds no connection, whatever its last report said (a SIGKILL or
    # a drain timeout leaves one that still counts some).
    return {k: v for k, v in values.items() if k != "active"}
