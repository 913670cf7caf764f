# What an adopted connection does when it runs (uring/relay.pxi): pass on what each side
# received, forward EOFs, close when both directions are shut, and keep its receives armed.
# The moves follow the pumps' return convention (loop/pump.pxi): bytes into *moved; 0, or
# fatal: -errno or PUMP_NO_BUFFER. A move never closes; uring_run does.


cdef int uring_flush_out(Worker *w, int32_t i) noexcept nogil:
    # The records gathered in c.out go out in one send, unless one is in flight: 0 or -errno.
    cdef Conn *c = &w.conns[i]
    cdef USide *t = &c.u.side[c.tls_side]
    if t.sending or c.out == NULL or c.out_len == 0:
        return 0
    t.tx_owned = c.out
    t.tx = c.out + c.out_off
    t.tx_len = c.out_len
    c.out = NULL
    c.out_off = 0
    c.out_len = 0
    return uring_send(w, i, c.tls_side)


cdef int uring_copy(Worker *w, int32_t i, int d, Py_ssize_t *moved) noexcept nogil:
    # Plain to plain: the oldest received buffer itself is sent on (no copy).
    cdef Conn *c = &w.conns[i]
    cdef USide *s = &c.u.side[d]
    cdef USide *t = &c.u.side[1 - d]
    cdef uint32_t off
    if t.sending or s.rx_head == NIL:
        return 0
    off = s.rx_off
    t.tx_bid = rx_unlink(w.uring, s)
    t.tx = w.uring.bufs + <size_t>t.tx_bid * URING_BUF_SIZE + off
    t.tx_len = w.uring.len[t.tx_bid] - off
    moved[0] += t.tx_len
    return uring_send(w, i, 1 - d)


cdef int uring_to_tls(Worker *w, int32_t i, Py_ssize_t *moved) noexcept nogil:
    # Plain side to TLS side: SSL_write each received buffer (a record at most) into the
    # gather BIO while c.out has room for its record, then one send of them all.
    cdef Conn *c = &w.conns[i]
    cdef int d = 1 - c.tls_side
    cdef USide *s = &c.u.side[d]
    cdef uint32_t n
    cdef int k
    while s.rx_head != NIL and not c.u.side[c.tls_side].sending:
        n = w.uring.len[s.rx_head] - s.rx_off
        if c.out != NULL and c.out_off + c.out_len + n + 256 > SCRATCH_SIZE:
            break
        ERR_clear_error()
        k = SSL_write(c.ssl, w.uring.bufs + <size_t>s.rx_head * URING_BUF_SIZE + s.rx_off,
                      <int>n)
        if k <= 0:
            k = SSL_get_error(c.ssl, k)
            if k == SSL_ERROR_WANT_WRITE or k == SSL_ERROR_WANT_READ:
                break
            return tls_fatal(w, c, k)
        count_delivered(w, c, d, k, False)
        moved[0] += k
        rx_consumed(w.uring, s, <uint32_t>k)
    return uring_flush_out(w, i)


