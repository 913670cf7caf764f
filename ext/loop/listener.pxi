# Accepting: level-triggered listeners, a budget per wake-up, and two kinds of pause.
#
# A paused listener is disarmed (EPOLL_CTL_MOD with no events) rather than left to spin:
# its queued connections wait in the kernel's backlog and are served when it resumes.
# - limit: the worker holds max_connections; resumes when one closes.
# - EMFILE/ENFILE: the process is out of fds; rests EMFILE_PAUSE_MS, then tries again.
#   A connection needs two fds, and accept4 may get the last one: then the reserve fd
#   (one open /dev/null held for this moment) is closed to make room for the upstream
#   socket, and every listener rests until the reserve can be opened again. So an
#   accepted device always gets its upstream, and a device that arrives while fds are
#   short waits in the backlog instead of being reset (libuv spends its reserve fd on
#   accepting and closing, which refuses the device; we would rather it waited).
# The listening socket itself belongs to the supervisor too, so a worker that dies never
# takes the backlog with it.


cdef void listener_arm(Worker *w, uint32_t k, bint on) noexcept nogil:
    cdef Listener *lsn = &w.listeners[k]
    cdef epoll_event ev
    if lsn.fd < 0 or lsn.registered == on:
        return
    ev.events = EPOLLIN if on else 0
    ev.data.u64 = (<uint64_t>k << 2) | TAG_LISTENER
    epoll_ctl(w.epfd, EPOLL_CTL_MOD, lsn.fd, &ev)
    lsn.registered = on
    if on:
        uring_poll_epoll(w)


cdef void listener_pause_emfile(Worker *w, uint32_t k) noexcept nogil:
    cdef Listener *lsn = &w.listeners[k]
    if not lsn.paused_emfile:
        w.wctr.accept_paused_emfile += 1
    lsn.paused_emfile = 1
    lsn.resume_ms = w.now_ms + EMFILE_PAUSE_MS
    listener_arm(w, k, False)


cdef void listeners_pause_limit(Worker *w) noexcept nogil:
    cdef uint32_t k
    w.limit_paused = 1
    w.wctr.accept_paused_limit += 1
    for k in range(w.nlisteners):
        listener_arm(w, k, False)


cdef void listeners_resume_limit(Worker *w) noexcept nogil:
    cdef uint32_t k
    w.limit_paused = 0
    for k in range(w.nlisteners):
        if not w.listeners[k].paused_emfile:
            listener_arm(w, k, True)


cdef void listeners_pause_emfile(Worker *w) noexcept nogil:
    cdef uint32_t k
    for k in range(w.nlisteners):
        listener_pause_emfile(w, k)


cdef bint reserve_restore(Worker *w) noexcept nogil:
    if w.reserve_fd < 0:
        w.reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
    return w.reserve_fd >= 0


cdef void listeners_tick(Worker *w) noexcept nogil:
    cdef uint32_t k
    cdef Listener *lsn
    for k in range(w.nlisteners):
        lsn = &w.listeners[k]
        if lsn.paused_emfile and w.now_ms >= lsn.resume_ms:
            if not reserve_restore(w):
                lsn.resume_ms = w.now_ms + EMFILE_PAUSE_MS
                continue
            lsn.paused_emfile = 0
            if not w.limit_paused:
                listener_arm(w, k, True)


cdef void listener_accept(Worker *w, uint32_t k) noexcept nogil:
    # Up to ACCEPT_BUDGET connections, each opened at once (conn_open). [may close]
    cdef Listener *lsn = &w.listeners[k]
    cdef sockaddr_in6 peer
    cdef socklen_t peer_len
    cdef int fd
    for _ in range(ACCEPT_BUDGET):
        if lsn.fd < 0 or lsn.paused_emfile:
            return
        if w.active >= w.max_conns:
            listeners_pause_limit(w)
            return
        peer_len = sizeof(peer)
        fd = accept4(lsn.fd, <sockaddr *>&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno == EAGAIN:
                return
            if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                listener_pause_emfile(w, k)
                return
            # ECONNABORTED, EINTR, EPERM (firewall), protocol errors: that one
            # connection is gone; the listener is fine.
            continue
        conn_open(w, k, fd, &peer if peer_len <= sizeof(peer) else NULL)
    uring_poll_epoll(w)                 # the budget ran out: more may wait


cdef int listener_add(Worker *w, int fd, uint16_t route, bint gateway) except -1:
    # Accept on fd, which the worker owns from now on (it closes it at teardown or on
    # stop_accepting); its connections take `route`, or, for a gateway listener, the route
    # their original destination matches.
    cdef Listener *lsn
    cdef epoll_event ev
    if w.nlisteners == w.listeners_cap:
        lsn = <Listener *>realloc(w.listeners, (w.listeners_cap * 2 + 4) * sizeof(Listener))
        if lsn == NULL:
            raise MemoryError()
        w.listeners = lsn
        w.listeners_cap = w.listeners_cap * 2 + 4
    lsn = &w.listeners[w.nlisteners]
    memset(lsn, 0, sizeof(Listener))
    lsn.fd = fd
    lsn.route = route
    lsn.gateway = gateway
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    ev.events = EPOLLIN
    ev.data.u64 = (<uint64_t>w.nlisteners << 2) | TAG_LISTENER
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        raise_from_errno(errno, "epoll_ctl(listener)")
    lsn.registered = 1
    w.nlisteners += 1
    return 0


cdef void listeners_close(Worker *w) noexcept nogil:
    # Stop accepting: close every listener fd (relayed connections go on).
    cdef uint32_t k
    for k in range(w.nlisteners):
        if w.listeners[k].fd >= 0:
            close(w.listeners[k].fd)
            w.listeners[k].fd = -1
            w.listeners[k].registered = 0
