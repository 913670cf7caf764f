# A relayed connection: client socket <-> upstream socket, from accept to close.
#
# Life: accept -> CONNECTING (non-blocking connect; the client is not read, so its bytes
# wait in the kernel) -> [HANDSHAKING: TLS, tls/stream.pxi] -> RELAYING -> CLOSED. A
# tunnel exit does its handshake first and may read a request (REQUEST, RESOLVING:
# modes/exit.pxi) before it connects. EOF travels one direction at a time: a direction
# whose src said EOF shuts dst for writing once its bytes are flushed, and the other
# direction keeps flowing. The connection closes when both directions are shut, or at
# once with RSTs on both sides when either side fails (a reset propagates as a reset).
# A tunnel exit that refuses its client instead answers, sends a FIN and LINGERs, reading
# and dropping the client's input until it closes too (conn_linger).
#
# Slots are freed only at the end of the event batch (the dead list): an event later in
# the same batch may name a slot that closed earlier in it, and must not find a new
# connection there. A function marked [may close] may leave its slot CLOSED: its caller
# must not touch the connection afterwards except to read c.state.


cdef void set_nodelay(int fd) noexcept nogil:
    # A relay must not add Nagle delay to a device's small writes.
    cdef int one = 1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))


cdef void close_abortive(int fd) noexcept nogil:
    # SO_LINGER {1, 0}: close sends RST, so the peer learns of the failure.
    cdef linger lg
    lg.l_onoff = 1
    lg.l_linger = 0
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
    close(fd)


cdef void conn_close(Worker *w, int32_t i, bint abortive) noexcept nogil:
    # The one place a slot becomes CLOSED; abortive: RSTs on both sides. [may close]
    cdef Conn *c = &w.conns[i]
    cdef int side
    if c.state == CONN_CLOSED or c.state == CONN_FREE:
        return
    if c.u != NULL:
        uring_conn_closing(c)
    if (not abortive and c.ssl != NULL and not c.tls_dead
            and not SSL_get_shutdown(c.ssl) & SSL_SENT_SHUTDOWN):
        # A graceful close we decide (idle timeout) still owes the server a close_notify,
        # or it reads the FIN as a truncated stream (RFC 8446 §6.1). Best effort: the
        # socket is non-blocking and about to close.
        ERR_clear_error()
        SSL_shutdown(c.ssl)
        ERR_clear_error()
    for side in range(2):
        if c.fd[side] >= 0:
            if abortive:
                close_abortive(c.fd[side])
            else:
                close(c.fd[side])
            c.fd[side] = -1
        dir_release(w, &c.dir[side])
    if c.ssl != NULL:
        SSL_free(c.ssl)
        c.ssl = NULL
    if c.out != NULL:
        buf_put(w, c.out)
        c.out = NULL
    if c.px != NULL:
        proxy_free(w, c)
    if c.http != NULL:
        http_free(w, c)
    timer_disarm(w, i)
    c.state = CONN_CLOSED
    if not c.queued:
        # Queued slots are unlinked by the run queue, which then puts them on the dead list.
        c.next = w.dead_head
        w.dead_head = i
    if c.u != NULL:
        uring_conn_closed(w, i)
    w.active -= 1
    conn_ctr(w, c).closed += 1
    if w.limit_paused and w.active < w.max_conns:
        listeners_resume_limit(w)


cdef void conn_fail(Worker *w, int32_t i, uint8_t cause, int err,
                    const char *reason) noexcept nogil:
    # The connection cannot go on: record the event (reason, or strerror(err) when NULL),
    # then reset the device so it does not mistake the failure for an empty answer.
    # [may close]
    cdef Conn *c = &w.conns[i]
    cdef ErrorEntry *ev = error_event(w, c, cause, err)
    if ev != NULL and reason != NULL:
        snprintf(ev.reason, REASON_LEN, "%s", reason)
    if c.tls_side == SIDE_CLIENT and (CAUSE_TLS_UNKNOWN_CA <= cause <= CAUSE_TLS_ERROR
                                      or cause == CAUSE_TLS_PQ_REQUIRED):
        # A tunnel exit refused the entry in a TLS alert: a FIN after it, not a reset
        # that could discard it unread, so that the entry logs why. No close_notify
        # after a fatal alert (SSL_shutdown(3)).
        c.tls_dead = 1
        conn_linger(w, i)
        return
    if c.px != NULL and c.state != CONN_HANDSHAKING:
        # A proxy exit answers in its protocol (SOCKS5 reply, HTTP status) and ends with
        # a FIN, for the same reason.
        proxy_refuse(w, c, cause, err)
        conn_linger(w, i)
        return
    conn_close(w, i, True)


