# Functions of the modes (modes/*.pxi) that other files call, one contract each.

# -- modes/match.pxi ------------------------------------------------------------------------
# The first entry of table[0:n] that sa (AF_INET or AF_INET6) falls in, or NULL.
cdef const Match *match_find(const Match *table, uint32_t n,
                             const sockaddr_in6 *sa) noexcept nogil
# Appends (network, port) to *table (reallocated; the caller frees it); the new entry.
cdef Match *match_add(Match **table, uint32_t *n, str network, int port) except NULL
# An IPv4-mapped IPv6 address becomes the IPv4 one, in place.
cdef void sockaddr_unmap(sockaddr_in6 *sa) noexcept nogil
# Whether proxy exit r may connect to sa (unmapped first): DEST_ALLOWED, or why not.
cdef int destination_refusal(Worker *w, const Route *r, const sockaddr_in6 *sa) noexcept nogil

# -- modes/local.pxi ------------------------------------------------------------------------
# 1: the kernel delivers sa to this host (RTN_LOCAL), 0: it does not, <0: -errno, not asked.
cdef int local_address(Worker *w, const sockaddr_in6 *sa) noexcept nogil

# -- modes/gateway.pxi ----------------------------------------------------------------------
# The route of a gateway connection; its original destination into dst (zeros: not redirected).
cdef uint16_t gateway_route(Worker *w, int fd, sockaddr_in6 *dst) noexcept nogil

# -- modes/proxy.pxi ------------------------------------------------------------------------
# The parsers return >0 the length of a complete message, 0 read more, -code refused.
# SOCKS5 method selection (RFC 1928 §3): it must offer "no authentication".
cdef Py_ssize_t socks5_greeting(const uint8_t *p, size_t n) noexcept nogil
# SOCKS5 CONNECT request (RFC 1928 §4): its destination into px.
cdef Py_ssize_t socks5_request(const uint8_t *p, size_t n, Proxy *px) noexcept nogil
# HTTP CONNECT request line and headers (RFC 9110 §9.3.6): its destination into px.
cdef Py_ssize_t http_connect_parse(const uint8_t *p, size_t n, Proxy *px) noexcept nogil
# A SOCKS5 reply into out[22] (BND: fd's local address, or zeros for fd -1); its length.
cdef size_t socks5_reply(uint8_t *out, uint8_t code, int fd) noexcept nogil
# An HTTP/1.1 status reply into out[size]; its length.
cdef size_t http_reply(char *out, size_t size, int status) noexcept nogil
# SSL_write of a small reply before relaying; False: the TLS is broken.
cdef bint proxy_send(Conn *c, const void *data, int n) noexcept nogil
# Drops the request's first n bytes from px.req.
cdef void proxy_consume(Proxy *px, size_t n) noexcept nogil
# Keeps the allowed addresses of px.dst and dials the first; or proxy_denied. [may close]
cdef void proxy_try(Worker *w, int32_t i) noexcept nogil
# Answers a failed request in the entry's protocol (best effort); closes nothing.
cdef void proxy_refuse(Worker *w, Conn *c, uint8_t cause, int err) noexcept nogil
# Frees c.px (cancelling its lookup); c.px is NULL afterwards.
cdef void proxy_free(Worker *w, Conn *c) noexcept nogil

# -- modes/resolver.pxi ---------------------------------------------------------------------
# Resolves conns[i].px.name off the loop (the job is the resolver's till drained); 0, -errno.
cdef int resolver_submit(Worker *w, int32_t i) noexcept nogil
# Forgets px's job: the resolver frees it when it comes back.
cdef void resolver_cancel(Worker *w, Proxy *px) noexcept nogil
# The resolver's eventfd fired: each finished job to its connection. [may close]
cdef void resolver_drain(Worker *w) noexcept nogil
# Stops and joins the threads, frees every job and the resolver (if there is one).
cdef void resolver_free(Worker *w) noexcept nogil

# -- modes/exit.pxi -------------------------------------------------------------------------
# The entry is admitted: dial a fixed target, or read the request. [may close]
cdef void exit_handshake_done(Worker *w, int32_t i) noexcept nogil
# Reads the entry's request, and acts on it once complete. [may close]
cdef void exit_read_request(Worker *w, int32_t i) noexcept nogil
# The lookup of px.name ended (job: the caller frees it): dial, or fail. [may close]
cdef void exit_resolved(Worker *w, int32_t i, ResolveJob *job) noexcept nogil
# TCP to the destination is up: queue a proxy's reply and early bytes, relay. [may close]
cdef void exit_connected(Worker *w, int32_t i) noexcept nogil
# The request or the lookup took too long. [may close]
cdef void exit_expire(Worker *w, int32_t i) noexcept nogil

# -- modes/proxyhdr.pxi: the PROXY protocol --------------------------------------------------
# A v1 or v2 header at p[0:n]: >0 its length (out filled), 0 incomplete, <0 refused (why).
cdef Py_ssize_t proxyhdr_parse(const uint8_t *p, size_t n, ProxyAddrs *out,
                               const char **why) noexcept nogil
# The header (version 1 or 2) for src -> dst into out[PROXYHDR_OUT]; its length.
cdef size_t proxyhdr_build(uint8_t *out, int version, const sockaddr_in6 *src_in,
                           const sockaddr_in6 *dst_in) noexcept nogil
# c's route's header on its new upstream socket; False: it did not leave whole.
cdef bint proxyhdr_send(Worker *w, Conn *c) noexcept nogil
# Reads the balancer's header once complete, then starts the route; or refuses. [may close]
cdef void proxyhdr_read(Worker *w, int32_t i) noexcept nogil

# -- modes/http.pxi, modes/http_pump.pxi: http_host = "rewrite" -----------------------------
# The next piece of a device's bytes: >0 consumed (forwarded, or replaced by out[0:*out_len]),
# 0 more needed, -1 refused (why).
cdef Py_ssize_t http_step(Http *st, const uint8_t *p, size_t n, const char *host_line,
                          size_t host_len, char *out, size_t *out_len,
                          const char **why) noexcept nogil
# c tracks its requests from now on (c.http); False: no memory.
cdef bint http_open(Worker *w, Conn *c) noexcept nogil
# Frees c.http and its input buffer; c.http is NULL afterwards.
cdef void http_free(Worker *w, Conn *c) noexcept nogil
# Device -> server with each Host rewritten; as pump_tls_write, or PUMP_HTTP_REFUSED.
cdef int pump_http_write(Worker *w, Conn *c, Py_ssize_t *moved) noexcept nogil
# The request in c.http.why was refused: event, 400, close_notify, linger. [may close]
cdef void http_refuse(Worker *w, int32_t i) noexcept nogil
