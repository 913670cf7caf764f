# TLS on one connection: its SSL, the handshake, the two TLS pumps, close_notify.
#
# The handshake and every read and write are driven by the epoll loop: libssl reads and
# writes the non-blocking socket itself (a socket BIO, which kTLS needs), and tells us
# what it waits for (WANT_READ / WANT_WRITE). The OpenSSL error queue is per thread and
# must be empty before each SSL_* call, or SSL_get_error lies (SSL_get_error(3)); every
# call below is preceded by ERR_clear_error.
#
# The TLS side (Conn.tls_side) is the upstream for a connector and the client (the entry
# node) for a tunnel exit; the other side is plain. The direction whose source is the TLS
# side starts in SSL_read, the other ends in SSL_write. Conn.tls_want[d] is the readiness
# of the TLS socket that direction d's next SSL_* call waits for: usually READ for
# SSL_read and WRITE for SSL_write, but either can ask for the other (SSL_read may write a
# KeyUpdate answer; tls_want[0] is also the handshake's). A WANT_* answer means the socket
# BIO saw EAGAIN, so the matching ready bit is cleared and the next edge brings it back.
#
# kTLS (tls/ktls.pxi): when the kernel took both directions, the TLS fd carries plaintext
# and the plain pumps (copy, splice) serve it; SSL_read only for control records (alerts,
# tickets, KeyUpdates) and for bytes OpenSSL read ahead before the switch. SSL_write is
# then bypassed on purpose: under kTLS TX, OpenSSL keeps the *caller's* pointer as its
# pending buffer and a retry from another buffer would send the wrong bytes (docs/
# HOTPATH.md §1.7); where the kernel took only the send side, SSL_write gets owned buffers.
#
# SSL_write with partial writes returns after each record. When it says WANT_WRITE, the
# bytes it was given must be offered again, same content and length (with
# ACCEPT_MOVING_WRITE_BUFFER the pointer may change): they are kept in the direction's
# owned buffer until OpenSSL takes them.
#
# The pumps follow loop/pump.pxi's return convention (named results, -errno when fatal).


cdef void conn_tls_start(Worker *w, int32_t i, int side) noexcept nogil:
    # Make the connection's SSL on `side`, whose TCP is up, and start the handshake: as the
    # client towards an upstream (SIDE_UPSTREAM), or as a tunnel exit's server towards the
    # entry node (SIDE_CLIENT). [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    c.tls_side = side
    ERR_clear_error()
    c.ssl = SSL_new(r.tls_ctx)
    if c.ssl == NULL or SSL_set_fd(c.ssl, c.fd[side]) != 1:
        conn_fail(w, i, CAUSE_TLS_HANDSHAKE_FAILED, ENOMEM, NULL)
        return
    SSL_set_app_data(c.ssl, w)          # the verify callbacks report a refused key to w
    if side == SIDE_UPSTREAM:
        SSL_set_connect_state(c.ssl)
        if r.tls.send_sni:
            SSL_set_tlsext_host_name(c.ssl, r.tls.server_name)
        if r.tls.check_host:
            SSL_set1_host(c.ssl, r.tls.server_name)
        elif r.tls.check_ip:
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c.ssl), r.tls.server_name)
        session_offer(r.tls, c.ssl)
        share_offer(r.tls, c.ssl)
        c.tls_want[0] = READY_WRITE     # our ClientHello goes first
        c.tls_want[1] = READY_READ
    else:
        SSL_set_accept_state(c.ssl)
        c.tls_want[0] = READY_READ      # the entry's ClientHello comes first
    c.state = CONN_HANDSHAKING
    timer_arm(w, i, w.now_ms + w.handshake_timeout_ms)
    conn_handshake(w, i)


