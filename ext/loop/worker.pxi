# The worker: one epoll, one turn at a time, Python only between turns; its setup and
# teardown. The Python-facing Loop (api/loop.pxi) owns one Worker and calls these.
#
# A turn: epoll_wait; each event sets ready bits on its side and queues its connection
# (or accepts, for a listener); then every queued connection runs once (so a connection
# with events on both sides runs once, not twice); then timers; then the slots closed in
# this turn go back to the free list. Connections that used up their budget stay queued
# and the next epoll_wait does not sleep.


cdef Worker *worker_new(uint32_t max_conns, int splice_mode, uint32_t max_pipes,
                        int pipe_size) except NULL:
    # A worker with every slot free, no route and no listener yet, or an exception (and
    # nothing allocated).
    cdef Worker *w = <Worker *>calloc(1, sizeof(Worker))
    cdef uint32_t k
    cdef int err, slot
    if w == NULL:
        raise MemoryError()
    w.epfd = -1
    w.reserve_fd = -1
    w.rtnl_fd = -1
    w.ktls_rekey = -1
    w.splice_mode = splice_mode
    w.max_conns = max_conns
    w.max_pipes = max_pipes
    w.pipe_size = pipe_size
    w.run_head = NIL
    w.dead_head = NIL
    w.conns = <Conn *>calloc(max_conns, sizeof(Conn))
    w.scratch = <char *>malloc(SCRATCH_SIZE)
    w.buf_pool = <char **>calloc(BUF_POOL_MAX, sizeof(char *))
    w.pipe_pool = <int *>calloc(2 * max_pipes + 2, sizeof(int))
    w.wheel = <int32_t *>malloc(WHEEL_SLOTS * sizeof(int32_t))
    w.errors = <ErrorEntry *>calloc(ERR_RING, sizeof(ErrorEntry))
    if (w.conns == NULL or w.scratch == NULL or w.buf_pool == NULL
            or w.pipe_pool == NULL or w.wheel == NULL or w.errors == NULL):
        worker_release(w)
        raise MemoryError()
    for k in range(max_conns):
        w.conns[k].next = k + 1 if k + 1 < max_conns else NIL
        w.conns[k].fd[0] = -1
        w.conns[k].fd[1] = -1
    w.free_head = 0
    for slot in range(WHEEL_SLOTS):
        w.wheel[slot] = NIL
    w.now_ms = clock_ms()
    w.wheel_tick = w.now_ms // TICK_MS
    w.epfd = epoll_create1(EPOLL_CLOEXEC)
    if w.epfd < 0:
        err = errno
        worker_release(w)
        raise_from_errno(err, "epoll_create1")
    if not reserve_restore(w):
        err = errno
        worker_release(w)
        raise_from_errno(err, "open(/dev/null)")
    return w


cdef void run_queue(Worker *w) noexcept nogil:
    # [may close]
    cdef int32_t head = w.run_head
    cdef int32_t i
    cdef Conn *c
    w.run_head = NIL
    while head != NIL:
        i = head
        c = &w.conns[i]
        head = c.next
        c.queued = 0
        if c.state == CONN_CLOSED:
            c.next = w.dead_head
            w.dead_head = i
        else:
            conn_run(w, i)


cdef void free_dead(Worker *w) noexcept nogil:
    cdef int32_t i
    while w.dead_head != NIL:
        i = w.dead_head
        w.dead_head = w.conns[i].next
        if w.conns[i].u != NULL:
            # Requests of its are still in flight on the ring: the last completion puts the
            # slot back on this list (uring/relay.pxi).
            w.conns[i].u.parked = 1
            continue
        w.conns[i].state = CONN_FREE
        w.conns[i].next = w.free_head
        w.free_head = i


cdef int worker_turn(Worker *w, int timeout_ms) noexcept nogil:
    # 0, or -errno from epoll_wait or the ring's wait (-EINTR: a signal is waiting for its
    # Python handler). [may close]
    cdef epoll_event events[MAX_EVENTS]
    cdef int n
    if w.run_head != NIL:
        timeout_ms = 0
    elif (w.active or w.limit_paused) and timeout_ms > TICK_MS:
        timeout_ms = TICK_MS
    if w.uring == NULL:
        n = epoll_wait(w.epfd, events, MAX_EVENTS, timeout_ms)
        if n < 0:
            return -errno
        w.now_ms = clock_ms()
    else:
        n = uring_wait(w, timeout_ms)
        if n < 0:
            return n
        w.now_ms = clock_ms()
        uring_reap(w)
        uring_restart_starved(w)
        n = uring_epoll_events(w, events)
    epoll_dispatch(w, events, n)
    run_queue(w)
    timers_expire(w)
    listeners_tick(w)
    free_dead(w)
    return 0


