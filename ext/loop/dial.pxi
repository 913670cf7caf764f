# Dialling the upstream: a socket, a non-blocking connect, and the next address when one
# fails.
#
# An upstream (a connector's, a fixed exit's target) is a name's addresses, which the
# supervisor re-resolves and the worker replaces between turns
# (Loop.set_upstream_addresses). A connection starts with the address that last connected
# (Route.good_addr; at first the first) and moves on to the next one, in the name's order,
# when a connect is refused, fails or times out, each attempt with the connect timeout,
# until every address was tried once. So a name whose first address is gone costs one
# connect timeout once per worker, not on every connection: the next good address becomes
# the one new connections start with. A proxy exit's destination (modes/proxy.pxi) is the
# same mechanism over the addresses its lookup found.
#
# Once TCP is up, a connector with proxy_protocol writes the PROXY header first
# (modes/proxyhdr.pxi), before the ClientHello or the device's first byte.


cdef inline socklen_t sockaddr_len(const sockaddr_in6 *sa) noexcept nogil:
    return sizeof(sockaddr_in) if sa.sin6_family == AF_INET else sizeof(sockaddr_in6)


cdef inline int upstream_socket(const sockaddr *dst) noexcept nogil:
    return socket(dst.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)


cdef int conn_register(Worker *w, int32_t i, int side) noexcept nogil:
    # Edge-triggered readiness of one side: 0, or -1 and errno.
    cdef epoll_event ev
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = (<uint64_t>i << 2) | <uint64_t>side
    return epoll_ctl(w.epfd, EPOLL_CTL_ADD, w.conns[i].fd[side], &ev)


cdef void route_dial(Worker *w, int32_t i) noexcept nogil:
    # Dial the route's upstream, from the address that last connected. [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    c.dial_idx = r.good_addr % r.naddrs
    c.dial_left = r.naddrs - 1
    conn_dial(w, i, &r.addrs[c.dial_idx])


cdef bint conn_dial_next(Worker *w, int32_t i) noexcept nogil:
    # The connect failed: dial the next address (of the route's, or of a proxy exit's
    # destination), if this connection has one left. False: none left, nothing done.
    # [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    cdef const sockaddr_in6 *dst
    if c.px != NULL:
        if c.px.next_dst + 1 >= c.px.ndst:
            return False
        c.px.next_dst += 1
        dst = &c.px.dst[c.px.next_dst]
        c.orig_dst = dst[0]                 # where a proxy's error events say it went
    else:
        if c.dial_left == 0 or r.naddrs == 0:
            return False
        c.dial_left -= 1
        c.dial_idx = (c.dial_idx + 1) % r.naddrs
        dst = &r.addrs[c.dial_idx]
    if c.fd[SIDE_UPSTREAM] >= 0:
        close(c.fd[SIDE_UPSTREAM])
        c.fd[SIDE_UPSTREAM] = -1
    c.redialled = 1
    conn_dial(w, i, dst)
    return True


cdef bint dial_connected(Conn *c) noexcept nogil:
    # After a redial, a writable edge may be the closed socket's, and SO_ERROR of the new
    # one is 0 while its connect is still in progress.
    cdef sockaddr_storage peer
    cdef socklen_t length = sizeof(peer)
    return getpeername(c.fd[SIDE_UPSTREAM], <sockaddr *>&peer, &length) == 0


cdef void conn_dial(Worker *w, int32_t i, const sockaddr_in6 *dst) noexcept nogil:
    # A socket to dst (AF_INET or AF_INET6) and a non-blocking connect; CONNECTING until
    # it completes. [may close]
    cdef Conn *c = &w.conns[i]
    cdef int up, rc, err
    c.upstream = dst[0]
    up = upstream_socket(<const sockaddr *>dst)
    if up < 0 and (errno == EMFILE or errno == ENFILE) and w.reserve_fd >= 0:
        close(w.reserve_fd)
        w.reserve_fd = -1
        listeners_pause_emfile(w)
        up = upstream_socket(<const sockaddr *>dst)
    if up < 0:
        err = errno
        if err != EMFILE and err != ENFILE and conn_dial_next(w, i):
            return                                  # e.g. EAFNOSUPPORT: IPv6 is off here
        conn_fail(w, i, CAUSE_UPSTREAM_SOCKET, err, NULL)
        return
    c.fd[SIDE_UPSTREAM] = up
    c.ready[SIDE_UPSTREAM] = 0
    c.state = CONN_CONNECTING
    set_nodelay(up)
    if conn_register(w, i, SIDE_UPSTREAM) < 0:
        conn_fail(w, i, CAUSE_UPSTREAM_SOCKET, errno, NULL)
        return
    rc = connect(up, <const sockaddr *>dst, sockaddr_len(dst))
    if rc == 0:
        conn_connected(w, i)
    elif errno == EINPROGRESS:
        timer_arm(w, i, w.now_ms + w.connect_timeout_ms)
    else:
        conn_connect_failed(w, i, errno)


cdef void conn_connect_failed(Worker *w, int32_t i, int err) noexcept nogil:
    # [may close]
    if conn_dial_next(w, i):
        return
    conn_fail(w, i, CAUSE_CONNECT_REFUSED if err == ECONNREFUSED else CAUSE_CONNECT_FAILED,
              err, NULL)


cdef void conn_connect_timeout(Worker *w, int32_t i) noexcept nogil:
    # The connect deadline passed: the next address, or connect_timeout. [may close]
    if conn_dial_next(w, i):
        return
    conn_fail(w, i, CAUSE_CONNECT_TIMEOUT, ETIMEDOUT, NULL)


cdef void conn_connected(Worker *w, int32_t i) noexcept nogil:
    # TCP to the upstream is up: the PROXY header, then TLS or relaying. [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    if c.px == NULL and r.naddrs:
        r.good_addr = c.dial_idx
    if r.kind == ROUTE_EXIT:
        exit_connected(w, i)
        return
    if r.proxy_out and not proxyhdr_send(w, c):
        conn_fail(w, i, CAUSE_CONNECT_FAILED, errno,
                  "cannot send the PROXY header on the new connection")
        return
    if r.tls_ctx != NULL:
        conn_tls_start(w, i, SIDE_UPSTREAM)
    else:
        conn_relaying(w, i)