cdef void conn_linger(Worker *w, int32_t i) noexcept nogil:
    # A refusal (a TLS alert, a SOCKS5 reply, an HTTP status) has just been written to the
    # client: send a FIN after it, then read and drop what the client still sends until it
    # closes too or LINGER_MS pass. Closing with input unread would send a RST instead
    # (RFC 1122 4.2.2.13), and a RST may make the client's kernel drop the refusal before
    # the client reads it: a TLS 1.3 client's Certificate is refused with its Finished
    # still unread, a pipelining client's first bytes follow its request. (nginx's
    # lingering_close, for the same reason.) Not when every slot is taken: a device
    # waiting to be served matters more than the reason reaching a refused client.
    # [may close]
    cdef Conn *c = &w.conns[i]
    if w.active >= w.max_conns:
        conn_close(w, i, False)
        return
    if c.ssl != NULL and not c.tls_dead and not SSL_get_shutdown(c.ssl) & SSL_SENT_SHUTDOWN:
        ERR_clear_error()
        SSL_shutdown(c.ssl)
        ERR_clear_error()
    if c.fd[SIDE_UPSTREAM] >= 0:
        close(c.fd[SIDE_UPSTREAM])              # failed or never connected: nothing to say
        c.fd[SIDE_UPSTREAM] = -1
    if c.px != NULL:
        proxy_free(w, c)
    shutdown(c.fd[SIDE_CLIENT], SHUT_WR)
    c.state = CONN_LINGERING
    timer_arm(w, i, w.now_ms + LINGER_MS)
    c.ready[SIDE_CLIENT] |= READY_READ
    conn_linger_drain(w, i)


cdef void conn_linger_drain(Worker *w, int32_t i) noexcept nogil:
    # [may close]
    cdef Conn *c = &w.conns[i]
    cdef Py_ssize_t n
    cdef Py_ssize_t budget = CONN_BUDGET
    while budget > 0:
        n = recv(c.fd[SIDE_CLIENT], w.scratch, SCRATCH_SIZE, 0)
        if n > 0:
            budget -= n
            read_short(c, SIDE_CLIENT, n, SCRATCH_SIZE)
            if not c.ready[SIDE_CLIENT] & READY_READ:
                return
        elif n < 0 and errno == EAGAIN:
            c.ready[SIDE_CLIENT] &= ~READY_READ
            return
        else:
            # EOF (or a reset): nothing is left unread, so the close is quiet.
            conn_close(w, i, False)
            return
    conn_queue(w, i)


cdef void conn_relaying(Worker *w, int32_t i) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    c.state = CONN_RELAYING
    c.last_active_ms = w.now_ms
    timer_arm(w, i, w.now_ms + w.idle_timeout_ms)
    if w.uring != NULL:
        uring_adopt(w, i)


