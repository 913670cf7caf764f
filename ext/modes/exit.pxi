# A tunnel exit's connection: TLS from an entry node, then plain TCP onward.
#
# Life: accept -> HANDSHAKING (the server side, tls/stream.pxi; on_verify_client admits
# or refuses the entry's certificate) -> for a fixed target, CONNECTING -> RELAYING. A
# proxy exit reads the entry's request first: REQUEST (SSL_read into Proxy.req until the
# parser has it; SOCKS5 answers the greeting on the way) -> RESOLVING (a name:
# modes/resolver.pxi) -> CONNECTING, to each allowed address in turn (modes/proxy.pxi) ->
# RELAYING, with the success reply queued as the first bytes to the entry and whatever
# the entry sent after its request as the first bytes to the destination. From then on it
# is a connector with the TLS side swapped: the same pumps, half-close, backpressure,
# splice and kTLS.
#
# Until RELAYING, a failure after the request is answered in the entry's protocol
# (conn_fail -> proxy_refuse) and the connection closes gracefully; a failure before
# it (TLS) resets, as for a connector.


cdef void exit_handshake_done(Worker *w, int32_t i) noexcept nogil:
    # The entry is admitted: dial a fixed target, or read the request. [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    if r.exit_mode == EXIT_FIXED:
        route_dial(w, i)
        return
    c.px = <Proxy *>calloc(1, sizeof(Proxy))
    if c.px == NULL:
        conn_fail(w, i, CAUSE_OUT_OF_MEMORY, ENOMEM, NULL)
        return
    c.state = CONN_REQUEST
    # The request is part of setting up, and gets as long as a handshake.
    timer_arm(w, i, w.now_ms + w.handshake_timeout_ms)
    exit_read_request(w, i)


cdef void exit_read_request(Worker *w, int32_t i) noexcept nogil:
    # Read what the entry sent of its request, and act on it once complete. [may close]
    cdef Conn *c = &w.conns[i]
    cdef Proxy *px = c.px
    cdef ErrorEntry *ev
    cdef int n, e
    while c.state == CONN_REQUEST:
        if not tls_may_read(c, 0):
            return                          # a short read emptied the socket (tls/reads.pxi)
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
    # Refuse a request the parser rejected, answering with `code`. True. [may close]
    cdef char reason[REASON_LEN]
    w.conns[i].px.reply_code = <uint16_t>code
    snprintf(reason, REASON_LEN, "%s (answered with %s %d)", what,
             "SOCKS5 reply" if w.routes[w.conns[i].route].exit_mode == EXIT_SOCKS5
             else "HTTP status", code)
    conn_fail(w, i, CAUSE_PROXY_REQUEST, EPROTO, reason)
    return True


cdef bint exit_parse(Worker *w, int32_t i) noexcept nogil:
    # True when the request phase is over (moved on, or refused and closed). [may close]
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
        if not proxy_send(c, b"\x05\x00", 2):
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
    # The resolver answered (the caller frees job): dial, or fail. [may close]
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


cdef void exit_connected(Worker *w, int32_t i) noexcept nogil:
    # TCP to the destination is up. A proxy's success reply and the entry's early bytes
    # are queued in the two directions' owned buffers, where the pumps send them first.
    # [may close]
    cdef Conn *c = &w.conns[i]
    cdef Proxy *px = c.px
    cdef char reply[64]
    cdef size_t n
    if px != NULL:
        if w.routes[c.route].exit_mode == EXIT_SOCKS5:
            n = socks5_reply(<uint8_t *>reply, 0, c.fd[SIDE_UPSTREAM])
        else:
            n = http_reply(reply, sizeof(reply), 200)
        if (not dir_stash(w, &c.dir[SIDE_UPSTREAM], reply, n)
                or not dir_stash(w, &c.dir[SIDE_CLIENT], px.req, px.req_len)):
            conn_fail(w, i, CAUSE_OUT_OF_MEMORY, ENOMEM, NULL)
            return
        proxy_free(w, c)
        conn_queue(w, i)
    conn_relaying(w, i)


cdef void exit_expire(Worker *w, int32_t i) noexcept nogil:
    # The request or the lookup took too long. [may close]
    cdef Conn *c = &w.conns[i]
    cdef char reason[REASON_LEN]
    if c.state == CONN_REQUEST:
        conn_fail(w, i, CAUSE_PROXY_REQUEST, ETIMEDOUT,
                  "the client did not complete its request in time")
    else:
        snprintf(reason, REASON_LEN, "%.120s: no answer within the connect timeout", c.px.name)
        conn_fail(w, i, CAUSE_RESOLVE_FAILED, ETIMEDOUT, reason)