cdef void epoll_dispatch(Worker *w, epoll_event *events, int n) noexcept nogil:
    # Each event sets ready bits on its side and queues its connection, or accepts.
    # [may close]
    cdef int k, tag
    cdef uint64_t data
    cdef Conn *c
    cdef uint32_t ev
    for k in range(n):
        data = events[k].data.u64
        tag = <int>(data & 3)
        if tag == TAG_LISTENER:
            listener_accept(w, <uint32_t>(data >> 2))
            continue
        if tag == TAG_RESOLVER:
            resolver_drain(w)
            continue
        c = &w.conns[data >> 2]
        if c.state == CONN_FREE or c.state == CONN_CLOSED:
            continue
        ev = events[k].events
        if (tag == SIDE_CLIENT and ev & (EPOLLERR | EPOLLHUP)
                and c.state != CONN_RELAYING and c.state != CONN_LINGERING
                and not (c.state == CONN_HANDSHAKING and c.tls_side == SIDE_CLIENT
                         and ev & EPOLLIN)):
            # The device reset before its upstream was ready: do not hold the slot (and
            # blame the upstream) until the connect or handshake times out. A device that
            # only half-closed (FIN, EPOLLRDHUP) still gets its request relayed. A tunnel
            # exit's entry node that sent something first (an alert saying why it gave up,
            # as a pin it refused) is read instead: the handshake fails with its reason.
            conn_ctr(w, c).resets += 1
            conn_close(w, <int32_t>(data >> 2), True)
            continue
        if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            c.ready[tag] |= READY_READ
        if ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            c.ready[tag] |= READY_HUP
        if ev & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            c.ready[tag] |= READY_WRITE
        conn_queue(w, <int32_t>(data >> 2))


cdef int worker_run(Worker *w, uint64_t deadline_ms) noexcept nogil:
    # Turn until deadline_ms (clock_ms) has passed: 0, or a turn's -errno. [may close]
    cdef uint64_t now
    cdef int rc
    while True:
        now = clock_ms()
        rc = worker_turn(w, <int>(deadline_ms - now if deadline_ms > now else 0))
        if rc < 0 or w.now_ms >= deadline_ms:
            return rc


cdef void worker_free(Worker *w) noexcept nogil:
    # Abort every connection (RSTs), then worker_release. [may close]
    cdef uint32_t k
    if w.conns != NULL:
        for k in range(w.max_conns):
            if w.conns[k].state != CONN_FREE and w.conns[k].state != CONN_CLOSED:
                conn_close(w, k, True)
    uring_free(w)
    worker_release(w)


cdef void worker_release(Worker *w) noexcept nogil:
    # Close every fd the worker holds, join the resolver's threads, free everything. No
    # connection may be open.
    cdef uint32_t k
    free(w.conns)
    for k in range(w.nlisteners):
        if w.listeners[k].fd >= 0:
            close(w.listeners[k].fd)
    resolver_free(w)
    for k in range(w.nroutes):
        free(w.routes[k].allow)
        cert_seen_clear(&w.routes[k].cert)
        free(w.routes[k].http_host)
    for k in range(w.pipe_pool_len):
        close(w.pipe_pool[2 * k])
        close(w.pipe_pool[2 * k + 1])
    for k in range(w.buf_pool_len):
        free(w.buf_pool[k])
    if w.epfd >= 0:
        close(w.epfd)
    if w.reserve_fd >= 0:
        close(w.reserve_fd)
    if w.rtnl_fd >= 0:
        close(w.rtnl_fd)
    free(w.routes)
    free(w.listeners)
    free(w.matches)
    free(w.scratch)
    free(w.buf_pool)
    free(w.pipe_pool)
    free(w.wheel)
    free(w.errors)
    free(w)