cdef void conn_handshake(Worker *w, int32_t i) noexcept nogil:
    # [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    cdef int rc, e
    ERR_clear_error()
    w.refused_pin_set = 0
    w.refused_classical = 0
    rc = SSL_do_handshake(c.ssl)
    if rc == 1:
        # Pins were checked inside the handshake (on_verify_server, on_verify_client).
        conn_ctr(w, c).handshakes += 1
        if SSL_session_reused(c.ssl):
            conn_ctr(w, c).handshakes_resumed += 1
        if r.kind == ROUTE_UPSTREAM:
            cert_seen_note(&r.cert, c.ssl, w.now_ms)
        rc = alpn_index(&r.srv.alpn if r.kind == ROUTE_EXIT else &r.tls.alpn, c.ssl)
        if rc >= 0:
            conn_ctr(w, c).alpn[rc] += 1
        if not tls_check_group(w, i) or not ktls_handshake_done(w, i):
            return
        tls_lean_reads(c)
        tls_gather_start(c)
        c.tls_want[1 - c.tls_side] = READY_WRITE
        c.tls_want[c.tls_side] = READY_READ
        if r.kind == ROUTE_EXIT:
            exit_handshake_done(w, i)
        else:
            conn_relaying(w, i)
        return
    e = SSL_get_error(c.ssl, rc)
    if e == SSL_ERROR_WANT_READ:
        c.ready[c.tls_side] &= ~READY_READ
        c.tls_want[0] = READY_READ
    elif e == SSL_ERROR_WANT_WRITE:
        c.ready[c.tls_side] &= ~READY_WRITE
        c.tls_want[0] = READY_WRITE
    else:
        tls_handshake_failed(w, i, e)


cdef int tls_blocked(Worker *w, Conn *c, int d, int ssl_err) noexcept nogil:
    # After an SSL_* call returned <= 0 on an established connection: 0 if it only has to
    # wait (ready bit cleared, tls_want set), else -errno (fatal, event recorded).
    if ssl_err == SSL_ERROR_WANT_READ:
        c.ready[c.tls_side] &= ~READY_READ
        c.tls_want[d] = READY_READ
        conn_ctr(w, c).reads_empty += 1     # the socket BIO's read said EAGAIN
        return 0
    if ssl_err == SSL_ERROR_WANT_WRITE:
        c.ready[c.tls_side] &= ~READY_WRITE
        c.tls_want[d] = READY_WRITE
        return 0
    return tls_fatal(w, c, ssl_err)


cdef Py_ssize_t tls_write(Worker *w, Conn *c, char *p, size_t n) noexcept nogil:
    # >0 bytes OpenSSL took, 0 it waits, <0 fatal.
    cdef int d = 1 - c.tls_side
    cdef int k
    if not c.ready[c.tls_side] & c.tls_want[d]:
        return 0
    ERR_clear_error()
    k = SSL_write(c.ssl, p, <int>n)
    if k > 0:
        c.tls_want[d] = READY_WRITE
        count_delivered(w, c, d, k, False)
        return k
    return tls_blocked(w, c, d, SSL_get_error(c.ssl, k))


cdef Py_ssize_t tls_flush_owned(Worker *w, Conn *c) noexcept nogil:
    # The plain side's owned buffer (bytes SSL_write did not take), offered again, same
    # bytes: >0 taken, 0 it waits, <0 fatal. The buffer goes back to the pool once empty.
    cdef Dir *dr = &c.dir[1 - c.tls_side]
    cdef Py_ssize_t k = tls_write(w, c, dr.buf + dr.buf_off, dr.buf_len)
    if k <= 0:
        return k
    dr.buf_off += <uint32_t>k
    dr.buf_len -= <uint32_t>k
    if dr.buf_len == 0:
        buf_put(w, dr.buf)
        dr.buf = NULL
        dr.buf_off = 0
    return k


