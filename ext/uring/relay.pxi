# A relaying connection on the worker's io_uring (io = "io_uring"; uring/ring.pxi): its
# sockets leave epoll, each side gets a multishot receive into the provided buffers, and
# what a side received is sent on by a send request, one at a time per destination so the
# bytes keep their order. Completions only record and queue the connection; it runs once
# per turn (uring_run), as with epoll's events.
#
# Adopted at the start of RELAYING (uring_adopt): plain copy (splice = "off": a plain
# stream that may splice stays on epoll, whose splice copies nothing), and TLS in user
# space, where c.ssl reads from a BIO over the TLS side's received buffers (ring_read)
# and writes into the gather BIO (tls/gather.pxi), whose records the ring then sends.
# kTLS, the HTTP Host rewrite and proxy exits stay on epoll.
#
# Backpressure: a side whose received bytes are not yet passed on reach URING_RX_HIGH has
# its receive cancelled (the kernel then keeps the bytes, and the peer's window closes);
# it is armed again below URING_RX_LOW. A send in flight holds its buffer: nothing more
# is read towards that destination until it completes.
#
# A closed connection keeps its slot (and its UConn) until the last completion of its
# requests, which are cancelled at the close: the kernel may still read its buffers.


cdef inline uint64_t uring_data(int32_t i, int side, int op) noexcept nogil:
    return (<uint64_t>i << 8) | (<uint64_t>side << 4) | <uint64_t>op


cdef void rx_push(Uring *u, USide *s, int32_t bid, uint32_t n) noexcept nogil:
    u.len[bid] = n
    u.next[bid] = NIL
    if s.rx_tail != NIL:
        u.next[s.rx_tail] = bid
    else:
        s.rx_head = bid
        s.rx_off = 0
    s.rx_tail = bid
    s.rx_bytes += n


cdef int32_t rx_unlink(Uring *u, USide *s) noexcept nogil:
    # Take the oldest received buffer off the list (the caller recycles or sends it).
    cdef int32_t bid = s.rx_head
    s.rx_bytes -= u.len[bid] - s.rx_off
    s.rx_head = u.next[bid]
    if s.rx_head == NIL:
        s.rx_tail = NIL
    s.rx_off = 0
    return bid


cdef void rx_consumed(Uring *u, USide *s, uint32_t n) noexcept nogil:
    # n bytes of the oldest buffer were passed on; recycled once all were.
    s.rx_off += n
    s.rx_bytes -= n
    if s.rx_off == u.len[s.rx_head]:
        uring_buf_put(u, rx_unlink(u, s))


cdef int ring_read(BIO *b, char *out, size_t n, size_t *readbytes) noexcept nogil:
    # c.ssl's read BIO: the TLS side's received bytes. 1 and *readbytes; or 0: retry when
    # nothing waits, EOF after the peer's FIN, or its receive's error in errno.
    cdef Conn *c = <Conn *>BIO_get_data(b)
    cdef Worker *w = <Worker *>SSL_get_app_data(c.ssl)
    cdef USide *s = &c.u.side[c.tls_side]
    cdef size_t got = 0
    cdef uint32_t k
    BIO_clear_retry_flags(b)
    while got < n and s.rx_head != NIL:
        k = w.uring.len[s.rx_head] - s.rx_off
        if k > n - got:
            k = <uint32_t>(n - got)
        memcpy(out + got, w.uring.bufs + <size_t>s.rx_head * URING_BUF_SIZE + s.rx_off, k)
        got += k
        rx_consumed(w.uring, s, k)
    if got:
        readbytes[0] = got
        return 1
    if s.rx_err:
        set_errno(s.rx_err)
    elif s.rx_eof:
        set_errno(0)
    else:
        BIO_set_retry_read(b)
    return 0


cdef long ring_ctrl(BIO *b, int cmd, long num, void *ptr) noexcept nogil:
    # OpenSSL asks BIO_eof after a read that failed without a retry: an EOF is the peer's
    # FIN (unexpected_eof_while_reading), anything else the receive's error (SYSCALL).
    cdef Conn *c = <Conn *>BIO_get_data(b)
    cdef USide *s = &c.u.side[c.tls_side]
    if cmd == BIO_CTRL_EOF:
        return 1 if s.rx_eof and not s.rx_err and s.rx_head == NIL else 0
    return 1 if cmd == BIO_CTRL_FLUSH else 0


cdef BIO_METHOD *ring_method_new() noexcept nogil:
    cdef BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                      "relaycore ring")
    if m != NULL:
        BIO_meth_set_read_ex(m, ring_read)
        BIO_meth_set_ctrl(m, ring_ctrl)
    return m


# Made at import (with the GIL), shared by every worker and never freed.
cdef BIO_METHOD *RING_METHOD = ring_method_new()


