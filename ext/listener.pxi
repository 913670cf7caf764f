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


cdef void listener_arm(Worker *w, uint16_t route, bint on) noexcept nogil:
    cdef Route *r = &w.routes[route]
    cdef epoll_event ev
    if r.listen_fd < 0 or r.registered == on:
        return
    ev.events = EPOLLIN if on else 0
    ev.data.u64 = (<uint64_t>route << 2) | TAG_LISTENER
    epoll_ctl(w.epfd, EPOLL_CTL_MOD, r.listen_fd, &ev)
    r.registered = on


cdef void listener_pause_emfile(Worker *w, uint16_t route) noexcept nogil:
    cdef Route *r = &w.routes[route]
    if not r.paused_emfile:
        w.wctr.accept_paused_emfile += 1
    r.paused_emfile = 1
    r.resume_ms = w.now_ms + EMFILE_PAUSE_MS
    listener_arm(w, route, False)


cdef void listeners_pause_limit(Worker *w) noexcept nogil:
    cdef uint16_t k
    w.limit_paused = 1
    w.wctr.accept_paused_limit += 1
    for k in range(w.nroutes):
        listener_arm(w, k, False)


cdef void listeners_resume_limit(Worker *w) noexcept nogil:
    cdef uint16_t k
    w.limit_paused = 0
    for k in range(w.nroutes):
        if not w.routes[k].paused_emfile:
            listener_arm(w, k, True)


cdef void listeners_pause_emfile(Worker *w) noexcept nogil:
    cdef uint16_t k
    for k in range(w.nroutes):
        listener_pause_emfile(w, k)


cdef bint reserve_restore(Worker *w) noexcept nogil:
    if w.reserve_fd < 0:
        w.reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
    return w.reserve_fd >= 0


cdef void listeners_tick(Worker *w) noexcept nogil:
    cdef uint16_t k
    cdef Route *r
    for k in range(w.nroutes):
        r = &w.routes[k]
        if r.paused_emfile and w.now_ms >= r.resume_ms:
            if not reserve_restore(w):
                r.resume_ms = w.now_ms + EMFILE_PAUSE_MS
                continue
            r.paused_emfile = 0
            if not w.limit_paused:
                listener_arm(w, k, True)


cdef void listener_accept(Worker *w, uint16_t route) noexcept nogil:
    cdef Route *r = &w.routes[route]
    cdef int fd
    for _ in range(ACCEPT_BUDGET):
        if r.listen_fd < 0 or r.paused_emfile:
            return
        if w.active >= w.max_conns:
            listeners_pause_limit(w)
            return
        fd = accept4(r.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno == EAGAIN:
                return
            if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                listener_pause_emfile(w, route)
                return
            # ECONNABORTED, EINTR, EPERM (firewall), protocol errors: that one
            # connection is gone; the listener is fine.
            continue
        conn_open(w, route, fd)
