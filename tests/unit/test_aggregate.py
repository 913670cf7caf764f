"""supervisor/aggregate.py: workers' cumulative reports -> the relay's totals, rates and
merged error log. Pure, so every clock is an argument here."""

from __future__ import annotations

from typing import Any

from relaycore.protocol import CounterReport, ErrorRecord
from relaycore.supervisor.aggregate import LOG_KEYS, RETIRE_AFTER_S, Aggregator

NAMES = ["t", "u"]


def report(
    pid: int, slot: int = 0, generation: int = 1, dropped: int = 0, **connectors: Any
) -> CounterReport:
    return CounterReport(
        slot=slot,
        generation=generation,
        pid=pid,
        time=0.0,
        connectors=connectors,
        worker={"reports_dropped": dropped},
        reports_dropped=dropped,
    )


def record(
    connector: str = "t",
    cause: str = "connect_refused",
    upstream: str = "10.0.0.1:443",
    *,
    count: int = 1,
    first: float = 0.0,
    last: float = 0.0,
    reason: str = "Connection refused",
    client: str = "192.0.2.1:1000",
    worker: int = 0,
    generation: int = 1,
) -> ErrorRecord:
    return ErrorRecord(
        connector=connector,
        cause=cause,
        upstream=upstream,
        reason=reason,
        count=count,
        first=first,
        last=last,
        client=client,
        worker=worker,
        generation=generation,
    )


def by_name(agg: Aggregator, now: float, *, advance: bool = True) -> dict[str, Any]:
    """As the publisher sees it (advance=True), or as an admin request does."""
    return {c.name: c for c in agg.stats(NAMES, 1, now, advance=advance).connectors}


# -- totals ------------------------------------------------------------------------------------


def test_totals_add_up_every_workers_last_report() -> None:
    agg = Aggregator()
    agg.started(101, 0, 1, 0.0)
    agg.started(102, 1, 1, 0.0)
    agg.counters(report(101, t={"accepted": 3, "closed": 2, "active": 1, "bytes_in": 30}))
    agg.counters(report(101, t={"accepted": 10, "closed": 9, "active": 1, "bytes_in": 100}))
    agg.counters(report(102, slot=1, t={"accepted": 5, "closed": 5, "bytes_out": 7}))
    t = by_name(agg, 1.0)["t"]
    # The last report of each worker counts, not the sum of its reports.
    assert (t.opened, t.closed, t.active, t.bytes_in, t.bytes_out) == (15, 14, 1, 100, 7)
    assert by_name(agg, 2.0)["u"].opened == 0  # configured, no traffic yet


def test_totals_survive_a_worker_exit_and_its_retirement() -> None:
    agg = Aggregator()
    agg.started(101, 0, 1, 0.0)
    agg.started(102, 1, 1, 0.0)
    agg.counters(report(101, t={"accepted": 10, "closed": 10, "errors_connect_refused": 4}))
    agg.counters(report(102, slot=1, t={"accepted": 5, "closed": 5}))
    agg.draining(101)
    agg.exited(101, 50.0)
    assert [w.pid for w in agg.live_workers()] == [102]
    assert agg.totals()["t"]["accepted"] == 15

    agg.retire(50.0 + RETIRE_AFTER_S - 0.1)
    assert 101 in agg.workers  # its last report may still be on its way
    agg.retire(50.0 + RETIRE_AFTER_S)
    assert 101 not in agg.workers
    assert agg.retired["t"]["accepted"] == 10
    stats = by_name(agg, 100.0)["t"]
    assert (stats.opened, stats.closed, stats.errors) == (15, 15, {"connect_refused": 4})

    # The respawned worker of slot 0 starts from zero; the total goes on from 15.
    agg.started(103, 0, 1, 61.0)
    agg.counters(report(103, t={"accepted": 2, "closed": 1, "active": 1}))
    t = by_name(agg, 101.0)["t"]
    assert (t.opened, t.closed, t.active) == (17, 16, 1)


def test_a_report_that_overtakes_the_fork_is_kept() -> None:
    agg = Aggregator()
    agg.counters(report(201, slot=3, generation=2, t={"accepted": 1}))
    assert [(w.slot, w.generation, w.pid) for w in agg.live_workers()] == [(3, 2, 201)]
    assert agg.totals()["t"]["accepted"] == 1


