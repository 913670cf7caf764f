# The C state of a worker: one Worker, a slab of Conn, a few Routes. No Python objects.

cdef struct TLSConf:
    # Per-context settings the C side needs for each connection, kept in SSL_CTX app data.
    char server_name[256]
    uint8_t send_sni              # server_name is a DNS name
    uint8_t check_host            # verify the certificate against server_name (DNS)
    uint8_t check_ip              # ... against server_name (an IP literal)
    uint8_t ktls_mode
    uint8_t verify_chain          # with pins: the chain must verify too (verify = true)
    uint32_t npins
    unsigned char pins[MAX_PINS][32]
    SSL_SESSION *sessions[SESSION_CACHE]
    uint32_t nsessions


cdef struct ServerConf:
    # A tunnel exit's SSL_CTX app data: who may connect (the verify callback reads it).
    unsigned char (*pins)[32]     # allowed client keys: SHA-256 of the DER SPKI
    uint32_t npins
    uint8_t has_ca                # a client certificate that chains to the CA is allowed too
    uint8_t ktls_mode


cdef struct Proxy:
    # A tunnel exit's connection while the entry names its destination: the request read
    # so far, then the addresses to try. Freed once relaying starts.
    uint8_t greeted               # SOCKS5: the method selection was sent
    uint8_t ndst                  # candidate addresses in dst
    uint8_t next_dst              # the candidate being connected
    uint16_t port
    uint16_t reply_code           # the refusal the parser chose (0: from the error cause)
    uint32_t req_len
    void *job                     # the resolver's job while CONN_RESOLVING (resolver.pxi)
    char name[256]                # the host the entry asked for, as text
    sockaddr_in6 dst[PROXY_MAX_DST]   # AF_INET ones are sockaddr_in in the same space
    char req[PROXY_REQ_MAX]


cdef struct Dir:
    # One direction of a connection, src side d -> dst side 1 - d. At most one of `buf`
    # (bytes recv'd but not yet sent) and the pipe holds bytes: that is the backpressure.
    char *buf
    uint32_t buf_off
    uint32_t buf_len
    int pipe_r                    # -1: copy mode
    int pipe_w
    uint32_t pipe_bytes           # our own count: splice(2) has no other way to tell
    uint8_t full_reads            # consecutive reads that filled the scratch buffer
    uint8_t small_fills           # consecutive splice fills below MIN_SPLICE
    uint8_t eof                   # src said EOF
    uint8_t shut                  # EOF forwarded: dst shut for writing
    uint8_t no_pipe               # the pool was empty when this direction wanted a pipe

cdef struct Conn:
    int fd[2]
    uint8_t ready[2]
    uint8_t tls_want[2]           # per direction: the readiness its SSL_* call waits for
    uint8_t state
    uint8_t queued                # on the run queue
    # The side c.ssl speaks on: SIDE_UPSTREAM, or a tunnel exit's SIDE_CLIENT (the entry).
    uint8_t tls_side
    uint16_t route
    sockaddr_in6 orig_dst         # gateway mode: where the device meant to go (or zeros)
    # The peer's address from accept (a sockaddr_in for IPv4): error events name it even
    # after the peer is gone.
    sockaddr_in6 client
    SSL *ssl                      # NULL for a plain upstream
    Proxy *px                     # a proxy exit's request state, else NULL
    uint8_t tls_dead              # OpenSSL reported a fatal error: no close_notify
    uint8_t ktls                  # the kernel encrypts and decrypts both directions
    Dir dir[2]
    uint64_t deadline_ms          # connect deadline, or when to look at idleness again
    uint64_t last_active_ms
    int32_t next                  # free list / run queue / dead list link
    int32_t timer_next
    int32_t timer_prev
    int32_t timer_slot            # NIL when not on the wheel

