# Error events: per-connection failures become records in a ring, never exceptions.
# Python drains the ring on its tick (Loop.pop_errors); when the ring is full the newest
# events are dropped and counted, so a flood of failures never costs the loop more.

cdef tuple CAUSE_NAMES = (
    "connect_refused", "connect_timeout", "connect_failed", "upstream_socket",
    "handshake_timeout", "tls_unknown_ca", "tls_hostname_mismatch", "tls_cert_expired",
    "tls_verify_failed", "tls_pin_mismatch", "tls_alert", "tls_handshake_failed",
    "tls_truncated", "tls_error", "no_route", "proxy_request", "proxy_denied",
    "resolve_failed",
)


cdef ErrorEvent *error_event(Worker *w, Conn *c, uint8_t cause, int err) noexcept nogil:
    # The new event, its reason empty (the caller may write one), or NULL when the ring is
    # full. The reason defaults to strerror(err) when it is left empty.
    cdef ErrorEvent *e
    conn_ctr(w, c).by_cause[cause] += 1
    if w.err_len == ERR_RING:
        w.wctr.events_dropped += 1
        return NULL
    e = &w.errors[(w.err_head + w.err_len) % ERR_RING]
    w.err_len += 1
    e.reason[0] = 0
    e.route = c.route
    e.connector_id = w.routes[c.route].connector_id
    e.orig_dst = c.orig_dst
    e.cause = cause
    e.err = err
    # From accept: getpeername fails once the peer has reset or left.
    e.client_len = sizeof(sockaddr_in6) if c.client.sin6_family else 0
    memcpy(&e.client, &c.client, sizeof(sockaddr_in6))
    return e


cdef str format_sockaddr(sockaddr_storage *ss, socklen_t length):
    cdef char text[INET6_ADDRSTRLEN]
    if length == 0:
        return "?"
    if ss.ss_family == AF_INET:
        inet_ntop(AF_INET, &(<sockaddr_in *>ss).sin_addr, text, sizeof(text))
        return f"{text.decode()}:{ntohs((<sockaddr_in *>ss).sin_port)}"
    if ss.ss_family == AF_INET6:
        inet_ntop(AF_INET6, &(<sockaddr_in6 *>ss).sin6_addr, text, sizeof(text))
        return f"[{text.decode()}]:{ntohs((<sockaddr_in6 *>ss).sin6_port)}"
    return "?"


cdef int parse_sockaddr(str host, int port, sockaddr_storage *ss, socklen_t *length) except -1:
    cdef bytes raw = host.encode()
    cdef sockaddr_in *v4 = <sockaddr_in *>ss
    cdef sockaddr_in6 *v6 = <sockaddr_in6 *>ss
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    memset(ss, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET, raw, &v4.sin_addr) == 1:
        v4.sin_family = AF_INET
        v4.sin_port = htons(port)
        length[0] = sizeof(sockaddr_in)
        return 0
    if inet_pton(AF_INET6, raw, &v6.sin6_addr) == 1:
        v6.sin6_family = AF_INET6
        v6.sin6_port = htons(port)
        length[0] = sizeof(sockaddr_in6)
        return 0
    raise ValueError(f"not an IP address: {host!r}")


cdef int raise_from_errno(int err, str what) except -1:
    # The one place a C errno becomes a Python exception (OSError picks the subclass).
    raise OSError(err, f"{what}: {strerror(err).decode()}")
