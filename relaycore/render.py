"""Text for a terminal: status, stats, error-log lines and config summaries, as `relaycore`
prints them."""

import time

from relaycore.config import Config, Connector, Exit
from relaycore.protocol import ErrorRecord, StatsReport, StatusReply, UpstreamCert, WorkerStatus


def _age(since: float, now: float) -> str:
    s = max(0, int(now - since))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def workers_table(workers: list[WorkerStatus], now: float) -> list[str]:
    lines = ["  slot  gen  pid      uptime  connections       memory  state"]
    for w in workers:
        state = "draining" if w.draining else "serving"
        if w.reports_dropped:
            state += f" ({w.reports_dropped} reports dropped)"
        if paused := w.counters.get("accept_paused_emfile", 0):
            state += f" (out of fds {paused} times)"
        lines.append(
            f"  {w.slot:<4}  {w.generation:<3}  {w.pid:<7}  {_age(w.started, now):>6}"
            f"  {w.active:>11}  {_bytes(w.rss_bytes):>11}  {state}"
        )
    return lines


def status(reply: StatusReply) -> str:
    now = time.time()
    lines = [
        f"relaycore supervisor pid {reply.pid}, up {_age(reply.started, now)}",
        f"config: {reply.config_path} (generation {reply.generation})",
        f"capabilities: splice {reply.splice}, io {reply.io}, kTLS {reply.ktls}",
        f"TLS: {reply.openssl}",
        f"workers: {len(reply.workers)}",
        *workers_table(reply.workers, now),
    ]
    if reply.certs:
        lines.append("upstream certificates:")
        for name, cert in sorted(reply.certs.items()):
            lines.append(f"  {name}: {upstream_cert(cert, now)}")
    return "\n".join(lines)


def upstream_cert(cert: UpstreamCert, now: float) -> str:
    """One line: when it expires, who it names and who issued it, its key."""
    left = (cert.not_after - now) / 86_400
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cert.not_after))
    expiry = f"expires {when} (in {left:.0f} d)" if left >= 0 else f"EXPIRED {when}"
    return f"{expiry}, {cert.subject}, issuer {cert.issuer}, key {cert.pin}"


def stats(report: StatsReport) -> str:
    lines = [
        f"{time.strftime('%H:%M:%S', time.localtime(report.time))}  generation"
        f" {report.generation}, {len(report.workers)} workers",
        "  connector         active   opened/s     opened     closed     bytes in"
        "    bytes out  handshakes (resumed)",
    ]
    for c in report.connectors:
        lines.append(
            f"  {c.name:<16} {c.active:>7} {c.opened_per_s:>10.1f} {c.opened:>10} {c.closed:>10}"
            f" {_bytes(c.bytes_in):>12} {_bytes(c.bytes_out):>12}"
            f"  {c.handshakes} ({c.handshakes_resumed})"
        )
        if c.groups:
            groups = ", ".join(f"{group} {n}" for group, n in c.groups.items())
            lines.append(f"  {'':<16} key exchange: {groups}")
        if c.errors:
            causes = ", ".join(f"{cause} {n}" for cause, n in c.errors.items())
            lines.append(f"  {'':<16} errors: {causes}")
        if c.notices:
            news = ", ".join(f"{cause} {n}" for cause, n in c.notices.items())
            lines.append(f"  {'':<16} notices: {news}")
        if c.cert is not None:
            lines.append(f"  {'':<16} certificate: {upstream_cert(c.cert, report.time)}")
        if c.alpn:
            agreed = ", ".join(f"{protocol} {n}" for protocol, n in c.alpn.items())
            lines.append(f"  {'':<16} alpn: {agreed}")
    return "\n".join(lines)


def error_line(r: ErrorRecord, *, dated: bool = False) -> str:
    """An error record as the one line every reader gets: the supervisor's log, a
    worker's own log ([stats] interval_s = 0) and, `dated` by its latest failure,
    `relaycore logs`."""
    meant = f", meant for {r.destination}" if r.destination else ""
    line = (
        f"connector {r.connector}: {r.cause}: upstream {r.upstream}: {r.reason}"
        f" (x{r.count}, last client {r.client}{meant}, worker {r.worker} g{r.generation})"
    )
    if not dated:
        return line
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(r.last))} {line}"


def config_summary(cfg: Config) -> str:
    """A few lines for a human, as `relaycore check` prints them."""
    r = cfg.relay
    lines = [f"workers: {r.workers} (up to {r.max_connections} connections each)"]
    lines += [
        f"{c.name}: {c.listen_addr or 'gateway'} -> {c.upstream_addr} ({_describe_tls(c)})"
        for c in cfg.connectors
    ]
    lines += [
        f"{x.name}: exit {x.listen_addr} -> {x.target} ({_describe_exit(x)})" for x in cfg.exits
    ]
    return "\n".join(lines)


def _describe_exit(x: Exit) -> str:
    parts = ["tls server"]
    if x.allow:
        parts.append(f"allow pins {len(x.allow)}")
    if x.ca is not None:
        parts.append(f"client CA {x.ca}")
    if x.target_kind != "fixed":
        n = len(x.allow_destinations or ())
        parts.append(f"destinations {n}" if n else "destinations default")
    if x.min_tls != "1.2":
        parts.append(f"TLS >= {x.min_tls}")
    if x.alpn:
        parts.append(f"alpn {','.join(x.alpn)}")
    if x.accept_proxy:
        parts.append("PROXY header read")
    parts.append(f"ktls {x.ktls}")
    if x.pq != "prefer":
        parts.append(f"pq {x.pq}")
    return ", ".join(parts)


def _describe_tls(c: Connector) -> str:
    proxy = []
    if c.accept_proxy:
        proxy.append("PROXY header read")
    if c.proxy_protocol:
        proxy.append(f"PROXY {c.proxy_protocol} sent")
    if not c.tls:
        return ", ".join(["plain", *proxy])
    parts = ["tls", f"SNI {c.sni}" if c.sni else f"no SNI, IP {c.verify_name}"]
    if c.verify:
        parts.append(f"CA {c.ca or 'system'}")
    else:
        parts.append("verify off (insecure)" if c.insecure else "verify off")
    if c.cert:
        parts.append("client cert")
    if c.pin:
        parts.append(f"pins {len(c.pin)}")
    if c.min_tls != "1.2":
        parts.append(f"TLS >= {c.min_tls}")
    if c.alpn:
        parts.append(f"alpn {','.join(c.alpn)}")
    if c.http_host_value is not None:
        parts.append(f"Host := {c.http_host_value}")
    parts.append("ktls off (Host rewrite)" if c.http_host else f"ktls {c.ktls}")
    if c.pq != "prefer":
        parts.append(f"pq {c.pq}")
    return ", ".join([*parts, *proxy])


def listening(config: Config) -> str:
    """What the relay serves, on one line: each connector's and exit's listener and where
    it goes (the supervisor's "ready" line)."""
    return ", ".join(
        [f"{c.name} {c.listen_addr or 'gateway'} -> {c.upstream_addr}" for c in config.connectors]
        + [f"{x.name} exit {x.listen_addr} -> {x.target}" for x in config.exits]
    )
