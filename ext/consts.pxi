# Constants of the data path, with their units.

cdef enum:
    SCRATCH_SIZE = 65536          # bytes: one recv in the copy pump; also an owned buffer
    BUF_POOL_MAX = 64             # owned buffers kept for reuse per worker
    PUMP_BUDGET = 262144          # bytes one direction moves before yielding to others
    CONN_BUDGET = 1048576         # bytes one connection moves per turn of the loop
    MAX_EVENTS = 256              # epoll events per epoll_wait
    ACCEPT_BUDGET = 64            # accepts per listener wake-up
    MIN_SPLICE = 4096             # bytes: a splice fill below this is "small" (HAProxy)
    PROMOTE_AFTER = 3             # full scratch reads in a row that promote to splice
    DEMOTE_AFTER = 2              # small splice fills in a row that demote to copy
    TICK_MS = 50                  # timer wheel granularity
    WHEEL_SLOTS = 4096            # power of two; one turn of the wheel = 204.8 s
    EMFILE_PAUSE_MS = 100         # how long a listener rests when fds run out
    ERR_RING = 256                # error events kept between two pop_errors()
    PROXY_REQ_MAX = 4096          # bytes: a SOCKS5 or CONNECT request longer is refused
    PROXY_MAX_DST = 8             # addresses of a resolved name tried in turn
    RESOLVER_THREADS = 4          # getaddrinfo threads per worker, started on first use
    LINGER_MS = 2000              # how long a refused client may still send before a RST

cdef enum:
    NIL = -1                      # end of an intrusive list of slot indices

# Conn.state
cdef enum:
    CONN_FREE = 0
    CONN_CONNECTING
    CONN_HANDSHAKING              # TCP is up, the TLS handshake (either side) is not done
    CONN_REQUEST                  # tunnel exit: reading the entry's SOCKS5 / CONNECT request
    CONN_RESOLVING                # tunnel exit: the destination name is being resolved
    CONN_RELAYING
    CONN_LINGERING                # refused: FIN sent, the client's input read and dropped
    CONN_CLOSED                   # closed in this turn; its slot is freed at the end of it

# Sides of a connection; Dir d moves bytes from side d to side 1 - d.
cdef enum:
    SIDE_CLIENT = 0
    SIDE_UPSTREAM = 1

# Conn.ready bits, set by edge-triggered events, cleared by EAGAIN.
cdef enum:
    READY_READ = 1
    READY_WRITE = 2

# epoll_event.data.u64 = index << 2 | tag
cdef enum:
    TAG_CLIENT = SIDE_CLIENT
    TAG_UPSTREAM = SIDE_UPSTREAM
    TAG_LISTENER = 2
    TAG_RESOLVER = 3              # the resolver's eventfd: lookups have finished

# Loop splice mode
cdef enum:
    SPLICE_OFF = 0
    SPLICE_AUTO
    SPLICE_ALWAYS

cdef enum:
    # Sessions kept per context (per worker). Each connection brings the server's tickets
    # (2 by default); with fewer than the handshakes in flight, the rest go full (the
    # peer benchmark saw 99.9% resumed at 8 in flight, 60% at 32, with 8 here).
    SESSION_CACHE = 64
    MAX_PINS = 16
    REASON_LEN = 200              # bytes of an error event's human reason

# TLSConf.ktls_mode
cdef enum:
    KTLS_OFF = 0
    KTLS_AUTO
    KTLS_REQUIRE


# Route.kind: where a connection goes.
cdef enum:
    ROUTE_UPSTREAM = 0            # the connector's upstream (plain or TLS)
    ROUTE_PASSTHROUGH             # plain TCP to the device's original destination
    ROUTE_REJECT                  # RST, and an error event saying why
    ROUTE_EXIT                    # tunnel exit: TLS from entry nodes, then plain TCP onward

# Route.exit_mode: where a tunnel exit's connections go.
cdef enum:
    EXIT_FIXED = 0                # the route's upstream address
    EXIT_SOCKS5                   # the entry names it: SOCKS5 CONNECT (RFC 1928)
    EXIT_HTTP_CONNECT             # the entry names it: HTTP CONNECT (RFC 9110 §9.3.6)

cdef enum:
    ROUTE_GATEWAY = -1            # Listener.route: decided per connection (gateway.pxi)

# Error causes; names in CAUSE_NAMES (errors.pxi) and docs/ERRORS.md.
cdef enum:
    CAUSE_CONNECT_REFUSED = 0
    CAUSE_CONNECT_TIMEOUT
    CAUSE_CONNECT_FAILED
    CAUSE_UPSTREAM_SOCKET
    CAUSE_HANDSHAKE_TIMEOUT
    CAUSE_TLS_UNKNOWN_CA
    CAUSE_TLS_HOSTNAME_MISMATCH
    CAUSE_TLS_CERT_EXPIRED
    CAUSE_TLS_VERIFY_FAILED
    CAUSE_TLS_PIN_MISMATCH
    CAUSE_TLS_ALERT
    CAUSE_TLS_HANDSHAKE_FAILED
    CAUSE_TLS_TRUNCATED
    CAUSE_TLS_ERROR
    CAUSE_NO_ROUTE
    CAUSE_PROXY_REQUEST
    CAUSE_PROXY_DENIED
    CAUSE_RESOLVE_FAILED
    CAUSE_COUNT
