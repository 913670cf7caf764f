# A tunnel exit's connection: TLS from an entry node, then plain TCP onward.
#
# Life: accept -> HANDSHAKING (the server side; on_verify_client admits or refuses the
# entry's certificate) -> for a fixed target, CONNECTING -> RELAYING. A proxy exit reads
# the entry's request first: REQUEST (SSL_read into Proxy.req until the parser has it;
# SOCKS5 answers the greeting on the way) -> RESOLVING (a name: resolver.pxi) ->
# CONNECTING, to each allowed address in turn -> RELAYING, with the success reply queued
# as the first bytes to the entry and whatever the entry sent after its request as the
# first bytes to the destination. From then on it is a connector with the TLS side
# swapped: the same pumps, half-close, backpressure, splice and kTLS.
#
# Until RELAYING, a failure after the request is answered in the entry's protocol
# (conn_fail -> proxy_refuse) and the connection closes gracefully; a failure before
# it (TLS) resets, as for a connector.


cdef void exit_open(Worker *w, int32_t i) noexcept nogil:
    # Accepted and registered: create the server SSL and wait for the ClientHello.
    cdef Conn *c = &w.conns[i]
    ERR_clear_error()
    c.tls_side = SIDE_CLIENT
    c.ssl = SSL_new(w.routes[c.route].tls_ctx)
    if c.ssl == NULL or SSL_set_fd(c.ssl, c.fd[SIDE_CLIENT]) != 1:
        conn_fail(w, i, CAUSE_TLS_HANDSHAKE_FAILED, ENOMEM, NULL)
        return
    SSL_set_accept_state(c.ssl)
    SSL_set_app_data(c.ssl, w)          # on_verify_client reports a refused key to w
    c.state = CONN_HANDSHAKING
    c.tls_want[0] = READY_READ
    timer_arm(w, i, w.now_ms + w.handshake_timeout_ms)
    conn_handshake(w, i)


cdef void exit_handshake_done(Worker *w, int32_t i) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    if r.exit_mode == EXIT_FIXED:
        conn_dial(w, i, <const sockaddr *>&r.upstream, r.upstream_len)
        return
    c.px = <Proxy *>calloc(1, sizeof(Proxy))
    if c.px == NULL:
        conn_fail(w, i, CAUSE_PROXY_REQUEST, ENOMEM, NULL)
        return
    c.state = CONN_REQUEST
    # The request is part of setting up, and gets as long as a handshake.
    timer_arm(w, i, w.now_ms + w.handshake_timeout_ms)
    exit_read_request(w, i)


cdef bint exit_send(Conn *c, const void *data, int n) noexcept nogil:
    # One small write before relaying (a reply of at most a few dozen bytes on a fresh
    # connection, where the socket buffer is empty): it goes whole or the TLS is broken.
    cdef int k
    ERR_clear_error()
    k = SSL_write(c.ssl, data, n)
    ERR_clear_error()
    return k == n


cdef void proxy_consume(Proxy *px, size_t n) noexcept nogil:
    memmove(px.req, px.req + n, px.req_len - n)
    px.req_len -= <uint32_t>n


