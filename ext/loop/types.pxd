# Types of the loop: one Worker, a slab of Conn (two Dir each), its Routes and Listeners.
# No Python objects. Declarations only.

cdef enum:
    PUMP_BUDGET = 262144          # bytes one direction moves before yielding to others
    CONN_BUDGET = 1048576         # bytes one connection moves per turn of the loop
    MAX_EVENTS = 256              # epoll events per epoll_wait
    ACCEPT_BUDGET = 64            # accepts per listener wake-up
    MIN_SPLICE = 4096             # bytes: a splice fill below this is "small" (HAProxy)
    PROMOTE_AFTER = 3             # full scratch reads in a row that promote to splice
    DEMOTE_AFTER = 2              # small splice fills in a row that demote to copy
    EMFILE_PAUSE_MS = 100         # how long a listener rests when fds run out
    LINGER_MS = 2000              # how long a refused client may still send before a RST
    UPSTREAM_MAX_ADDRS = 8        # addresses of an upstream name, tried in turn

# Conn.state
cdef enum:
    CONN_FREE = 0
    CONN_CONNECTING
    CONN_HANDSHAKING              # TCP is up, the TLS handshake (either side) is not done
    CONN_REQUEST                  # tunnel exit: reading the entry's SOCKS5 / CONNECT request
    CONN_RESOLVING                # tunnel exit: the destination name is being resolved
    CONN_PROXY_HEADER             # accept_proxy: reading the load balancer's PROXY header
    CONN_RELAYING
    CONN_LINGERING                # refused: FIN sent, the client's input read and dropped
    CONN_CLOSED                   # closed in this turn; its slot is freed at the end of it

# Sides of a connection; Dir d moves bytes from side d to side 1 - d.
cdef enum:
    SIDE_CLIENT = 0
    SIDE_UPSTREAM = 1

# Conn.ready bits, set by edge-triggered events, cleared by EAGAIN, and READ also by a
# short read of a TCP socket (read_short, loop/loop.pxd). HUP: the side reported a FIN or
# an error; it stays set, and reads go on until they return 0 or fail.
cdef enum:
    READY_READ = 1
    READY_WRITE = 2
    READY_HUP = 4

# epoll_event.data.u64 = index << 2 | tag
cdef enum:
    TAG_CLIENT = SIDE_CLIENT
    TAG_UPSTREAM = SIDE_UPSTREAM
    TAG_LISTENER = 2
    TAG_RESOLVER = 3              # the resolver's eventfd: lookups have finished

# Worker.splice_mode
cdef enum:
    SPLICE_OFF = 0
    SPLICE_AUTO
    SPLICE_ALWAYS

# Route.kind: where a connection goes.
cdef enum:
    ROUTE_UPSTREAM = 0            # a fixed upstream (plain or TLS)
    ROUTE_PASSTHROUGH             # plain TCP to the device's original destination
    ROUTE_REJECT                  # RST, and an error event saying why
    ROUTE_EXIT                    # tunnel exit: TLS from entry nodes, then plain TCP onward

# What a pump call ended with (loop/pump.pxi, tls/stream.pxi). The bytes it moved are
# added to the caller's count (`moved`); the result says why it returned. Negative results
# are fatal for the connection.
cdef enum:
    PUMP_STOPPED = 0              # a side said EAGAIN, or the pump's budget is spent
    PUMP_EOF                      # src said EOF (Dir.eof set): forward it once flushed
    PUMP_PROMOTED                 # the direction took a pipe: the next call splices
    PUMP_DEMOTED                  # its pipe went back to the pool: the next call copies
    PUMP_RESUMED                  # kTLS: OpenSSL's turn is over (tls/ktls.pxi): go round
    # Fatal: the pool had no owned buffer for bytes dst refused (cause out_of_memory, not a
    # reset). Below every -errno (the kernel's are at most 4095).
    PUMP_NO_BUFFER = -4096
    # Fatal: http_host = "rewrite" refused the device's request (modes/http.pxi).
    PUMP_HTTP_REFUSED = -4097


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
    uint8_t dial_idx              # the route's address being dialled (loop/dial.pxi)
    uint8_t dial_left             # more of its addresses this connection may try
    uint8_t redialled             # the upstream socket is not the first one dialled
    Http *http                    # http_host = "rewrite": the request tracker, else NULL
    # kTLS: OpenSSL is reading a control record (a KeyUpdate, a ticket, an alert) and may
    # owe an answer: SSL_read serves the TLS side, nothing else writes to it (tls/ktls.pxi).
    uint8_t ktls_control
    # The kernel encrypts but OpenSSL still writes (receive not offloaded): SSL_write is
    # given only owned buffers, whose address holds until it takes them (tls/ktls.pxi).
    uint8_t ktls_tx_only
    # The TLS side's records, gathered while SSL_write runs over one chunk of plaintext and
    # sent at once (tls/gather.pxi): a pooled buffer only while it holds bytes, else NULL.
    char *out
    uint32_t out_off
    uint32_t out_len
    uint8_t gather                # the gather BIO is c.ssl's write BIO
    uint8_t gathering             # inside a batch: records stay in `out` until its end
    UConn *u                      # io = "io_uring" and adopted (uring/relay.pxi), else NULL
    Dir dir[2]
    uint64_t deadline_ms          # connect deadline, or when to look at idleness again
    uint64_t last_active_ms
    int32_t next                  # free list / run queue / dead list link
    int32_t timer_next
    int32_t timer_prev
    int32_t timer_slot            # NIL when not on the wheel
    sockaddr_in6 upstream         # the address last dialled (error events name it)


