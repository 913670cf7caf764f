# The Python-facing Loop: routes, listeners and the gateway table in, counters and error
# events out. It owns one Worker (loop/worker.pxi) and does nothing per connection:
# Python runs only in these methods, between turns of the loop.


cdef class Loop:
    """One worker's epoll loop: accepts on its listeners and relays bytes in C.

    A route is where connections go: an upstream, passthrough, reject or a tunnel exit.
    Route ids are dense, 0.. in the order the add_* methods make them; they index
    route_counters() and name the route of each ErrorEvent.

    splice: "auto" promotes streaming directions to splice(2), "off" never splices,
    "always" splices every direction from its first byte (pool permitting).

    io: "epoll" (the default), or "io_uring", an experiment: relaying connections (plain
    copy with splice "off", TLS in user space) move their bytes by multishot receives into
    provided buffers and batched sends on an io_uring; accepting, connecting, handshakes
    and the other paths stay on epoll. OSError if the kernel has no usable io_uring. Its
    receive buffers (at most uring_buffers of 16 KiB) are shared by the worker's
    connections."""

    def __cinit__(self, *, int max_connections=10000, str splice="auto",
                  long connect_timeout_ms=10000, long idle_timeout_ms=900000,
                  long handshake_timeout_ms=10000, int max_pipes=-1, int pipe_size=262144,
                  str io="epoll", int uring_buffers=URING_BUFS):
        cdef int mode, rc
        if io not in ("epoll", "io_uring"):
            raise ValueError(f"io must be 'epoll' or 'io_uring', not {io!r}")
        if not 16 <= uring_buffers <= 32768 or uring_buffers & (uring_buffers - 1):
            raise ValueError(f"uring_buffers must be a power of two in 16..32768, not"
                             f" {uring_buffers}")
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
        self.w = worker_new(max_connections, mode, max_pipes, pipe_size)
        self.w.connect_timeout_ms = connect_timeout_ms
        self.w.handshake_timeout_ms = handshake_timeout_ms
        self.w.idle_timeout_ms = idle_timeout_ms
        if io == "io_uring":
            rc = uring_new(self.w, uring_buffers)
            if rc < 0:
                self.release()
                raise OSError(-rc, f"io_uring: {os.strerror(-rc)} (io = \"io_uring\" needs"
                              " Linux 5.19 or later with io_uring enabled)")

    @property
    def io(self):
        """"io_uring" if the relaying connections move their bytes on an io_uring."""
        return "io_uring" if self.live().uring != NULL else "epoll"

    def uring_stats(self):
        """io = "io_uring": connections adopted by the ring so far, its requests in flight,
        its receive buffers (given to the kernel so far, at most, free), and the receives
        that ended for want of them; None on epoll."""
        cdef Worker *w = self.live()
        if w.uring == NULL:
            return None
        return {"adopted": w.uring.adopted, "inflight": w.uring.inflight,
                "buffers": w.uring.nbufs_added, "buffers_max": w.uring.nbufs,
                "buffers_free": w.uring.bufs_free,
                "starved": w.uring.starved}

    def __dealloc__(self):
        self.release()

    cdef void release(self) noexcept:
        cdef Worker *w = self.w
        self.w = NULL
        if w != NULL:
            with nogil:
                worker_free(w)

    cdef Worker *live(self) except NULL:
        if self.w == NULL:
            raise ValueError("the loop is closed")
        return self.w

    cdef Route *route_at(self, int route) except NULL:
        cdef Worker *w = self.live()
        if not 0 <= route < <int>w.nroutes:
            raise ValueError(f"no route {route}")
        return &w.routes[route]

    cdef Route *new_route(self, uint8_t kind) except NULL:
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
        r.kind = kind
        w.nroutes += 1
        return r

    def add_upstream(self, str host, int port, TLSClientContext tls=None, *,
                     int proxy_protocol=0, bint accept_proxy=False, str http_host=None):
        """A route to host (an IPv4 or IPv6 literal):port, over TLS made with `tls` when
        given; returns its id. More addresses: set_upstream_addresses.

        proxy_protocol: 1 or 2 sends a PROXY header of that version first on each upstream
        connection. accept_proxy: each connection starts with a PROXY header from a
        balancer (add_listener's, not a gateway listener's). http_host: with `tls` (kTLS
        off), the Host every HTTP/1.x request gets, e.g. "api.example.com:8443"."""
        cdef Route *r
        if proxy_protocol not in (0, 1, 2):
            raise ValueError(f"proxy_protocol: expected 0, 1 or 2, got {proxy_protocol}")
        if http_host is not None and (tls is None or tls.conf.ktls_mode != KTLS_OFF):
            raise ValueError("http_host: needs a TLS context with ktls 'off'")
        route_addresses(self.new_route(ROUTE_UPSTREAM), [(host, port)])
        r = &self.w.routes[self.w.nroutes - 1]
        r.proxy_out = proxy_protocol
        r.accept_proxy = accept_proxy
        if http_host is not None:
            route_http_host(r, http_host)
        if tls is not None:
            r.tls_ctx = tls.ctx
            r.tls = tls.conf
            self.tls_contexts.append(tls)
            if tls.conf.ktls_mode != KTLS_OFF:
                worker_ktls_probe(self.w)
        return self.w.nroutes - 1

    def set_upstream_addresses(self, int route, addresses):
        """The upstream (or fixed exit target) of `route` is now these (IP literal, port)
        pairs, tried in this order (at most 8; the rest are ignored). Connections in
        flight keep theirs; new ones start with the address that last connected if it is
        still in the list, else with the first."""
        cdef Route *r = self.route_at(route)
        if r.naddrs == 0:
            raise ValueError(f"route {route} has no upstream addresses")
        route_addresses(r, list(addresses))

    def upstream_addresses(self, int route):
        """The addresses of `route` as "ip:port" texts, the one new connections start
        with first."""
        cdef Route *r = self.route_at(route)
        return [format_sockaddr(<const sockaddr_storage *>&r.addrs[(r.good_addr + k) % r.naddrs],
                                sizeof(sockaddr_in6)) for k in range(r.naddrs)]

    def add_passthrough(self):
        """A route that relays plain TCP to each connection's original destination
        (gateway listeners only); returns its id."""
        self.new_route(ROUTE_PASSTHROUGH)
        return self.w.nroutes - 1

    def add_reject(self):
        """A route that resets each connection and records why (cause no_route); returns
        its id."""
        self.new_route(ROUTE_REJECT)
        return self.w.nroutes - 1

    def add_exit(self, TLSServerContext tls not None, str target, str host="", int port=0,
                 *, bint accept_proxy=False):
        """A tunnel exit route; returns its id. Connections are TLS from entry nodes,
        authenticated by `tls`. target: "fixed" (relay plain TCP to host, an IP literal,
        :port), "socks5" or "http-connect" (the entry names the destination; domain names
        are resolved here, off the loop). accept_proxy: each connection starts with a PROXY
        header from a balancer."""
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
        r = self.new_route(ROUTE_EXIT)
        r.exit_mode = mode
        r.tls_ctx = tls.ctx
        r.srv = tls.conf
        r.accept_proxy = accept_proxy
        if tls.conf.ktls_mode != KTLS_OFF:
            worker_ktls_probe(self.w)
        if mode == EXIT_FIXED:
            route_addresses(r, [(host, port)])
        self.tls_contexts.append(tls)
        return self.w.nroutes - 1

    def allow_destination(self, int route, str network, int port=0):
        """Proxy exits: also allow destinations in `network` and `port` (0: any). With
        none added, any destination but loopback, link-local and unspecified addresses and
        the addresses of this host (the kernel's local routes)."""
        cdef Route *r = self.route_at(route)
        if r.kind != ROUTE_EXIT:
            raise ValueError(f"no exit route {route}")
        match_add(&r.allow, &r.nallow, network, port)

    def add_listener(self, int listen_fd, int route):
        """Accept on listen_fd (bound, listening; the loop owns it from now on);
        connections take `route`."""
        self.route_at(route)
        listener_add(self.w, listen_fd, <uint16_t>route, False)

    def add_gateway_listener(self, int listen_fd):
        """Accept on listen_fd (the loop owns it from now on); each connection takes the
        route its original destination matches (add_match, set_gateway first)."""
        cdef Worker *w = self.live()
        if not w.gateway_set:
            raise ValueError("set_gateway() first")
        listener_add(w, listen_fd, 0, True)

    def set_gateway(self, int default_route, int reject_route):
        """Gateway listeners: what an unmatched original destination gets, and what a
        connection that was not redirected gets (a reject route)."""
        cdef Worker *w = self.live()
        self.route_at(default_route)
        if self.route_at(reject_route).kind != ROUTE_REJECT:
            raise ValueError("reject_route must be a reject route")
        w.gateway_default = <uint16_t>default_route
        w.gateway_reject = <uint16_t>reject_route
        w.gateway_set = 1

    def add_match(self, int route, str network, int port=0):
        """Gateway: original destinations in `network` (an address or CIDR, IPv4 or IPv6)
        and `port` (0: any) take `route`. Matches are tried in the order they are added:
        add the most specific first."""
        cdef Worker *w = self.live()
        self.route_at(route)
        match_add(&w.matches, &w.nmatches, network, port).route = <uint16_t>route

    def run(self, long timeout_ms):
        """Serve until timeout_ms elapsed or a signal arrived (its Python handler has run
        when this returns; an exception it raised propagates)."""
        cdef Worker *w = self.live()
        cdef uint64_t deadline = clock_ms() + <uint64_t>max(timeout_ms, 0)
        cdef int rc
        with nogil:
            rc = worker_run(w, deadline)
        if rc == -EINTR:
            PyErr_CheckSignals()
        elif rc < 0:
            raise_from_errno(-rc, "epoll_wait" if w.uring == NULL else "io_uring_enter")

    def stop_accepting(self):
        """Stop accepting and close the loop's listener fds; relayed connections go on."""
        listeners_close(self.live())

    @property
    def active(self):
        """Connections open now."""
        return self.live().active

    @property
    def ktls_rekey(self):
        """Whether this kernel can rekey kernel TLS, so that TLS 1.3 is offloaded (Linux
        6.14): probed once, when the first route that may use kTLS was added; None until
        then."""
        cdef int8_t rekey = self.live().ktls_rekey
        return None if rekey < 0 else bool(rekey)

    def route_counters(self):
        """The counters of each route's connections in this worker, indexed by route id
        (names in docs/ERRORS.md), with "active"."""
        cdef Worker *w = self.live()
        return [route_counters_dict(&w.routes[k]) for k in range(w.nroutes)]

    def worker_counters(self):
        """What belongs to the worker rather than a route (pipes, pauses, drops), with
        "active" (connections open now) and "pipes_open"."""
        cdef Worker *w = self.live()
        cdef dict snapshot = w.wctr
        snapshot["active"] = w.active
        snapshot["pipes_open"] = w.pipes_open
        return snapshot

    def counters(self):
        """Every route's counters summed, then the worker's (for tests and logs)."""
        cdef Counters zero
        cdef dict snapshot
        memset(&zero, 0, sizeof(zero))
        snapshot = counters_dict(&zero)
        del snapshot["alpn"]
        for per_route in self.route_counters():
            for name, value in per_route.items():
                snapshot[name] = snapshot.get(name, 0) + value
        snapshot.update(self.worker_counters())
        return snapshot

    def route_certs(self):
        """Per route id, the certificate a connector's upstream presented in its latest
        handshakes, or None (no handshake yet, or not a TLS connector): {"pin": 32-byte
        SHA-256 of the DER SubjectPublicKeyInfo, "not_after": Unix time, "issuer" and
        "subject": RFC 2253 text, "seen": Unix time of the latest handshake,
        "key_changes": handshakes that presented another key than the one before,
        "previous_pin": the key before the latest change (b"" if none)}."""
        cdef Worker *w = self.live()
        return [cert_seen_dict(&w.routes[k].cert) for k in range(w.nroutes)]

    def pop_errors(self):
        """The ErrorEvents recorded since the last call, oldest first."""
        cdef Worker *w = self.live()
        cdef ErrorEntry *e
        events = []
        while w.err_len:
            e = &w.errors[w.err_head]
            events.append(event_from(&w.routes[e.route], e))
            w.err_head = (w.err_head + 1) % ERR_RING
            w.err_len -= 1
        return events

    def close(self):
        """Abort every connection and release every fd. Idempotent. Joins the resolver's
        threads, so a lookup in flight (getaddrinfo cannot be cancelled) can hold it up to
        the resolver's own timeout; other Python threads run meanwhile."""
        self.release()