def test_live_workers_show_active_dropped_reports_and_draining() -> None:
    agg = Aggregator()
    agg.started(102, 1, 1, 5.0)
    agg.started(101, 0, 1, 4.0)
    agg.started(201, 0, 2, 9.0)
    agg.counters(report(101, dropped=3, t={"active": 2}, u={"active": 5}))
    agg.draining(101)
    workers = agg.live_workers()
    assert [(w.generation, w.slot) for w in workers] == [(1, 0), (1, 1), (2, 0)]
    w = workers[0]
    assert (w.pid, w.started, w.active, w.reports_dropped, w.draining) == (101, 4.0, 7, 3, True)
    assert (workers[1].active, workers[1].reports_dropped, workers[1].draining) == (0, 0, False)


def test_stats_names_configured_connectors_first_then_others_and_maps_errors() -> None:
    agg = Aggregator()
    agg.started(101, 0, 1, 0.0)
    agg.counters(
        report(
            101,
            old={"accepted": 1},
            u={
                "accepted": 4,
                "handshakes": 4,
                "handshakes_resumed": 3,
                "errors_connect_refused": 0,
                "errors_tls_unknown_ca": 2,
            },
        )
    )
    stats = agg.stats(NAMES, 7, 1.0)
    assert stats.generation == 7
    assert stats.time == 1.0
    assert [c.name for c in stats.connectors] == ["t", "u", "old"]
    u = stats.connectors[1]
    assert (u.handshakes, u.handshakes_resumed) == (4, 3)
    assert u.errors == {"tls_unknown_ca": 2}  # causes with a count, under their own name


# -- opened_per_s --------------------------------------------------------------------------


def test_opened_per_s_is_the_rate_between_two_reports() -> None:
    agg = Aggregator()
    agg.started(101, 0, 1, 0.0)
    agg.started(102, 1, 1, 0.0)
    agg.counters(report(101, t={"accepted": 100}))
    assert by_name(agg, 10.0)["t"].opened_per_s == 0.0  # no previous report to compare
    agg.counters(report(101, t={"accepted": 130}))
    agg.counters(report(102, slot=1, t={"accepted": 20}))
    assert by_name(agg, 12.0)["t"].opened_per_s == 25.0  # 50 more in 2 s
    assert by_name(agg, 13.0)["t"].opened_per_s == 0.0
    agg.counters(report(101, t={"accepted": 131}))
    assert by_name(agg, 16.0)["t"].opened_per_s == round(1 / 3, 1)


def test_an_admin_request_or_scrape_does_not_reset_the_rate_window() -> None:
    agg = Aggregator()
    agg.started(101, 0, 1, 0.0)
    agg.counters(report(101, t={"accepted": 0}))
    by_name(agg, 0.0)
    agg.counters(report(101, t={"accepted": 100}))
    assert by_name(agg, 0.99, advance=False)["t"].opened_per_s == 0.0  # last published
    assert by_name(agg, 1.0)["t"].opened_per_s == 100.0
    assert by_name(agg, 1.5, advance=False)["t"].opened_per_s == 100.0


def test_an_exited_worker_holds_no_connection() -> None:
    agg = Aggregator()
    agg.started(101, 0, 1, 0.0)
    agg.counters(report(101, t={"accepted": 3, "closed": 2, "active": 1}))
    assert by_name(agg, 1.0)["t"].active == 1
    agg.exited(101, 2.0)
    assert by_name(agg, 2.0)["t"].active == 0
    agg.retire(2.0 + RETIRE_AFTER_S)
    assert by_name(agg, 3.0 + RETIRE_AFTER_S)["t"].active == 0
    assert by_name(agg, 3.0 + RETIRE_AFTER_S)["t"].opened == 3


def test_opened_per_s_does_not_go_negative_across_a_retirement() -> None:
    agg = Aggregator()
    agg.started(101, 0, 1, 0.0)
    agg.counters(report(101, t={"accepted": 40}))
    agg.exited(101, 1.0)
    by_name(agg, 1.0)
    agg.retire(1.0 + RETIRE_AFTER_S)
    assert by_name(agg, 2.0 + RETIRE_AFTER_S)["t"].opened_per_s == 0.0


# -- the error log -------------------------------------------------------------------------