cdef struct Route:
    # Where a connection goes, and the counters of the connections that went there. Its
    # index in Worker.routes is the route id Python knows.
    Counters ctr
    uint8_t kind                  # ROUTE_UPSTREAM, _PASSTHROUGH, _REJECT, _EXIT
    uint8_t exit_mode             # ROUTE_EXIT: EXIT_FIXED, EXIT_SOCKS5, EXIT_HTTP_CONNECT
    SSL_CTX *tls_ctx              # NULL: plain upstream; an exit's server context
    TLSConf *tls                  # client side (ROUTE_UPSTREAM)
    ServerConf *srv               # server side (ROUTE_EXIT)
    Match *allow                  # proxy exits: allowed destinations (route field unused)
    uint32_t nallow               # 0: any but loopback, link-local, unspecified
    # The upstream (or a fixed exit's target): a name's addresses, replaced between turns
    # when the name resolves to others (Loop.set_upstream_addresses). A connection starts
    # at good_addr, the one that last connected, and moves on when a connect fails.
    sockaddr_in6 addrs[UPSTREAM_MAX_ADDRS]    # AF_INET ones are sockaddr_in in the space
    uint8_t naddrs
    uint8_t good_addr
    uint8_t proxy_out             # PROXY header first on the upstream: 0, 1 (v1), 2 (v2)
    uint8_t accept_proxy          # a PROXY header comes first from the client (a balancer)
    char *http_host               # http_host = "rewrite": "Host: <value>\r\n", else NULL
    uint32_t http_host_len
    CertSeen cert                 # ROUTE_UPSTREAM over TLS: the server's certificate
    # The last pq_classical event of this route, and whether a post-quantum handshake
    # came since (tls/groups.pxi: one event per change, not per connection).
    uint64_t pq_event_ms
    uint8_t pq_classical


cdef struct Listener:
    int fd
    uint16_t route                # the route of its connections, unless gateway
    uint8_t gateway               # the route is decided per connection (modes/gateway.pxi)
    uint8_t paused_emfile
    uint8_t registered            # EPOLLIN armed (not paused)
    uint64_t resume_ms


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
    Match *matches                # the gateway's match table (modes/match.pxi)
    uint32_t nmatches
    uint8_t gateway_set           # set_gateway() was called: the two routes below exist
    uint16_t gateway_default      # route for an original destination nothing matches
    uint16_t gateway_reject       # route for a connection that was not intercepted
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
    ErrorEntry *errors
    uint32_t err_head
    uint32_t err_len
    Resolver *resolver            # made on the first name lookup (modes/resolver.pxi)
    # A verify callback leaves the refused peer key here for the error event (it runs
    # inside SSL_do_handshake, on this worker's thread).
    uint8_t refused_pin_set
    unsigned char refused_pin[32]
    # Proxy exits ask the kernel whether a destination is this host (modes/local.pxi):
    # an rtnetlink socket, made on the first question, and the last question's number.
    int rtnl_fd
    uint32_t rtnl_seq
    # pq = "require": the certificate callback refused a classical group (tls/groups.pxi).
    uint8_t refused_classical
    # kTLS for TLS 1.3: the kernel can rekey (KeyUpdate), probed once (tls/ktls.pxi).
    # -1: not probed yet; 0: no, TLS 1.3 stays in user space; 1: yes.
    int8_t ktls_rekey
    # io = "io_uring": the ring that moves the bytes of relaying connections (uring/), else
    # NULL and epoll does everything.
    Uring *uring