cdef int pump_tls_write(Worker *w, Conn *c, Py_ssize_t *moved) noexcept nogil:
    # plain side -> TLS side: recv from the plain socket, SSL_write to the TLS one.
    cdef int src = 1 - c.tls_side
    cdef Dir *dr = &c.dir[src]
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t n, s, k
    cdef size_t want
    while total < PUMP_BUDGET:
        if dr.buf_len:
            k = tls_flush_owned(w, c)
            if k < 0:
                return <int>k
            if k == 0:
                break
            total += k
            continue
        if c.out != NULL:
            # The records of the last chunk, sent before the plain side is read again.
            k = tls_out_drain(w, c)
            if k < 0:
                return <int>k
            if k == 0:
                break
        if dr.eof or not c.ready[src] & READY_READ:
            break
        want = GATHER_READ if c.gather else SCRATCH_SIZE
        n = recv(c.fd[src], w.scratch, want, 0)
        if n == 0:
            dr.eof = 1
            return pump_result(moved, total, PUMP_EOF)
        if n < 0:
            if errno == EAGAIN:
                c.ready[src] &= ~READY_READ
                conn_ctr(w, c).reads_empty += 1
                break
            if errno == EINTR:
                continue
            return -errno
        read_short(c, src, n, want)
        total += n
        if c.ktls_tx_only:
            # A retry must come from the same address (the header): write from the owned
            # buffer, at the top of the loop.
            if not dir_stash(w, dr, w.scratch, n):
                return PUMP_NO_BUFFER
            continue
        s = 0
        while s < n:
            k = tls_write(w, c, w.scratch + s, n - s)
            if k < 0:
                return <int>k
            if k == 0:
                break
            s += k
        if s < n:
            if not dir_stash(w, dr, w.scratch + s, n - s):
                return PUMP_NO_BUFFER
            break
    return pump_result(moved, total, PUMP_STOPPED)