def test_error_records_merge_by_connector_cause_and_upstream() -> None:
    agg = Aggregator()
    agg.errors([record(count=3, first=10.0, last=12.0, client="192.0.2.1:1", worker=0)])
    agg.errors(
        [
            record(count=2, first=9.0, last=11.0, client="192.0.2.2:2", reason="old", worker=1),
            record(cause="connect_timeout", count=1, first=11.0, last=11.0),
            record(upstream="10.0.0.2:443", count=1, first=11.0, last=11.0),
            record(connector="u", count=1, first=11.0, last=11.0),
        ]
    )
    assert len(agg.log) == 4
    merged = agg.log[("t", "connect_refused", "10.0.0.1:443")]
    assert merged.count == 5
    assert (merged.first, merged.last) == (9.0, 12.0)
    # The reason and client are those of the latest failure, not of the latest batch.
    assert (merged.reason, merged.client) == ("Connection refused", "192.0.2.1:1")

    agg.errors([record(count=10_000 - 5, first=13.0, last=20.0, client="192.0.2.3:3")])
    merged = agg.log[("t", "connect_refused", "10.0.0.1:443")]
    assert (merged.count, merged.first, merged.last) == (10_000, 9.0, 20.0)
    assert merged.client == "192.0.2.3:3"
    assert len(agg.log) == 4


def test_error_log_is_bounded_and_forgets_the_least_recently_updated_first() -> None:
    agg = Aggregator()

    def upstream(k: int) -> str:
        return f"10.{k // 65536}.{k // 256 % 256}.{k % 256}:443"

    agg.errors([record(upstream=upstream(k), last=float(k)) for k in range(LOG_KEYS)])
    assert len(agg.log) == LOG_KEYS
    agg.errors([record(upstream=upstream(0), last=float(LOG_KEYS))])  # the oldest, again
    assert len(agg.log) == LOG_KEYS
    agg.errors([record(upstream=upstream(LOG_KEYS), last=float(LOG_KEYS + 1))])
    assert len(agg.log) == LOG_KEYS
    kept = {key[2] for key in agg.log}
    assert upstream(1) not in kept  # the least recently updated went
    assert {upstream(0), upstream(2), upstream(LOG_KEYS)} <= kept
    assert agg.log[("t", "connect_refused", upstream(0))].count == 2


def test_recent_errors_filter_by_connector_oldest_first_and_limit_to_the_newest() -> None:
    agg = Aggregator()
    agg.errors(
        [
            record(connector="t", upstream="a:1", last=3.0),
            record(connector="u", upstream="a:1", last=1.0),
            record(connector="t", upstream="b:1", last=2.0),
            record(connector="t", upstream="c:1", last=5.0),
        ]
    )
    assert [(r.connector, r.last) for r in agg.recent_errors(None, 100)] == [
        ("u", 1.0),
        ("t", 2.0),
        ("t", 3.0),
        ("t", 5.0),
    ]
    assert [r.upstream for r in agg.recent_errors("t", 100)] == ["b:1", "a:1", "c:1"]
    assert [r.upstream for r in agg.recent_errors("t", 2)] == ["a:1", "c:1"]
    assert [r.connector for r in agg.recent_errors("u", 0)] == ["u"]  # 0: no limit
    assert agg.recent_errors("nobody", 10) == []


def test_workers_show_their_memory_and_counters_and_pauses_survive_their_exit() -> None:
    agg = Aggregator()
    agg.started(101, 0, 1, 0.0)
    agg.started(102, 1, 1, 0.0)
    for pid, paused in ((101, 3), (102, 4)):
        r = report(pid, slot=pid - 101)
        r.worker.update(accept_paused_emfile=paused, rss_bytes=pid * 1000, pipes_open=2)
        agg.counters(r)
    w = agg.live_workers()[0]
    assert w.rss_bytes == 101_000
    assert w.counters == {"reports_dropped": 0, "accept_paused_emfile": 3, "pipes_open": 2}
    assert agg.worker_totals()["accept_paused_emfile"] == 7
    agg.exited(101, 1.0)
    agg.retire(1.0 + RETIRE_AFTER_S)
    assert [w.pid for w in agg.live_workers()] == [102]
    assert agg.worker_totals()["accept_paused_emfile"] == 7  # a counter never goes down