cdef bint uring_arm_recv(Worker *w, int32_t i, int side) noexcept nogil:
    # A multishot receive on side's socket into the provided buffers; False: no entry.
    cdef io_uring_sqe *sqe = uring_sqe(w.uring)
    cdef UConn *uc = w.conns[i].u
    if sqe == NULL:
        return False
    io_uring_prep_recv_multishot(sqe, w.conns[i].fd[side], NULL, 0, 0)
    sqe.flags |= IOSQE_BUFFER_SELECT
    sqe.buf_group = URING_BGID
    io_uring_sqe_set_data64(sqe, uring_data(i, side, UOP_RECV))
    uc.side[side].recv_armed = 1
    uc.side[side].recv_cancelled = 0
    uc.inflight += 1
    w.uring.inflight += 1
    return True


cdef int uring_send(Worker *w, int32_t i, int side) noexcept nogil:
    # Send side's tx (the caller set it): 0, or -EBUSY (no submission entry).
    cdef io_uring_sqe *sqe = uring_sqe(w.uring)
    cdef USide *s = &w.conns[i].u.side[side]
    if sqe == NULL:
        return -EBUSY
    io_uring_prep_send(sqe, w.conns[i].fd[side], s.tx, s.tx_len, MSG_NOSIGNAL)
    io_uring_sqe_set_data64(sqe, uring_data(i, side, UOP_SEND))
    s.sending = 1
    w.conns[i].u.inflight += 1
    w.uring.inflight += 1
    return 0


cdef void tx_release(Worker *w, USide *s) noexcept nogil:
    if s.tx_owned != NULL:
        buf_put(w, s.tx_owned)
        s.tx_owned = NULL
    if s.tx_bid != NIL:
        uring_buf_put(w.uring, s.tx_bid)
        s.tx_bid = NIL
    s.tx = NULL
    s.tx_len = 0


cdef void uring_starve(Worker *w, int32_t i, USide *s) noexcept nogil:
    # The receive ended for want of buffers: listed until some come back (a reference).
    cdef UConn *uc = w.conns[i].u
    if not (uc.side[0].starved or uc.side[1].starved):
        uc.starved_next = w.uring.starved_head
        w.uring.starved_head = i
        uc.inflight += 1
    s.starved = 1
    w.uring.starved += 1


cdef void uring_maybe_free(Worker *w, int32_t i) noexcept nogil:
    # A CLOSED connection's last completion came: its UConn goes, and a slot free_dead
    # set aside goes back through the dead list.
    cdef Conn *c = &w.conns[i]
    if c.state != CONN_CLOSED or c.u.inflight:
        return
    if c.u.parked:
        c.next = w.dead_head
        w.dead_head = i
    free(c.u)
    c.u = NULL


cdef void uring_received(Worker *w, int32_t i, int side, int res,
                         uint32_t flags) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef Uring *u = w.uring
    cdef USide *s = &c.u.side[side]
    cdef int32_t bid = NIL
    if flags & IORING_CQE_F_BUFFER:
        bid = <int32_t>(flags >> IORING_CQE_BUFFER_SHIFT)
        u.bufs_free -= 1
    if not flags & IORING_CQE_F_MORE:
        s.recv_armed = 0
        c.u.inflight -= 1
        u.inflight -= 1
    if c.state == CONN_CLOSED:
        if bid != NIL:
            uring_buf_put(u, bid)
        uring_maybe_free(w, i)
        return
    if res > 0 and bid != NIL:
        rx_push(u, s, bid, <uint32_t>res)
        if s.rx_bytes >= URING_RX_HIGH and s.recv_armed and not s.recv_cancelled:
            uring_cancel(u, uring_data(i, side, UOP_RECV))
            s.recv_cancelled = 1
            uring_watch_errors(w, i, side)
    else:
        if bid != NIL:
            uring_buf_put(u, bid)
        if res == 0:
            s.rx_eof = 1
        elif res == -ENOBUFS:
            uring_starve(w, i, s)
        elif res != -ECANCELED and res < 0:
            s.rx_err = -res
    conn_queue(w, i)


cdef void uring_watch_errors(Worker *w, int32_t i, int side) noexcept nogil:
    # side's receive is cancelled (backpressure), so its reset would go unseen until the
    # bytes it sent drain: a poll for POLLERR (and POLLHUP) watches it meanwhile.
    cdef USide *s = &w.conns[i].u.side[side]
    cdef io_uring_sqe *sqe
    if s.err_polled:
        return
    sqe = uring_sqe(w.uring)
    if sqe == NULL:
        return
    io_uring_prep_poll_add(sqe, w.conns[i].fd[side], POLLERR)
    io_uring_sqe_set_data64(sqe, uring_data(i, side, UOP_POLL))
    s.err_polled = 1
    w.conns[i].u.inflight += 1
    w.uring.inflight += 1