cdef int uring_from_tls(Worker *w, int32_t i, Py_ssize_t *moved) noexcept nogil:
    # TLS side to plain side: SSL_read (from ring_read) into a pool buffer, sent in one send.
    cdef Conn *c = &w.conns[i]
    cdef int src = c.tls_side
    cdef Dir *dr = &c.dir[src]
    cdef USide *t = &c.u.side[1 - src]
    cdef Py_ssize_t total = 0
    cdef char *buf
    cdef int n, e
    if dr.eof or t.sending:
        return 0
    buf = buf_get(w)
    if buf == NULL:
        return PUMP_NO_BUFFER
    while total < SCRATCH_SIZE:
        ERR_clear_error()
        n = SSL_read(c.ssl, buf + total, <int>(SCRATCH_SIZE - total))
        if n > 0:
            total += n
            continue
        e = SSL_get_error(c.ssl, n)
        if e == SSL_ERROR_ZERO_RETURN:
            dr.eof = 1
        elif e == SSL_ERROR_SSL and ERR_GET_REASON(
                ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING:
            tls_truncated(w, c)
            dr.eof = 1
        elif e == SSL_ERROR_WANT_READ:
            # A KeyUpdate the peer asked for is written now (into c.out), and OpenSSL's
            # read buffer goes back while nothing waits (as pump_tls_read does).
            n = tls_answer_key_update(w, c, src)
            if n < 0:
                buf_put(w, buf)
                return n
            if c.u.side[src].rx_head == NIL:
                SSL_free_buffers(c.ssl)
        elif e != SSL_ERROR_WANT_WRITE:
            buf_put(w, buf)
            return tls_fatal(w, c, e)
        break
    if total == 0:
        buf_put(w, buf)
    else:
        t.tx_owned = buf
        t.tx = buf
        t.tx_len = <uint32_t>total
        moved[0] += total
        n = uring_send(w, i, 1 - src)
        if n < 0:
            return n
    return uring_flush_out(w, i)


cdef int uring_move(Worker *w, int32_t i, int d, Py_ssize_t *moved) noexcept nogil:
    # Direction d: what its source received, on to its destination.
    cdef Conn *c = &w.conns[i]
    cdef USide *s = &c.u.side[d]
    cdef int rc
    if c.ssl != NULL and d == c.tls_side:
        return uring_from_tls(w, i, moved)
    if s.rx_err and s.rx_head == NIL:
        return -s.rx_err                    # after what it received before the error
    if c.ssl != NULL:
        rc = uring_to_tls(w, i, moved)
    else:
        rc = uring_copy(w, i, d, moved)
    if rc >= 0 and s.rx_eof and s.rx_head == NIL:
        c.dir[d].eof = 1
    return rc


cdef int uring_close_notify(Worker *w, Conn *c) noexcept nogil:
    # The plain side said EOF: our close_notify into c.out (any KeyUpdate owed first).
    # 1 written, 0 no room yet, <0 fatal.
    cdef int d = 1 - c.tls_side
    cdef int r
    if c.tls_dead:
        return 1
    r = tls_answer_key_update(w, c, d)
    if r <= 0:
        return r
    SSL_set_msg_callback(c.ssl, on_message_after_close_notify)
    ERR_clear_error()
    r = SSL_shutdown(c.ssl)
    if r >= 0:
        return 1
    r = SSL_get_error(c.ssl, r)
    return 0 if r == SSL_ERROR_WANT_WRITE else tls_fatal(w, c, r)


cdef bint uring_dir_flushed(Conn *c, int d) noexcept nogil:
    # Nothing of direction d waits: received, in OpenSSL's records, or in flight.
    # (A TLS source's EOF is its close_notify: what may follow it is not passed on.)
    return ((c.u.side[d].rx_head == NIL or c.ssl != NULL and d == c.tls_side)
            and not c.u.side[1 - d].sending
            and (c.out == NULL or c.out_len == 0 or 1 - d != c.tls_side))


cdef int uring_forward_eof(Worker *w, int32_t i, int d) noexcept nogil:
    # d's source said EOF and all it sent has gone: close_notify (a TLS destination),
    # then the FIN once that is sent. 0, or fatal.
    cdef Conn *c = &w.conns[i]
    cdef int rc
    if c.ssl != NULL and 1 - d == c.tls_side and not c.u.close_notify:
        rc = uring_close_notify(w, c)
        if rc <= 0:
            return rc if rc < 0 else uring_flush_out(w, i)  # no room: after what c.out holds
        c.u.close_notify = 1
        rc = uring_flush_out(w, i)
        if rc < 0 or c.u.side[c.tls_side].sending:
            return rc                       # the FIN once it is sent (uring_sent queues us)
    c.dir[d].shut = 1
    shutdown(c.fd[1 - d], SHUT_WR)
    return 0


cdef void uring_run(Worker *w, int32_t i) noexcept nogil:
    # [may close]
    cdef Conn *c = &w.conns[i]
    cdef USide *s
    cdef Py_ssize_t moved = 0
    cdef int d, rc, err
    c.ready[0] = 0                      # no SSL_* call may send by itself (tls/gather.pxi)
    c.ready[1] = 0
    for d in range(2):
        # A send failed; or a receive did while what the side sent waits for its
        # destination (else the move below, or ring_read, passes the error on in order).
        s = &c.u.side[d]
        err = s.tx_err if s.tx_err else s.rx_err if c.u.side[1 - d].sending else 0
        if err:
            set_errno(err)
            rc = tls_fatal(w, c, SSL_ERROR_SYSCALL) if (
                c.ssl != NULL and d == c.tls_side) else -err
            conn_pump_failed(w, i, rc)
            return
    for d in range(2):
        rc = uring_move(w, i, d, &moved)
        if rc >= 0 and c.dir[d].eof and not c.dir[d].shut and uring_dir_flushed(c, d):
            rc = uring_forward_eof(w, i, d)
        if rc < 0:
            conn_pump_failed(w, i, rc)
            return
    if c.dir[0].shut and c.dir[1].shut:
        conn_close(w, i, False)
        return
    if moved:
        c.last_active_ms = w.now_ms
    for d in range(2):
        s = &c.u.side[d]
        if (not s.recv_armed and not s.rx_eof and not s.rx_err and not s.starved
                and not c.dir[d].eof and s.rx_bytes < URING_RX_LOW
                and not uring_arm_recv(w, i, d)):
            uring_starve(w, i, s)
