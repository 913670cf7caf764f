"""supervisor/aggregate.py, upstream certificates: the relay's view is the certificate
seen last by any worker; a key not seen before from a connector's server is one
cert_pin_changed event (the first key is none, nor is going back to a known one); a
certificate within cert_warn_days of its notAfter is one cert_expiring event a day."""

from __future__ import annotations

from relaycore.protocol import CounterReport, UpstreamCert
from relaycore.supervisor.aggregate import CERT_WARN_EVERY_S, Aggregator

DAY = 86_400.0
NOW = 1_800_000_000.0
UPSTREAMS = {"api": "api.example.com:443"}
A = "sha256/" + "A" * 43 + "="
B = "sha256/" + "B" * 43 + "="
C = "sha256/" + "C" * 43 + "="


def cert(
    pin: str, *, seen: float = NOW, days: float = 90, changes: int = 0, previous: str = ""
) -> UpstreamCert:
    return UpstreamCert(
        pin=pin,
        not_after=NOW + days * DAY,
        issuer="CN=Test CA",
        subject="CN=api.example.com",
        seen=seen,
        key_changes=changes,
        previous_pin=previous,
    )


def report(pid: int, slot: int = 0, **certs: UpstreamCert) -> CounterReport:
    return CounterReport(
        slot=slot,
        generation=1,
        pid=pid,
        time=NOW,
        connectors={},
        worker={},
        reports_dropped=0,
        certs=certs,
    )


def test_a_new_key_is_one_event_the_first_and_a_known_one_none() -> None:
    agg = Aggregator()
    assert agg.certs_seen(report(1, api=cert(A)), UPSTREAMS) == []
    assert agg.certs_seen(report(2, slot=1, api=cert(A)), UPSTREAMS) == []
    [event] = agg.certs_seen(report(1, api=cert(B, changes=1, previous=A)), UPSTREAMS)
    assert (event.connector, event.cause, event.upstream) == (
        "api",
        "cert_pin_changed",
        UPSTREAMS["api"],
    )
    assert event.reason.startswith(f"the server presents another key: {B}, before {A} (CN=api")
    assert (event.worker, event.generation, event.client) == (0, 1, "-")
    # Worker 1 still meets the old key (a server pool mid-rotation): known, no news.
    assert agg.certs_seen(report(2, slot=1, api=cert(A, seen=NOW + 1)), UPSTREAMS) == []
    assert agg.certs["api"].cert.pin == A  # the one seen last


def test_a_key_seen_only_between_two_reports_is_not_lost() -> None:
    agg = Aggregator()
    agg.certs_seen(report(1, api=cert(A)), UPSTREAMS)
    # A -> C -> A within one report interval: the worker reports A, with C before it.
    [event] = agg.certs_seen(report(1, api=cert(A, changes=2, previous=C)), UPSTREAMS)
    assert (
        event.reason == f"the server presents another key: {C}, before {A} (seen between reports)"
    )


def test_expiry_within_warn_days_is_one_event_a_day() -> None:
    agg = Aggregator()
    agg.certs_seen(report(1, api=cert(A, days=3)), UPSTREAMS)
    assert agg.certs_expiring(NOW, {"api": 2}, UPSTREAMS) == []
    assert agg.certs_expiring(NOW, {"api": 0}, UPSTREAMS) == []  # 0: never
    [event] = agg.certs_expiring(NOW, {"api": 14}, UPSTREAMS)
    assert event.cause == "cert_expiring"
    assert "expires 2027-01-18T08:00:00Z, in 3.0 days (cert_warn_days = 14): CN=api" in event.reason
    assert agg.certs_expiring(NOW + DAY / 2, {"api": 14}, UPSTREAMS) == []
    [again] = agg.certs_expiring(NOW + 4 * DAY, {"api": 14}, UPSTREAMS)
    assert "expired 2027-01-18T08:00:00Z, 1.0 days ago" in again.reason
    assert CERT_WARN_EVERY_S == DAY


def test_stats_show_the_certificate_seen_last() -> None:
    agg = Aggregator()
    agg.certs_seen(report(1, api=cert(A, seen=NOW + 5)), UPSTREAMS)
    agg.certs_seen(report(2, slot=1, api=cert(B, seen=NOW)), UPSTREAMS)  # older news
    [stats] = agg.stats(["api"], 1, NOW).connectors
    assert stats.cert is not None
    assert stats.cert.pin == A
