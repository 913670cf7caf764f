# The worker's io_uring (io = "io_uring", an experiment; epoll stays the default). Made
# with the Loop, it carries the bytes of relaying connections (uring/relay.pxi); epoll
# still accepts, connects, handshakes and serves every mode the ring does not.
#
# The ring is where the worker sleeps: a multishot poll on the epoll fd wakes it when
# epoll has events, which are then read with epoll_wait(0). The receives are multishot,
# into provided buffers (one group, shared by the worker's connections); the
# sends a turn prepares reach the kernel with its wait, in one io_uring_enter. The ring is
# made COOP_TASKRUN: completions are posted when the worker next enters the kernel, not by
# interrupting it.


cdef void uring_release(Uring *u, bint ring_made) noexcept nogil:
    if ring_made:
        io_uring_queue_exit(&u.ring)        # cancels what is still in flight
    if u.br != NULL:
        munmap(u.br, u.br_size)
    free(u.bufs)
    free(u.next)
    free(u.len)
    free(u)


cdef int uring_new(Worker *w, uint32_t nbufs) noexcept nogil:
    cdef Uring *u = <Uring *>calloc(1, sizeof(Uring))
    cdef io_uring_params p
    cdef io_uring_buf_reg reg
    cdef void *br
    cdef int rc
    if u == NULL:
        return -ENOMEM
    u.nbufs = nbufs
    memset(&p, 0, sizeof(p))
    # Not SINGLE_ISSUER: the thread that makes the Loop need not be the one that runs it.
    p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG
    rc = io_uring_queue_init_params(URING_ENTRIES, &u.ring, &p)
    if rc == -EINVAL:
        memset(&p, 0, sizeof(p))            # before 5.19: no COOP_TASKRUN
        rc = io_uring_queue_init_params(URING_ENTRIES, &u.ring, &p)
    if rc < 0:
        uring_release(u, False)
        return rc
    if not p.features & IORING_FEAT_EXT_ARG:
        uring_release(u, True)
        return -ENOSYS                      # a wait with a timeout needs 5.11
    u.br_size = nbufs * sizeof(io_uring_buf)
    br = mmap(NULL, u.br_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if br == MAP_FAILED:
        rc = -errno
        uring_release(u, True)
        return rc
    u.br = <io_uring_buf_ring *>br
    # Large enough for malloc to map it: pages are touched only as buffers are used.
    u.bufs = <char *>malloc(<size_t>nbufs * URING_BUF_SIZE)
    u.next = <int32_t *>malloc(nbufs * sizeof(int32_t))
    u.len = <uint32_t *>malloc(nbufs * sizeof(uint32_t))
    if u.bufs == NULL or u.next == NULL or u.len == NULL:
        uring_release(u, True)
        return -ENOMEM
    memset(&reg, 0, sizeof(reg))
    reg.ring_addr = <uint64_t>br
    reg.ring_entries = nbufs
    reg.bgid = URING_BGID
    rc = io_uring_register_buf_ring(&u.ring, &reg, 0)
    if rc < 0:
        uring_release(u, True)
        return rc                           # provided buffer rings need 5.19
    u.mask = io_uring_buf_ring_mask(nbufs)
    u.starved_head = NIL
    uring_grow(u)
    w.uring = u
    return 0


cdef void uring_free(Worker *w) noexcept nogil:
    # Every connection is closed: wait (bounded) for the last completions of their
    # cancelled requests, whose buffers the kernel may use until then, then unmap it all.
    cdef Uring *u = w.uring
    cdef int tries = 0
    cdef uint32_t k
    if u == NULL:
        return
    while u.inflight and tries < 100:
        uring_wait(w, 10)
        uring_reap(w)
        tries += 1
    uring_release(u, True)
    w.uring = NULL
    for k in range(w.max_conns):
        if w.conns[k].u != NULL:
            free(w.conns[k].u)
            w.conns[k].u = NULL


cdef io_uring_sqe *uring_sqe(Uring *u) noexcept nogil:
    # A free submission entry; the queue goes to the kernel first if it is full. NULL only
    # if that submit fails.
    cdef io_uring_sqe *sqe = io_uring_get_sqe(&u.ring)
    if sqe == NULL:
        io_uring_submit(&u.ring)
        sqe = io_uring_get_sqe(&u.ring)
    return sqe


cdef void uring_grow(Uring *u) noexcept nogil:
    # URING_BUFS_STEP more buffers for the kernel, up to nbufs.
    cdef uint32_t k = 0
    while k < URING_BUFS_STEP and u.nbufs_added < u.nbufs:
        io_uring_buf_ring_add(u.br, u.bufs + <size_t>u.nbufs_added * URING_BUF_SIZE,
                              URING_BUF_SIZE, <unsigned short>u.nbufs_added, u.mask, k)
        u.nbufs_added += 1
        k += 1
    io_uring_buf_ring_advance(u.br, <int>k)
    u.bufs_free += k


cdef void uring_buf_put(Uring *u, int32_t bid) noexcept nogil:
    # Provided buffer bid back to the kernel.
    io_uring_buf_ring_add(u.br, u.bufs + <size_t>bid * URING_BUF_SIZE, URING_BUF_SIZE,
                          <unsigned short>bid, u.mask, 0)
    io_uring_buf_ring_advance(u.br, 1)
    u.bufs_free += 1


cdef void uring_cancel(Uring *u, uint64_t user_data) noexcept nogil:
    cdef io_uring_sqe *sqe = uring_sqe(u)
    if sqe != NULL:
        io_uring_prep_cancel64(sqe, user_data, 0)
        io_uring_sqe_set_data64(sqe, UOP_CANCEL)


cdef int uring_wait(Worker *w, int timeout_ms) noexcept nogil:
    cdef Uring *u = w.uring
    cdef io_uring_sqe *sqe
    cdef io_uring_cqe *cqe = NULL
    cdef __kernel_timespec ts
    cdef int rc
    if not u.epoll_armed:
        sqe = uring_sqe(u)
        if sqe != NULL:
            io_uring_prep_poll_multishot(sqe, w.epfd, POLLIN)
            io_uring_sqe_set_data64(sqe, UOP_EPOLL)
            u.epoll_armed = 1
    if timeout_ms <= 0 or u.epoll_more:
        rc = io_uring_submit_and_get_events(&u.ring)
    else:
        ts.tv_sec = timeout_ms // 1000
        ts.tv_nsec = (timeout_ms % 1000) * 1000000
        rc = io_uring_submit_and_wait_timeout(&u.ring, &cqe, 1, &ts, NULL)
    if rc >= 0 or rc == -ETIME or rc == -EAGAIN or rc == -EBUSY:
        return 0
    return rc


cdef void uring_reap(Worker *w) noexcept nogil:
    cdef Uring *u = w.uring
    cdef io_uring_cqe *cqes[URING_CQE_BATCH]
    cdef unsigned n, k
    cdef uint64_t data
    while True:
        n = io_uring_peek_batch_cqe(&u.ring, cqes, URING_CQE_BATCH)
        if n == 0:
            return
        for k in range(n):
            data = cqes[k].user_data
            if data & 15 == UOP_EPOLL:
                u.epoll_ready = 1
                if not cqes[k].flags & IORING_CQE_F_MORE:
                    u.epoll_armed = 0
            elif data & 15 == UOP_RECV:
                uring_received(w, <int32_t>(data >> 8), <int>((data >> 4) & 1),
                               cqes[k].res, cqes[k].flags)
            elif data & 15 == UOP_SEND:
                uring_sent(w, <int32_t>(data >> 8), <int>((data >> 4) & 1), cqes[k].res)
            elif data & 15 == UOP_POLL:
                uring_polled(w, <int32_t>(data >> 8), <int>((data >> 4) & 1), cqes[k].res)
        io_uring_cq_advance(&u.ring, n)


cdef int uring_epoll_events(Worker *w, epoll_event *events) noexcept nogil:
    # The epoll events the ring's poll announced, without waiting: how many.
    cdef Uring *u = w.uring
    cdef int n
    if not (u.epoll_ready or u.epoll_more):
        return 0
    u.epoll_ready = 0
    n = epoll_wait(w.epfd, events, MAX_EVENTS, 0)
    if n < 0:
        n = 0
    # A full array may have left events behind, which will not wake the poll again.
    u.epoll_more = n == MAX_EVENTS
    return n


cdef void uring_poll_epoll(Worker *w) noexcept nogil:
    # A listener's events may wait in epoll without waking the ring's poll: it is
    # level-triggered, so epoll keeps it on its ready list after reporting it, and re-arming
    # it there (EPOLL_CTL_MOD) wakes nobody. The next turn reads epoll without waiting.
    if w.uring != NULL:
        w.uring.epoll_more = 1


cdef void uring_restart_starved(Worker *w) noexcept nogil:
    # Buffers are back: the connections whose receive ran out of them run again (and arm
    # it). Each held a reference (UConn.inflight) while listed.
    cdef Uring *u = w.uring
    cdef int32_t i
    cdef Conn *c
    if u.starved_head != NIL and u.bufs_free < u.nbufs_added // 16:
        uring_grow(u)
    while u.starved_head != NIL and u.bufs_free and u.bufs_free >= u.nbufs_added // 16:
        i = u.starved_head
        c = &w.conns[i]
        u.starved_head = c.u.starved_next
        c.u.starved_next = NIL
        c.u.side[0].starved = 0
        c.u.side[1].starved = 0
        c.u.inflight -= 1
        if c.state == CONN_CLOSED:
            uring_maybe_free(w, i)
        else:
            conn_queue(w, i)