cdef struct Counters:
    uint64_t accepted
    uint64_t closed
    uint64_t connect_refused
    uint64_t connect_timeout
    uint64_t connect_failed
    uint64_t idle_timeout
    uint64_t resets
    uint64_t bytes_in             # client -> upstream, delivered
    uint64_t bytes_out            # upstream -> client, delivered
    uint64_t bytes_copied
    uint64_t bytes_spliced
    uint64_t splice_promoted
    uint64_t splice_demoted
    uint64_t socket_errors
    uint64_t handshakes
    uint64_t handshakes_resumed
    uint64_t handshake_timeout
    uint64_t tls_failed
    uint64_t tls_truncated
    uint64_t tls_errors
    uint64_t ktls_conns
    uint64_t ktls_declined
    uint64_t ktls_control_records
    uint64_t by_cause[CAUSE_COUNT]  # every error event, counted even when the ring is full


cdef struct Match:
    # Gateway mode: original destinations in (addr/prefix, port) go to `route`; the table
    # is scanned in order, which the caller makes most specific first.
    uint8_t family                # AF_INET or AF_INET6
    uint8_t prefix                # bits of addr that must match
    uint16_t port                 # 0: any port
    uint8_t addr[16]
    uint16_t route

cdef struct Route:
    # Where a connection goes (a connector's upstream, passthrough or reject), and the
    # counters of the connections that went there.
    Counters ctr
    uint8_t kind                  # ROUTE_UPSTREAM, _PASSTHROUGH, _REJECT, _EXIT
    uint8_t exit_mode             # ROUTE_EXIT: EXIT_FIXED, EXIT_SOCKS5, EXIT_HTTP_CONNECT
    SSL_CTX *tls_ctx              # NULL: plain upstream; an exit's server context
    TLSConf *tls                  # client side (ROUTE_UPSTREAM)
    ServerConf *srv               # server side (ROUTE_EXIT)
    Match *allow                  # proxy exits: allowed destinations (route field unused)
    uint32_t nallow               # 0: any but loopback, link-local, unspecified
    uint32_t connector_id
    socklen_t upstream_len
    sockaddr_storage upstream


cdef struct Listener:
    int fd
    int32_t route                 # a route index, or ROUTE_GATEWAY
    uint8_t paused_emfile
    uint8_t registered            # EPOLLIN armed (not paused)
    uint64_t resume_ms


cdef struct WorkerCounters:
    # What belongs to the worker, not to one connector.
    uint64_t pipes_exhausted
    uint64_t accept_paused_emfile
    uint64_t accept_paused_limit
    uint64_t events_dropped


cdef struct ErrorEvent:
    uint32_t connector_id
    uint16_t route
    sockaddr_in6 orig_dst
    uint8_t cause
    int err
    char reason[REASON_LEN]
    socklen_t client_len
    sockaddr_storage client

cdef struct Worker:
    int epfd
    uint64_t now_ms
    int splice_mode
    uint64_t connect_timeout_ms
    uint64_t handshake_timeout_ms
    uint64_t idle_timeout_ms
    Conn *conns
    uint32_t max_conns
    uint32_t active
    int32_t free_head
    int32_t run_head              # connections with work left over from the last turn
    int32_t dead_head             # closed this turn; freed after the event batch
    uint8_t limit_paused
    # Spent when fds run out, so that an accepted device still gets its upstream socket.
    int reserve_fd
    Route *routes
    uint32_t nroutes
    uint32_t routes_cap
    Listener *listeners
    uint32_t nlisteners
    uint32_t listeners_cap
    Match *matches
    uint32_t nmatches
    uint32_t matches_cap
    int32_t gateway_default       # route for an original destination nothing matches
    int32_t gateway_reject        # route for a connection that was not intercepted
    char *scratch
    char **buf_pool
    uint32_t buf_pool_len
    int *pipe_pool                # pairs (r, w)
    uint32_t pipe_pool_len
    uint32_t pipes_open
    uint32_t max_pipes
    int pipe_size
    int32_t *wheel
    uint64_t wheel_tick           # next tick to expire
    WorkerCounters wctr
    ErrorEvent *errors
    uint32_t err_head
    uint32_t err_len
    void *resolver                # Resolver (resolver.pxi), made on the first name lookup
    # A verify callback leaves the refused peer key here for the error event (it runs
    # inside SSL_do_handshake, on this worker's thread).
    uint8_t refused_pin_set
    unsigned char refused_pin[32]


cdef inline Counters *conn_ctr(Worker *w, Conn *c) noexcept nogil:
    return &w.routes[c.route].ctr
