# The worker's event loop: one epoll, one turn at a time, Python only between turns.
#
# A turn: epoll_wait; each event sets ready bits on its side and queues its connection
# (or accepts, for a listener); then every queued connection runs once (so a connection
# with events on both sides runs once, not twice); then timers; then the slots closed in
# this turn go back to the free list. Connections that used up their budget stay queued
# and the next epoll_wait does not sleep.


cdef void run_queue(Worker *w) noexcept nogil:
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


cdef void timers_expire(Worker *w) noexcept nogil:
    # Expire every tick that has fully elapsed: whatever sits in it is due (or belongs to
    # a later turn of the wheel and stays).
    cdef uint64_t now_tick = w.now_ms // TICK_MS
    cdef uint64_t t
    cdef int32_t i, nxt
    if w.active == 0 or now_tick - w.wheel_tick > WHEEL_SLOTS:
        if w.active == 0:
            w.wheel_tick = now_tick
            return
        w.wheel_tick = now_tick - WHEEL_SLOTS
    while w.wheel_tick < now_tick:
        t = w.wheel_tick
        i = w.wheel[t & (WHEEL_SLOTS - 1)]
        while i != NIL:
            nxt = w.conns[i].timer_next
            if w.conns[i].deadline_ms // TICK_MS <= t:
                timer_disarm(w, i)
                conn_expire(w, i)
            i = nxt
        w.wheel_tick += 1


cdef void free_dead(Worker *w) noexcept nogil:
    cdef int32_t i
    while w.dead_head != NIL:
        i = w.dead_head
        w.dead_head = w.conns[i].next
        w.conns[i].state = CONN_FREE
        w.conns[i].next = w.free_head
        w.free_head = i


cdef int worker_turn(Worker *w, int timeout_ms) noexcept nogil:
    # 0, or -errno from epoll_wait (-EINTR: a signal is waiting for its Python handler).
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, k, tag
    cdef uint64_t data
    cdef Conn *c
    cdef uint32_t ev
    if w.run_head != NIL:
        timeout_ms = 0
    elif (w.active or w.limit_paused) and timeout_ms > TICK_MS:
        timeout_ms = TICK_MS
    n = epoll_wait(w.epfd, events, MAX_EVENTS, timeout_ms)
    if n < 0:
        return -errno
    w.now_ms = clock_ms()
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
                and c.state != CONN_RELAYING and c.state != CONN_LINGERING):
            # The device reset before its upstream was ready: do not hold the slot (and
            # blame the upstream) until the connect or handshake times out. A device that
            # only half-closed (FIN, EPOLLRDHUP) still gets its request relayed.
            conn_ctr(w, c).resets += 1
            conn_close(w, <int32_t>(data >> 2), True)
            continue
        if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            c.ready[tag] |= READY_READ
        if ev & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            c.ready[tag] |= READY_WRITE
        conn_queue(w, <int32_t>(data >> 2))
    run_queue(w)
    timers_expire(w)
    listeners_tick(w)
    free_dead(w)
    return 0