cdef void uring_polled(Worker *w, int32_t i, int side, int res) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef USide *s = &c.u.side[side]
    cdef int err = 0
    cdef socklen_t errlen = sizeof(err)
    s.err_polled = 0
    c.u.inflight -= 1
    w.uring.inflight -= 1
    if c.state == CONN_CLOSED:
        uring_maybe_free(w, i)
        return
    if (res > 0 and not s.rx_err
            and getsockopt(c.fd[side], SOL_SOCKET, SO_ERROR, &err, &errlen) == 0 and err):
        s.rx_err = err
        conn_queue(w, i)


cdef void uring_sent(Worker *w, int32_t i, int side, int res) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef USide *s = &c.u.side[side]
    s.sending = 0
    c.u.inflight -= 1
    w.uring.inflight -= 1
    if c.state == CONN_CLOSED or res < 0:
        tx_release(w, s)
        if c.state == CONN_CLOSED:
            uring_maybe_free(w, i)
            return
        s.tx_err = -res
    else:
        if not (c.ssl != NULL and side == c.tls_side):
            count_delivered(w, c, 1 - side, res, False)   # plaintext; TLS counts at SSL_write
        s.tx += res
        s.tx_len -= <uint32_t>res
        if not s.tx_len:
            tx_release(w, s)
        elif uring_send(w, i, side) < 0:
            tx_release(w, s)
            s.tx_err = EBUSY
    conn_queue(w, i)


cdef void uring_adopt(Worker *w, int32_t i) noexcept nogil:
    # The connection starts RELAYING: move it to the ring if its path is one the ring
    # serves and nothing is buffered outside the kernel; else it stays on epoll.
    cdef Conn *c = &w.conns[i]
    cdef UConn *uc
    cdef BIO *b = NULL
    cdef int side
    if (c.http != NULL or c.px != NULL or c.ktls or c.ktls_tx_only or c.out != NULL
            or c.dir[0].buf_len or c.dir[1].buf_len or c.dir[0].pipe_r >= 0
            or c.dir[1].pipe_r >= 0 or c.dir[0].eof or c.dir[1].eof):
        return
    if c.ssl == NULL and w.splice_mode != SPLICE_OFF:
        return                          # plain streams splice (zero copy) on epoll
    if c.ssl != NULL:
        if not c.gather or SSL_has_pending(c.ssl) or RING_METHOD == NULL:
            return
        b = BIO_new(RING_METHOD)
        if b == NULL:
            return
    uc = <UConn *>calloc(1, sizeof(UConn))
    if uc == NULL:
        if b != NULL:
            BIO_free(b)
        return
    uc.starved_next = NIL
    for side in range(2):
        uc.side[side].rx_head = NIL
        uc.side[side].rx_tail = NIL
        uc.side[side].tx_bid = NIL
        epoll_ctl(w.epfd, EPOLL_CTL_DEL, c.fd[side], NULL)
    if b != NULL:
        BIO_set_data(b, c)
        BIO_set_init(b, 1)
        SSL_set0_rbio(c.ssl, b)
        c.gathering = 1                 # records wait in c.out; the ring sends them
    c.u = uc
    c.ready[0] = 0
    c.ready[1] = 0
    w.uring.adopted += 1
    conn_queue(w, i)                    # arms the receives


cdef void uring_conn_closing(Conn *c) noexcept nogil:
    # conn_close is about to write our close_notify, if it owes one: through the gather
    # BIO straight to the socket, after what c.out holds, unless a send is in flight
    # (then none: best effort, as with a full socket).
    c.gathering = 0
    if c.ssl != NULL and not c.u.side[c.tls_side].sending:
        c.ready[c.tls_side] |= READY_WRITE


cdef void uring_conn_closed(Worker *w, int32_t i) noexcept nogil:
    # The slot is CLOSED (its fds too): cancel its requests, recycle what it received; the
    # last completion frees the UConn (now, if none is in flight).
    cdef UConn *uc = w.conns[i].u
    cdef USide *s
    cdef int side
    for side in range(2):
        s = &uc.side[side]
        if s.recv_armed and not s.recv_cancelled:
            uring_cancel(w.uring, uring_data(i, side, UOP_RECV))
            s.recv_cancelled = 1
        if s.sending:
            uring_cancel(w.uring, uring_data(i, side, UOP_SEND))
        if s.err_polled:
            uring_cancel(w.uring, uring_data(i, side, UOP_POLL))
        while s.rx_head != NIL:
            uring_buf_put(w.uring, rx_unlink(w.uring, s))
    uring_maybe_free(w, i)
