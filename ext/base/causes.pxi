# Failure causes: their names, the error-event ring that records them, their counters; and
# the names of the key-exchange groups that handshakes are counted by.
#
# A per-connection failure never raises: it becomes an event in a ring that Python drains
# between turns (Loop.pop_errors), and is counted by cause in the route's
# Counters.by_cause, which Python reads as errors_<cause>. That count is the only one:
# it stays exact when the ring is full and the newest events are dropped (and counted in
# events_dropped), so a flood of failures never costs the loop more.
#
# The causes are the CAUSE_* enum (base/causes.pxd); CAUSES names them in the same order.
# Which failure gets which cause is decided where it happens: conn_fail's callers
# (loop/conn.pxi), tls_classify (tls/classify.pxi), the proxy exit (modes/).

CAUSES = (
    "connect_refused", "connect_timeout", "connect_failed", "upstream_socket",
    "handshake_timeout", "tls_unknown_ca", "tls_hostname_mismatch", "tls_cert_expired",
    "tls_verify_failed", "tls_pin_mismatch", "tls_alert", "tls_alpn_refused",
    "tls_handshake_failed",
    "tls_truncated", "tls_error", "no_route", "proxy_request", "proxy_denied",
    "resolve_failed", "out_of_memory", "proxy_header", "http_request", "tls_pq_required",
    "pq_classical", "ktls_required",
)
if len(CAUSES) != CAUSE_COUNT:
    raise ImportError(f"relaycore._core: {len(CAUSES)} cause names for {CAUSE_COUNT} causes")

# The GROUP_* enum's names (base/causes.pxd), as OpenSSL spells the groups.
GROUPS = (
    "X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024", "MLKEM", "X25519",
    "secp256r1", "secp384r1", "secp521r1", "X448", "ffdhe", "other", "none",
)
if len(GROUPS) != GROUP_COUNT:
    raise ImportError(f"relaycore._core: {len(GROUPS)} group names for {GROUP_COUNT} groups")


cdef ErrorEntry *error_event(Worker *w, Conn *c, uint8_t cause, int err) noexcept nogil:
    # Count the failure, and return its new event with an empty reason (the caller may
    # write one; empty means strerror(err)), or NULL when the ring is full.
    cdef ErrorEntry *e
    cdef Route *r
    conn_ctr(w, c).by_cause[cause] += 1
    if w.err_len == ERR_RING:
        w.wctr.events_dropped += 1
        return NULL
    e = &w.errors[(w.err_head + w.err_len) % ERR_RING]
    w.err_len += 1
    e.reason[0] = 0
    e.route = c.route
    e.orig_dst = c.orig_dst
    e.upstream = c.upstream
    r = &w.routes[c.route]
    if not c.upstream.sin6_family and r.naddrs:
        e.upstream = r.addrs[r.good_addr % r.naddrs]    # failed before it dialled
    e.cause = cause
    e.err = err
    # From accept: getpeername fails once the peer has reset or left.
    e.client_len = sizeof(sockaddr_in6) if c.client.sin6_family else 0
    memcpy(&e.client, &c.client, sizeof(sockaddr_in6))
    return e


cdef dict counters_dict(const Counters *ctr):
    # Flat names for Python: by_cause becomes errors_<cause>, by_group group_<group>, plus
    # "active".
    cdef dict snap = ctr[0]
    by_cause = snap.pop("by_cause")
    for name, n in zip(CAUSES, by_cause):
        snap["errors_" + name] = n
    for name, n in zip(GROUPS, snap.pop("by_group")):
        snap["group_" + name] = n
    snap["active"] = ctr.accepted - ctr.closed
    return snap