cdef class Loop:
    """One worker's epoll loop: accepts on its listeners and relays bytes in C."""

    cdef Worker *w
    cdef list tls_contexts        # keeps every route's TLS context alive

    def __cinit__(self, *, int max_connections=10000, str splice="auto",
                  long connect_timeout_ms=10000, long idle_timeout_ms=900000,
                  long handshake_timeout_ms=10000, int max_pipes=-1, int pipe_size=262144):
        cdef int k
        cdef int mode
        if max_connections < 1 or max_connections > 0x3fffffff:
            raise ValueError(f"max_connections out of range: {max_connections}")
        self.tls_contexts = []
        if connect_timeout_ms < 1 or idle_timeout_ms < 1 or handshake_timeout_ms < 1:
            raise ValueError("timeouts must be positive")
        try:
            mode = {"off": SPLICE_OFF, "auto": SPLICE_AUTO, "always": SPLICE_ALWAYS}[splice]
        except KeyError:
            raise ValueError(f"splice must be 'auto', 'off' or 'always', not {splice!r}")
        if max_pipes < 0:
            max_pipes = (0 if mode == SPLICE_OFF else
                         2 * max_connections if mode == SPLICE_ALWAYS else
                         max(2, max_connections // 4))
        self.w = <Worker *>calloc(1, sizeof(Worker))
        if self.w == NULL:
            raise MemoryError()
        w = self.w
        w.epfd = -1
        w.reserve_fd = -1
        w.splice_mode = mode
        w.connect_timeout_ms = connect_timeout_ms
        w.handshake_timeout_ms = handshake_timeout_ms
        w.idle_timeout_ms = idle_timeout_ms
        w.max_conns = max_connections
        w.max_pipes = max_pipes
        w.pipe_size = pipe_size
        w.run_head = NIL
        w.dead_head = NIL
        w.gateway_default = -1
        w.gateway_reject = -1
        w.conns = <Conn *>calloc(max_connections, sizeof(Conn))
        w.scratch = <char *>malloc(SCRATCH_SIZE)
        w.buf_pool = <char **>calloc(BUF_POOL_MAX, sizeof(char *))
        w.pipe_pool = <int *>calloc(2 * max_pipes + 2, sizeof(int))
        w.wheel = <int32_t *>malloc(WHEEL_SLOTS * sizeof(int32_t))
        w.errors = <ErrorEvent *>calloc(ERR_RING, sizeof(ErrorEvent))
        if (w.conns == NULL or w.scratch == NULL or w.buf_pool == NULL
                or w.pipe_pool == NULL or w.wheel == NULL or w.errors == NULL):
            raise MemoryError()
        for k in range(max_connections):
            w.conns[k].next = k + 1 if k + 1 < max_connections else NIL
            w.conns[k].fd[0] = -1
            w.conns[k].fd[1] = -1
        w.free_head = 0
        for k in range(WHEEL_SLOTS):
            w.wheel[k] = NIL
        w.now_ms = clock_ms()
        w.wheel_tick = w.now_ms // TICK_MS
        w.epfd = epoll_create1(EPOLL_CLOEXEC)
        if w.epfd < 0:
            raise_from_errno(errno, "epoll_create1")
        if not reserve_restore(w):
            raise_from_errno(errno, "open(/dev/null)")

    def __dealloc__(self):
        cdef Worker *w = self.w
        self.w = NULL
        if w != NULL:
            with nogil:
                worker_free(w)

    cdef Worker *live(self) except NULL:
        if self.w == NULL or self.w.epfd < 0:
            raise ValueError("the loop is closed")
        return self.w

    def add_route(self, int listen_fd, int connector_id, str upstream_host,
                  int upstream_port, TLSClientContext tls=None):
        """Accept on listen_fd (bound, listening; the loop owns it from now on) and relay
        each connection to upstream_host (an IPv4 or IPv6 literal):upstream_port, over
        TLS made with `tls` when given."""
        self.add_listener(listen_fd,
                          self.add_upstream(connector_id, upstream_host, upstream_port, tls))

    def add_upstream(self, int connector_id, str upstream_host, int upstream_port,
                     TLSClientContext tls=None):
        """A route to a connector's upstream; returns its index."""
        cdef sockaddr_storage upstream
        cdef socklen_t upstream_len = 0
        cdef Route *r
        parse_sockaddr(upstream_host, upstream_port, &upstream, &upstream_len)
        r = self.new_route(connector_id, ROUTE_UPSTREAM)
        r.upstream = upstream
        r.upstream_len = upstream_len
        if tls is not None:
            r.tls_ctx = tls.ctx
            r.tls = tls.conf
            self.tls_contexts.append(tls)
        return self.w.nroutes - 1

    def add_exit(self, int connector_id, TLSServerContext tls not None, str target,
                 str host="", int port=0):
        """A tunnel exit route; returns its index (give it listeners with add_listener).
        Connections are TLS from entry nodes, authenticated by `tls`. target: "fixed"
        (relay plain TCP to host, an IP literal, :port), "socks5" or "http-connect" (the
        entry names the destination; domain names are resolved here, off the loop)."""
        cdef sockaddr_storage upstream
        cdef socklen_t upstream_len = 0
        cdef Route *r
        try:
            mode = {"fixed": EXIT_FIXED, "socks5": EXIT_SOCKS5,
                    "http-connect": EXIT_HTTP_CONNECT}[target]
        except KeyError:
            raise ValueError(f"target: expected 'fixed', 'socks5' or 'http-connect', got"
                             f" {target!r}")
        if mode == EXIT_FIXED:
            parse_sockaddr(host, port, &upstream, &upstream_len)
        r = self.new_route(connector_id, ROUTE_EXIT)
        r.exit_mode = mode
        r.tls_ctx = tls.ctx
        r.srv = tls.conf
        if mode == EXIT_FIXED:
            r.upstream = upstream
            r.upstream_len = upstream_len
        self.tls_contexts.append(tls)
        return self.w.nroutes - 1

    def allow_destination(self, int route, str network, int port=0):
        """Proxy exits: also allow destinations in `network` and `port` (0: any). With
        none added, any destination but loopback, link-local and unspecified addresses."""
        cdef Worker *w = self.live()
        cdef Route *r
        cdef Match *m
        net = ipaddress.ip_network(network, strict=False)
        if not 0 <= route < <int>w.nroutes or w.routes[route].kind != ROUTE_EXIT:
            raise ValueError(f"no exit route {route}")
        if not 0 <= port < 65536:
            raise ValueError(f"port out of range: {port}")
        r = &w.routes[route]
        m = <Match *>realloc(r.allow, (r.nallow + 1) * sizeof(Match))
        if m == NULL:
            raise MemoryError()
        r.allow = m
        m = &r.allow[r.nallow]
        memset(m, 0, sizeof(Match))
        m.family = AF_INET if net.version == 4 else AF_INET6
        m.prefix = net.prefixlen
        m.port = port
        raw = net.network_address.packed
        memcpy(m.addr, <char *>raw, len(raw))
        r.nallow += 1

    def add_passthrough(self, int connector_id):
        """A route that relays plain TCP to each connection's original destination."""
        self.new_route(connector_id, ROUTE_PASSTHROUGH)
        return self.w.nroutes - 1

    def add_reject(self, int connector_id):
        """A route that resets each connection and records why (cause no_route)."""
        self.new_route(connector_id, ROUTE_REJECT)
        return self.w.nroutes - 1

    cdef Route *new_route(self, int connector_id, uint8_t kind) except NULL:
        cdef Worker *w = self.live()
        cdef Route *r
        if w.nroutes == 0xffff:
            raise ValueError("too many routes")
        if w.nroutes == w.routes_cap:
            r = <Route *>realloc(w.routes, (w.routes_cap * 2 + 4) * sizeof(Route))
            if r == NULL:
                raise MemoryError()
            w.routes = r
            w.routes_cap = w.routes_cap * 2 + 4
        r = &w.routes[w.nroutes]
        memset(r, 0, sizeof(Route))
        r.connector_id = connector_id
        r.kind = kind
        w.nroutes += 1
        return r

    def add_listener(self, int listen_fd, int route):
        """Accept on listen_fd (the loop owns it from now on); connections take `route`,
        or, with route -1 (gateway), the route their original destination matches."""
        cdef Worker *w = self.live()
        cdef Listener *lsn
        cdef epoll_event ev
        if route != ROUTE_GATEWAY and not 0 <= route < <int>w.nroutes:
            raise ValueError(f"no route {route}")
        if route == ROUTE_GATEWAY and w.gateway_default < 0:
            raise ValueError("set_gateway() first")
        if w.nlisteners == w.listeners_cap:
            lsn = <Listener *>realloc(w.listeners,
                                      (w.listeners_cap * 2 + 4) * sizeof(Listener))
            if lsn == NULL:
                raise MemoryError()
            w.listeners = lsn
            w.listeners_cap = w.listeners_cap * 2 + 4
        lsn = &w.listeners[w.nlisteners]
        memset(lsn, 0, sizeof(Listener))
        lsn.fd = listen_fd
        lsn.route = route
        fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK)
        ev.events = EPOLLIN
        ev.data.u64 = (<uint64_t>w.nlisteners << 2) | TAG_LISTENER
        if epoll_ctl(w.epfd, EPOLL_CTL_ADD, listen_fd, &ev) < 0:
            raise_from_errno(errno, "epoll_ctl(listener)")
        lsn.registered = 1
        w.nlisteners += 1

    def set_gateway(self, int default_route, int reject_route):
        """Gateway listeners: what an unmatched original destination gets, and what a
        connection that was not redirected gets (a reject route)."""
        cdef Worker *w = self.live()
        for route in (default_route, reject_route):
            if not 0 <= route < <int>w.nroutes:
                raise ValueError(f"no route {route}")
        if w.routes[reject_route].kind != ROUTE_REJECT:
            raise ValueError("reject_route must be a reject route")
        w.gateway_default = default_route
        w.gateway_reject = reject_route

    def add_match(self, int route, str network, int port=0):
        """Gateway: original destinations in `network` (an address or CIDR, IPv4 or IPv6)
        and `port` (0: any) take `route`. Matches are tried in the order they are added:
        add the most specific first."""
        cdef Worker *w = self.live()
        cdef Match *m
        net = ipaddress.ip_network(network, strict=False)
        if not 0 <= route < <int>w.nroutes:
            raise ValueError(f"no route {route}")
        if not 0 <= port < 65536:
            raise ValueError(f"port out of range: {port}")
        if w.nmatches == w.matches_cap:
            m = <Match *>realloc(w.matches, (w.matches_cap * 2 + 8) * sizeof(Match))
            if m == NULL:
                raise MemoryError()
            w.matches = m
            w.matches_cap = w.matches_cap * 2 + 8
        m = &w.matches[w.nmatches]
        memset(m, 0, sizeof(Match))
        m.family = AF_INET if net.version == 4 else AF_INET6
        m.prefix = net.prefixlen
        m.port = port
        m.route = route
        raw = net.network_address.packed
        memcpy(m.addr, <char *>raw, len(raw))
        w.nmatches += 1

    def run(self, long timeout_ms):
        """Serve until timeout_ms elapsed or a signal arrived (its Python handler has run
        when this returns; an exception it raised propagates)."""
        cdef Worker *w = self.live()
        cdef uint64_t deadline = clock_ms() + <uint64_t>max(timeout_ms, 0)
        cdef uint64_t now
        cdef int rc = 0
        with nogil:
            while True:
                now = clock_ms()
                rc = worker_turn(w, <int>(deadline - now if deadline > now else 0))
                if rc < 0 or w.now_ms >= deadline:
                    break
        if rc == -EINTR:
            PyErr_CheckSignals()
        elif rc < 0:
            raise_from_errno(-rc, "epoll_wait")

    def stop_accepting(self):
        """Stop accepting and close the loop's listener fds; relayed connections go on."""
        cdef Worker *w = self.live()
        cdef uint32_t k
        for k in range(w.nlisteners):
            if w.listeners[k].fd >= 0:
                close(w.listeners[k].fd)
                w.listeners[k].fd = -1
                w.listeners[k].registered = 0

    @property
    def active(self):
        """Connections open now."""
        return self.live().active

    def counters(self):
        """Snapshot of the worker's counters, all connectors together (names in
        docs/ERRORS.md)."""
        cdef Worker *w = self.live()
        cdef dict snapshot = {}
        for per_connector in self.connector_counters().values():
            for name, value in per_connector.items():
                snapshot[name] = snapshot.get(name, 0) + value
        if not snapshot:
            snapshot = empty_counters()
        snapshot.update(<dict>w.wctr)
        snapshot["active"] = w.active
        snapshot["pipes_open"] = w.pipes_open
        return snapshot

    def connector_counters(self):
        """{connector_id: counters of its connections in this worker, with "active"}."""
        cdef Worker *w = self.live()
        cdef uint32_t k
        cdef dict result = {}
        for k in range(w.nroutes):
            snap = counters_dict(&w.routes[k].ctr)
            into = result.setdefault(w.routes[k].connector_id, {})
            for name, value in snap.items():
                into[name] = into.get(name, 0) + value
        return result

    def worker_counters(self):
        """What belongs to the worker rather than a connector (pipes, pauses, drops)."""
        cdef Worker *w = self.live()
        cdef dict snapshot = w.wctr
        snapshot["active"] = w.active
        snapshot["pipes_open"] = w.pipes_open
        return snapshot

    def pop_errors(self):
        """Error events since the last call: (connector_id, cause, errno, client,
        upstream, reason, original_destination); the last is "" outside gateway mode."""
        cdef Worker *w = self.live()
        cdef ErrorEvent *e
        cdef Route *r
        events = []
        while w.err_len:
            e = &w.errors[w.err_head]
            r = &w.routes[e.route]
            if e.reason[0]:
                reason = e.reason.decode(errors="replace")
            else:
                reason = strerror(e.err).decode() if e.err else ""
            if e.orig_dst.sin6_family:
                orig = format_sockaddr(<sockaddr_storage *>&e.orig_dst, sizeof(sockaddr_in6))
            else:
                orig = ""
            if r.kind == ROUTE_UPSTREAM or (r.kind == ROUTE_EXIT
                                            and r.exit_mode == EXIT_FIXED):
                upstream = format_sockaddr(&r.upstream, r.upstream_len)
            else:
                upstream = orig or "-"
            events.append((e.connector_id, CAUSE_NAMES[e.cause], e.err,
                           format_sockaddr(&e.client, e.client_len), upstream, reason, orig))
            w.err_head = (w.err_head + 1) % ERR_RING
            w.err_len -= 1
        return events

    def close(self):
        """Abort every connection and release every fd. Idempotent. Joins the resolver's
        threads, so a lookup in flight (getaddrinfo cannot be cancelled) can hold it up to
        the resolver's own timeout; other Python threads run meanwhile."""
        cdef Worker *w = self.w
        self.w = NULL
        if w != NULL:
            with nogil:
                worker_free(w)


cdef dict counters_dict(Counters *ctr):
    # Flat names: the per-cause array becomes errors_<cause>, plus "active".
    cdef dict snap = ctr[0]
    by_cause = snap.pop("by_cause")
    for name, n in zip(CAUSE_NAMES, by_cause):
        snap["errors_" + name] = n
    snap["active"] = ctr.accepted - ctr.closed
    return snap


cdef dict empty_counters():
    cdef Counters zero
    memset(&zero, 0, sizeof(zero))
    return counters_dict(&zero)


cdef void worker_free(Worker *w) noexcept nogil:
    cdef uint32_t k
    if w.conns != NULL:
        for k in range(w.max_conns):
            if w.conns[k].state != CONN_FREE and w.conns[k].state != CONN_CLOSED:
                conn_close(w, k, True)
        free(w.conns)
    for k in range(w.nlisteners):
        if w.listeners[k].fd >= 0:
            close(w.listeners[k].fd)
    resolver_free(w)
    for k in range(w.nroutes):
        free(w.routes[k].allow)
    for k in range(w.pipe_pool_len):
        close(w.pipe_pool[2 * k])
        close(w.pipe_pool[2 * k + 1])
    for k in range(w.buf_pool_len):
        free(w.buf_pool[k])
    if w.epfd >= 0:
        close(w.epfd)
    if w.reserve_fd >= 0:
        close(w.reserve_fd)
    free(w.routes)
    free(w.listeners)
    free(w.matches)
    free(w.scratch)
    free(w.buf_pool)
    free(w.pipe_pool)
    free(w.wheel)
    free(w.errors)
    free(w)