cdef void exit_read_request(Worker *w, int32_t i) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef Proxy *px = c.px
    cdef ErrorEvent *ev
    cdef int n, e
    while c.state == CONN_REQUEST:
        ERR_clear_error()
        n = SSL_read(c.ssl, px.req + px.req_len, PROXY_REQ_MAX - px.req_len)
        if n <= 0:
            e = SSL_get_error(c.ssl, n)
            if e == SSL_ERROR_ZERO_RETURN or (e == SSL_ERROR_SSL and ERR_GET_REASON(
                    ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING):
                # The entry left before it named a destination: nobody to answer. After
                # an unexpected EOF (a fatal error) no close_notify either (SSL_shutdown(3)).
                ERR_clear_error()
                if e == SSL_ERROR_SSL:
                    c.tls_dead = 1
                ev = error_event(w, c, CAUSE_PROXY_REQUEST, 0)
                if ev != NULL:
                    snprintf(ev.reason, REASON_LEN,
                             "the client closed the connection before its request ended")
                conn_close(w, i, False)
            elif tls_blocked(w, c, 0, e) < 0:
                conn_close(w, i, True)
            return
        px.req_len += <uint32_t>n
        if exit_parse(w, i):
            return


cdef bint exit_bad_request(Worker *w, int32_t i, int code, const char *what) noexcept nogil:
    cdef char reason[REASON_LEN]
    w.conns[i].px.reply_code = <uint16_t>code
    snprintf(reason, REASON_LEN, "%s (answered with %s %d)", what,
             "SOCKS5 reply" if w.routes[w.conns[i].route].exit_mode == EXIT_SOCKS5
             else "HTTP status", code)
    conn_fail(w, i, CAUSE_PROXY_REQUEST, EPROTO, reason)
    return True


cdef bint exit_parse(Worker *w, int32_t i) noexcept nogil:
    # True when the request phase is over (moved on, or refused and closed).
    cdef Conn *c = &w.conns[i]
    cdef Proxy *px = c.px
    cdef const uint8_t *p = <const uint8_t *>px.req
    cdef bint socks = w.routes[c.route].exit_mode == EXIT_SOCKS5
    cdef Py_ssize_t g, r
    if socks and not px.greeted:
        g = socks5_greeting(p, px.req_len)
        if g == 0:
            return False
        if g < 0:
            return exit_bad_request(w, i, <int>-g, "not a SOCKS5 greeting offering 'no "
                                    "authentication' (the client certificate is the"
                                    " authentication)")
        if not exit_send(c, b"\x05\x00", 2):
            c.tls_dead = 1
            conn_fail(w, i, CAUSE_TLS_ERROR, EPROTO, "cannot answer the SOCKS5 greeting")
            return True
        px.greeted = 1
        proxy_consume(px, <size_t>g)
    r = socks5_request(p, px.req_len, px) if socks else http_connect_parse(p, px.req_len, px)
    if r == 0 and px.req_len < PROXY_REQ_MAX:
        return False
    if r <= 0:
        return exit_bad_request(w, i, <int>-r if r < 0 else (SOCKS_GENERAL_FAILURE if socks
                                                             else 431),
                                "malformed or unsupported SOCKS5 request" if socks else
                                "malformed or unsupported HTTP CONNECT request")
    proxy_consume(px, <size_t>r)         # what is left goes to the destination first
    timer_arm(w, i, w.now_ms + w.connect_timeout_ms)
    if px.ndst:
        proxy_try(w, i)
        return True
    c.state = CONN_RESOLVING
    r = resolver_submit(w, i)
    if r < 0:
        conn_fail(w, i, CAUSE_RESOLVE_FAILED, <int>-r, "cannot start the resolver")
    return True


cdef void exit_resolved(Worker *w, int32_t i, ResolveJob *job) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef Proxy *px = c.px
    cdef char reason[REASON_LEN]
    cdef const char *why
    if job.status != 0:
        why = gai_strerror(job.status)
        if job.status == EAI_SYSTEM:
            why = strerror(job.err)
        snprintf(reason, REASON_LEN, "%.120s: %s", px.name, why)
        conn_fail(w, i, CAUSE_RESOLVE_FAILED, job.err, reason)
        return
    memcpy(px.dst, job.addrs, job.n * sizeof(sockaddr_in6))
    px.ndst = job.n
    proxy_try(w, i)


cdef void proxy_try(Worker *w, int32_t i) noexcept nogil:
    # Keep the addresses the exit's policy allows, then dial the first.
    cdef Conn *c = &w.conns[i]
    cdef Proxy *px = c.px
    cdef Route *r = &w.routes[c.route]
    cdef char reason[REASON_LEN]
    cdef uint8_t k, kept = 0
    for k in range(px.ndst):
        sockaddr_unmap(&px.dst[k])
        if destination_allowed(r, &px.dst[k]):
            if kept != k:
                px.dst[kept] = px.dst[k]
            kept += 1
    if kept == 0:
        c.orig_dst = px.dst[0]
        snprintf(reason, REASON_LEN, "%.80s port %d is not an allowed destination%s", px.name,
                 px.port, "" if r.nallow else
                 " (loopback, link-local and unspecified addresses need allow_destinations)")
        conn_fail(w, i, CAUSE_PROXY_DENIED, 0, reason)
        return
    px.ndst = kept
    px.next_dst = 0
    proxy_dial(w, i)


cdef void proxy_dial(Worker *w, int32_t i) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef sockaddr_in6 *dst = &c.px.dst[c.px.next_dst]
    c.orig_dst = dst[0]                 # where error events say it went
    conn_dial(w, i, <const sockaddr *>dst,
              sizeof(sockaddr_in) if dst.sin6_family == AF_INET else sizeof(sockaddr_in6))


cdef bint proxy_dial_next(Worker *w, int32_t i) noexcept nogil:
    # The connect failed: the name's next address, if there is one (IPv6 and IPv4 of
    # the same host, a refused replica).
    cdef Conn *c = &w.conns[i]
    if c.px.next_dst + 1 >= c.px.ndst:
        return False
    if c.fd[SIDE_UPSTREAM] >= 0:
        close(c.fd[SIDE_UPSTREAM])
        c.fd[SIDE_UPSTREAM] = -1
    c.px.next_dst += 1
    proxy_dial(w, i)
    return True


cdef bint proxy_connected(Conn *c) noexcept nogil:
    # After proxy_dial_next, a writable edge may be the closed socket's, and SO_ERROR of
    # the new one is 0 while its connect is still in progress.
    cdef sockaddr_storage peer
    cdef socklen_t length = sizeof(peer)
    return getpeername(c.fd[SIDE_UPSTREAM], <sockaddr *>&peer, &length) == 0


cdef bint dir_preload(Worker *w, Dir *dr, const void *data, size_t n) noexcept nogil:
    # Bytes that go out first in this direction, ahead of anything read later.
    if n == 0:
        return True
    dr.buf = buf_get(w)
    if dr.buf == NULL:
        return False
    memcpy(dr.buf, data, n)
    dr.buf_off = 0
    dr.buf_len = <uint32_t>n
    return True


cdef void exit_connected(Worker *w, int32_t i) noexcept nogil:
    # TCP to the destination is up. A proxy's success reply and the entry's early bytes
    # are queued in the two directions' owned buffers, where the pumps send them first.
    cdef Conn *c = &w.conns[i]
    cdef Proxy *px = c.px
    cdef char reply[64]
    cdef size_t n
    if px != NULL:
        if w.routes[c.route].exit_mode == EXIT_SOCKS5:
            n = socks5_reply(<uint8_t *>reply, 0, c.fd[SIDE_UPSTREAM])
        else:
            n = http_reply(reply, sizeof(reply), 200)
        if (not dir_preload(w, &c.dir[SIDE_UPSTREAM], reply, n)
                or not dir_preload(w, &c.dir[SIDE_CLIENT], px.req, px.req_len)):
            conn_fail(w, i, CAUSE_UPSTREAM_SOCKET, ENOMEM, NULL)
            return
        proxy_free(w, c)
        conn_queue(w, i)
    conn_relaying(w, i)


cdef void proxy_refuse(Worker *w, Conn *c, uint8_t cause, int err) noexcept nogil:
    # Answer a refused or failed request in the entry's protocol (best effort).
    cdef Proxy *px = c.px
    cdef uint8_t mode = w.routes[c.route].exit_mode
    cdef uint16_t code = px.reply_code
    cdef char reply[160]
    cdef size_t n
    if c.tls_dead or c.ssl == NULL:
        return
    if code == 0:
        code = refusal_code(mode, cause, err)
    if mode == EXIT_SOCKS5:
        if code == SOCKS_NO_METHOD:
            reply[0] = 5
            reply[1] = <char>0xff
            n = 2
        elif px.greeted:
            n = socks5_reply(<uint8_t *>reply, <uint8_t>code, -1)
        else:
            return                          # no greeting yet: no reply is due
    else:
        n = http_reply(reply, sizeof(reply), code)
    exit_send(c, reply, <int>n)


cdef void proxy_free(Worker *w, Conn *c) noexcept nogil:
    if c.px.job != NULL:
        resolver_cancel(w, c.px)
    free(c.px)
    c.px = NULL


cdef void exit_expire(Worker *w, int32_t i) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef char reason[REASON_LEN]
    if c.state == CONN_REQUEST:
        conn_fail(w, i, CAUSE_PROXY_REQUEST, ETIMEDOUT,
                  "the client did not complete its request in time")
    else:
        snprintf(reason, REASON_LEN, "%.120s: no answer within the connect timeout", c.px.name)
        conn_fail(w, i, CAUSE_RESOLVE_FAILED, ETIMEDOUT, reason)