cdef void conn_open(Worker *w, uint32_t listener, int client_fd,
                    const sockaddr_in6 *peer) noexcept nogil:
    # Takes ownership of client_fd. w.free_head is not NIL (the caller checked the limit).
    # [may close]
    cdef int32_t i = w.free_head
    cdef Conn *c = &w.conns[i]
    cdef Listener *lsn = &w.listeners[listener]
    cdef uint16_t route = lsn.route
    cdef Route *r
    cdef int side
    w.free_head = c.next
    memset(c, 0, sizeof(Conn))
    c.fd[SIDE_CLIENT] = client_fd
    c.fd[SIDE_UPSTREAM] = -1
    c.tls_side = SIDE_UPSTREAM
    if peer != NULL:
        c.client = peer[0]
    for side in range(2):
        c.dir[side].pipe_r = -1
        c.dir[side].pipe_w = -1
    if lsn.gateway:
        route = gateway_route(w, client_fd, &c.orig_dst)
    r = &w.routes[route]
    c.route = route
    c.next = NIL
    c.timer_slot = NIL
    c.state = CONN_CONNECTING
    w.active += 1
    conn_ctr(w, c).accepted += 1
    if r.kind == ROUTE_REJECT:
        conn_fail(w, i, CAUSE_NO_ROUTE, 0,
                  "no connector or passthrough rule matches the original destination"
                  if c.orig_dst.sin6_family else
                  "not intercepted: the connection has no original destination (it was"
                  " not redirected by the gateway's rules)")
        return
    set_nodelay(client_fd)
    if conn_register(w, i, SIDE_CLIENT) < 0:
        conn_fail(w, i, CAUSE_UPSTREAM_SOCKET, errno, NULL)
        return
    if r.http_host != NULL and not http_open(w, c):
        conn_fail(w, i, CAUSE_OUT_OF_MEMORY, ENOMEM, NULL)
        return
    if r.accept_proxy and not lsn.gateway:
        # The balancer's header comes first; the route starts once it is read.
        c.state = CONN_PROXY_HEADER
        timer_arm(w, i, w.now_ms + w.handshake_timeout_ms)
        c.ready[SIDE_CLIENT] |= READY_READ      # it may be here already
        conn_queue(w, i)
        return
    conn_start(w, i)


cdef void conn_start(Worker *w, int32_t i) noexcept nogil:
    # The device is accepted (and its PROXY header read): go where its route says.
    # [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    if r.kind == ROUTE_EXIT:
        conn_tls_start(w, i, SIDE_CLIENT)       # the entry node's ClientHello comes first
    elif r.kind == ROUTE_PASSTHROUGH:
        conn_dial(w, i, &c.orig_dst)
    else:
        route_dial(w, i)


cdef inline int pump(Worker *w, Conn *c, int d, Py_ssize_t *moved) noexcept nogil:
    # The pump for direction d as the connection stands: TLS (unless the kernel took it),
    # OpenSSL's turn on a kTLS socket (a control record, bytes read ahead of the switch:
    # tls/ktls.pxi), splice, or copy.
    cdef int rc, k
    if c.ssl != NULL and not c.ktls:
        if d == c.tls_side:
            return pump_tls_read(w, c, moved)
        # One batch: the records SSL_write makes go out together (tls/gather.pxi).
        c.gathering = c.gather
        rc = pump_http_write(w, c, moved) if c.http != NULL else pump_tls_write(w, c, moved)
        c.gathering = 0
        if rc >= 0 and c.out != NULL:
            k = tls_out_drain(w, c)
            if k < 0:
                return k
        return rc
    if c.ktls and (c.ktls_control or SSL_has_pending(c.ssl)):
        return ktls_pump(w, c, d, moved)
    if c.dir[d].pipe_r >= 0:
        return pump_splice(w, c, d, moved)
    return pump_copy(w, c, d, moved)


cdef inline bint dir_flushed(Dir *dr) noexcept nogil:
    return dr.buf_len == 0 and dr.pipe_bytes == 0


cdef void conn_pump_failed(Worker *w, int32_t i, int rc) noexcept nogil:
    # A pump's fatal result: a reset on both sides, counted as such, unless the worker was
    # out of memory, which is its own cause with an event. [may close]
    if rc == PUMP_NO_BUFFER:
        conn_fail(w, i, CAUSE_OUT_OF_MEMORY, ENOMEM, NULL)
        return
    if rc == PUMP_HTTP_REFUSED:
        http_refuse(w, i)
        return
    conn_ctr(w, &w.conns[i]).resets += 1
    conn_close(w, i, True)