cdef int pump_tls_read(Worker *w, Conn *c, Py_ssize_t *moved) noexcept nogil:
    # TLS side -> plain side: SSL_read (a record at a time), send to the plain socket.
    # Loops until OpenSSL says WANT_*, or the socket is empty (a short read, tls/reads.pxi)
    # and OpenSSL holds nothing: with edge-triggered epoll, bytes left inside OpenSSL
    # (SSL_has_pending) would never raise another event. It stops early only when the
    # plain side is full, and then READ stays set so the next run resumes here.
    cdef int src = c.tls_side
    cdef int dst = 1 - src
    cdef Dir *dr = &c.dir[src]
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t n, s
    cdef int e
    if dr.buf_len:
        total = flush_owned(w, c, src)
        if total < 0:
            return <int>total
        if dr.buf_len:
            return pump_result(moved, total, PUMP_STOPPED)
    while not dr.eof and total < PUMP_BUDGET and tls_may_read(c, src):
        ERR_clear_error()
        n = SSL_read(c.ssl, w.scratch, SCRATCH_SIZE)
        if n <= 0:
            e = SSL_get_error(c.ssl, <int>n)
            if e == SSL_ERROR_ZERO_RETURN:
                dr.eof = 1
                c.ktls_control = 0
                return pump_result(moved, total, PUMP_EOF)
            if e == SSL_ERROR_SSL and ERR_GET_REASON(
                    ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING:
                tls_truncated(w, c)
                dr.eof = 1
                c.ktls_control = 0
                return pump_result(moved, total, PUMP_EOF)
            s = tls_blocked(w, c, src, e)
            if s < 0:
                return <int>s
            if e == SSL_ERROR_WANT_READ:
                s = tls_answer_key_update(w, c, src)
                if s < 0:
                    return <int>s
                if s == 0:
                    break                   # our KeyUpdate waits for room: kTLS stays blocked
                c.ktls_control = 0          # OpenSSL owes nothing: kTLS pumps may resume
                # RELEASE_BUFFERS frees the read buffer only after a record is consumed;
                # the read that ends in WANT_READ allocates it again (17.7 KB per idle
                # connection, measured with heaptrack). Hand it back while we wait. That is
                # a malloc per wake-up on a busy connection: no difference in the TLS bulk
                # or echo benchmarks, within their noise.
                SSL_free_buffers(c.ssl)
            break
        c.tls_want[src] = READY_READ
        total += n
        s = 0
        if c.ready[dst] & READY_WRITE:
            s = send(c.fd[dst], w.scratch, n, MSG_NOSIGNAL)
            if s < 0:
                if errno != EAGAIN:
                    return -errno
                s = 0
            count_delivered(w, c, src, s, False)
        if s < n:
            if not dir_stash(w, dr, w.scratch + s, n - s):
                return PUMP_NO_BUFFER
            c.ready[dst] &= ~READY_WRITE
            break
    if (c.tls_want[src] == READY_READ and not c.ready[src] & READY_READ
            and not SSL_has_pending(c.ssl)):
        SSL_free_buffers(c.ssl)     # a short read emptied the socket: as at WANT_READ
    return pump_result(moved, total, PUMP_STOPPED)


cdef void on_message_after_close_notify(int write_p, int version, int content_type,
                                        const void *buf, size_t n, SSL *ssl,
                                        void *arg) noexcept nogil:
    # Installed with our close_notify. A TLS 1.3 peer may still send, and ask for a
    # KeyUpdate in return (update_requested). We may send nothing after close_notify, and
    # the FIN that follows it makes the answer fail with EPIPE, which would cost the rest of
    # the peer's stream. OpenSSL 3.5 answers all the same (1.1.1 and 3.0 did not), so the
    # request is read as not made: this runs on the received message before OpenSSL acts on
    # it, and buf is its own copy (a KeyUpdate: type 24, a 3-byte length, request_update).
    cdef unsigned char *msg = <unsigned char *>buf
    if (not write_p and content_type == SSL3_RT_HANDSHAKE and n == 5
            and msg[0] == SSL3_MT_KEY_UPDATE and msg[4] == SSL_KEY_UPDATE_REQUESTED
            and SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN):
        msg[4] = SSL_KEY_UPDATE_NOT_REQUESTED


cdef int tls_answer_key_update(Worker *w, Conn *c, int d) noexcept nogil:
    # A TLS 1.3 peer asked for our KeyUpdate (update_requested): send it now, or finish
    # sending it. OpenSSL only queues it for our next write, which under kTLS never comes
    # through OpenSSL, and the RFC wants it before our next data record (RFC 8446 §4.6.3)
    # and before our close_notify, after which OpenSSL 3.5 would still send it, into the
    # FIN. 1 none owed or sent, 0 it waits for room (tls_want[d] is set), <0 fatal.
    # SSL_key_update cannot while a data record of ours is half written: SSL_write then
    # sends the KeyUpdate before its next record itself.
    cdef int r
    if not SSL_in_init(c.ssl):
        if SSL_get_key_update_type(c.ssl) == SSL_KEY_UPDATE_NONE:
            return 1
        ERR_clear_error()
        if not SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED):
            ERR_clear_error()
            return 1
    ERR_clear_error()
    r = SSL_do_handshake(c.ssl)
    if r == 1:
        return 1
    return tls_blocked(w, c, d, SSL_get_error(c.ssl, r))


cdef int tls_close_notify(Worker *w, Conn *c) noexcept nogil:
    # The plain side said EOF: send close_notify before the FIN. 1 done, 0 wait, <0 fatal.
    # After a fatal error OpenSSL must not be asked to shut down (SSL_get_error(3)).
    cdef int d = 1 - c.tls_side
    cdef int r
    if c.tls_dead:
        return 1
    if not c.ready[c.tls_side] & c.tls_want[d]:
        return 0
    # Our KeyUpdate first, if one is owed or half sent: OpenSSL would send it after
    # close_notify, and refuses to shut down in the middle of one ("shutdown while in init").
    r = tls_answer_key_update(w, c, d)
    if r <= 0:
        return r
    SSL_set_msg_callback(c.ssl, on_message_after_close_notify)
    ERR_clear_error()
    r = SSL_shutdown(c.ssl)
    if r >= 0:
        return 1
    return tls_blocked(w, c, d, SSL_get_error(c.ssl, r))