cdef int route_addresses(Route *r, list addresses) except -1:
    # r's addresses := (IP literal, port) pairs, at most UPSTREAM_MAX_ADDRS; the one that
    # last connected stays the first tried if it is among them.
    cdef sockaddr_storage ss
    cdef socklen_t length = 0
    cdef sockaddr_in6 parsed[UPSTREAM_MAX_ADDRS]
    cdef sockaddr_in6 good
    cdef uint8_t n = 0, k
    if not addresses:
        raise ValueError("an upstream needs at least one address")
    for host, port in addresses[:UPSTREAM_MAX_ADDRS]:
        parse_sockaddr(host, port, &ss, &length)
        memset(&parsed[n], 0, sizeof(sockaddr_in6))
        memcpy(&parsed[n], &ss, length)
        n += 1
    good = r.addrs[r.good_addr % r.naddrs] if r.naddrs else parsed[0]
    memcpy(r.addrs, parsed, n * sizeof(sockaddr_in6))
    r.naddrs = n
    r.good_addr = 0
    for k in range(n):
        if memcmp(&parsed[k], &good, sizeof(sockaddr_in6)) == 0:
            r.good_addr = k
    return 0


cdef int route_http_host(Route *r, str value) except -1:
    # r's requests get "Host: value".
    cdef bytes line = f"Host: {value}\r\n".encode("ascii")
    if not 0 < len(value) <= 300 or not value.isprintable() or " " in value:
        raise ValueError(f"http_host: not a Host value: {value!r}")
    r.http_host = <char *>malloc(len(line))
    if r.http_host == NULL:
        raise MemoryError()
    memcpy(r.http_host, <char *>line, len(line))
    r.http_host_len = len(line)
    return 0


cdef dict route_counters_dict(const Route *r):
    # counters_dict, with the ALPN counts named by protocol: alpn:<protocol>.
    cdef dict snap = counters_dict(&r.ctr)
    alpn = snap.pop("alpn")
    for k, name in enumerate(route_alpn_names(r)):
        snap["alpn:" + name] = alpn[k]
    return snap