cdef void conn_run(Worker *w, int32_t i) noexcept nogil:
    # Move what can move now. Leaves the connection queued if its budget ran out first.
    # [may close]
    cdef Conn *c = &w.conns[i]
    cdef int err = 0
    cdef int d, rc
    cdef socklen_t errlen = sizeof(err)
    cdef Py_ssize_t moved
    cdef Py_ssize_t budget = CONN_BUDGET
    cdef bint again
    cdef bint active = False
    if c.state == CONN_CONNECTING:
        if not c.ready[SIDE_UPSTREAM] & READY_WRITE:
            return
        getsockopt(c.fd[SIDE_UPSTREAM], SOL_SOCKET, SO_ERROR, &err, &errlen)
        if err:
            conn_connect_failed(w, i, err)
            return
        if c.redialled and not dial_connected(c):
            # A redial reuses the slot: the event was for its previous socket.
            c.ready[SIDE_UPSTREAM] &= ~READY_WRITE
            return
        conn_connected(w, i)
    elif c.state == CONN_HANDSHAKING and c.ready[c.tls_side] & c.tls_want[0]:
        conn_handshake(w, i)
    elif c.state == CONN_REQUEST and c.ready[SIDE_CLIENT] & c.tls_want[0]:
        exit_read_request(w, i)
    elif c.state == CONN_LINGERING and c.ready[SIDE_CLIENT] & READY_READ:
        conn_linger_drain(w, i)
    elif c.state == CONN_PROXY_HEADER and c.ready[SIDE_CLIENT] & READY_READ:
        proxyhdr_read(w, i)
    if c.state != CONN_RELAYING:
        return
    if c.u != NULL:
        uring_run(w, i)
        return
    while True:
        moved = 0
        again = False
        for d in range(2):
            rc = pump(w, c, d, &moved)
            if rc < 0:
                conn_pump_failed(w, i, rc)
                return
            if rc != PUMP_STOPPED:
                again = True                        # EOF, promotion, demotion: go round
            if c.dir[d].eof and not c.dir[d].shut and dir_flushed(&c.dir[d]):
                if d != c.tls_side and c.ssl != NULL:
                    rc = tls_close_notify(w, c)
                    if rc < 0:
                        conn_pump_failed(w, i, rc)
                        return
                    if rc == 0:
                        continue
                c.dir[d].shut = 1
                shutdown(c.fd[1 - d], SHUT_WR)
        if c.dir[0].shut and c.dir[1].shut:
            conn_close(w, i, False)
            return
        if moved == 0 and not again:
            break
        active = True
        budget -= moved
        if budget <= 0:
            conn_queue(w, i)
            break
    rc = stalled_source_failed(w, c)
    if rc < 0:
        conn_pump_failed(w, i, rc)
        return
    if active:
        c.last_active_ms = w.now_ms


cdef void conn_expire(Worker *w, int32_t i) noexcept nogil:
    # The connection's deadline passed (its timer already disarmed). [may close]
    cdef Conn *c = &w.conns[i]
    if c.state == CONN_CONNECTING:
        conn_connect_timeout(w, i)
    elif c.state == CONN_PROXY_HEADER:
        conn_fail(w, i, CAUSE_PROXY_HEADER, ETIMEDOUT,
                  "no complete PROXY header within the handshake timeout")
    elif c.state == CONN_HANDSHAKING:
        conn_fail(w, i, CAUSE_HANDSHAKE_TIMEOUT, ETIMEDOUT,
                  "the server did not complete the TLS handshake in time"
                  if c.tls_side == SIDE_UPSTREAM else
                  "the client did not complete the TLS handshake in time")
    elif c.state == CONN_REQUEST or c.state == CONN_RESOLVING:
        exit_expire(w, i)
    elif c.state == CONN_LINGERING:
        conn_close(w, i, False)
    elif c.state == CONN_RELAYING:
        if c.last_active_ms + w.idle_timeout_ms > w.now_ms:
            timer_arm(w, i, c.last_active_ms + w.idle_timeout_ms)
        else:
            conn_ctr(w, c).idle_timeout += 1
            conn_close(w, i, False)
