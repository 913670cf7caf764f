# Types of the modes: the match tables (gateway routes, exit destinations), a proxy exit's
# request state, the resolver's jobs. Declarations only.

cdef struct ResolveJob                # below; a Proxy points to its job
cdef struct Http                      # below; a Conn points to its request tracker

cdef enum:
    PROXY_REQ_MAX = 4096          # bytes: a SOCKS5 or CONNECT request longer is refused
    PROXY_MAX_DST = 8             # addresses of a resolved name tried in turn
    RESOLVER_THREADS = 4          # getaddrinfo threads per worker, started on first use

# Route.exit_mode: where a tunnel exit's connections go.
cdef enum:
    EXIT_FIXED = 0                # the route's upstream address
    EXIT_SOCKS5                   # the entry names it: SOCKS5 CONNECT (RFC 1928)
    EXIT_HTTP_CONNECT             # the entry names it: HTTP CONNECT (RFC 9110 §9.3.6)

# Why a proxy exit's policy refuses a destination address (modes/match.pxi); 0: it allows it.
cdef enum:
    DEST_ALLOWED = 0
    DEST_NOT_LISTED               # no entry of allow_destinations covers it
    DEST_SPECIAL                  # loopback, link-local or unspecified
    DEST_LOCAL                    # an address of the exit's own host (the kernel says so)
    DEST_UNKNOWN                  # the kernel could not be asked: refused all the same

cdef enum:
    SOCKS_GENERAL_FAILURE = 1     # RFC 1928 §6 reply codes
    SOCKS_NOT_ALLOWED = 2
    SOCKS_NET_UNREACHABLE = 3
    SOCKS_HOST_UNREACHABLE = 4
    SOCKS_REFUSED = 5
    SOCKS_TTL_EXPIRED = 6
    SOCKS_COMMAND_UNSUPPORTED = 7
    SOCKS_ATYP_UNSUPPORTED = 8
    SOCKS_NO_METHOD = 255         # the method selection reply "no acceptable methods"


cdef struct Match:
    # One entry of a match table: addresses in (addr/prefix, port). The gateway's table
    # maps original destinations to `route`, scanned in order (the caller puts the most
    # specific first); an exit's allow table lists its allowed destinations (route unused).
    uint8_t family                # AF_INET or AF_INET6
    uint8_t prefix                # bits of addr that must match
    uint16_t port                 # 0: any port
    uint8_t addr[16]
    uint16_t route


cdef struct Proxy:
    # A tunnel exit's connection while the entry names its destination: the request read
    # so far, then the addresses to try. Freed once relaying starts.
    uint8_t greeted               # SOCKS5: the method selection was sent
    uint8_t ndst                  # candidate addresses in dst
    uint8_t next_dst              # the candidate being connected
    uint16_t port
    uint16_t reply_code           # the refusal the parser chose (0: from the error cause)
    uint32_t req_len
    ResolveJob *job               # the resolver's job while CONN_RESOLVING
    char name[256]                # the host the entry asked for, as text
    sockaddr_in6 dst[PROXY_MAX_DST]   # AF_INET ones are sockaddr_in in the same space
    char req[PROXY_REQ_MAX]


cdef struct ResolveJob:
    # One getaddrinfo for one connection (modes/resolver.pxi says who owns it when).
    ResolveJob *next
    int32_t conn                  # the connection waiting for it
    uint8_t cancelled
    uint8_t n                     # addresses found
    uint16_t port
    int status                    # getaddrinfo's answer (0: found)
    int err                       # errno, when status is EAI_SYSTEM
    sockaddr_in6 addrs[PROXY_MAX_DST]
    char name[256]


cdef struct Resolver:
    pthread_mutex_t lock
    pthread_cond_t wake
    ResolveJob *todo_head
    ResolveJob *todo_tail
    ResolveJob *done
    int efd
    uint8_t stop
    uint32_t nthreads
    pthread_t threads[RESOLVER_THREADS]


# -- http_host = "rewrite" (modes/http.pxi) -------------------------------------------------

cdef enum:
    HTTP_HEAD_MAX = 16384         # bytes: a request head longer is refused (400)
    HTTP_LINE_MAX = 4096          # bytes: a chunk-size or trailer line longer is refused

# Http.mode: what the next bytes from the device are.
cdef enum:
    HTTP_HEAD = 0                 # a request head (request line, fields, empty line)
    HTTP_BODY                     # `left` bytes of a Content-Length body
    HTTP_CHUNK_SIZE               # a chunk-size line of a chunked body
    HTTP_CHUNK_DATA               # `left` bytes of chunk data
    HTTP_CHUNK_END                # the CRLF after chunk data
    HTTP_TRAILERS                 # trailer lines after the last chunk, up to an empty one
    HTTP_TUNNEL                   # after Upgrade or CONNECT: everything as it comes


cdef struct Http:
    # One device's request stream. `in` is a pooled buffer of SCRATCH_SIZE held only while
    # it has bytes not looked at yet: a head (or chunk line) being parsed, or input behind
    # bytes the server has not taken. `why` is the refusal, for the event.
    uint8_t mode
    uint64_t left
    char *inbuf
    uint32_t in_off
    uint32_t in_len
    uint32_t scan                 # bytes of the head already searched for its end
    uint8_t line_ok               # ... and its request line was judged good
    const char *why


cdef struct HttpHead:
    # What a complete request head says (modes/http.pxi, head_parse).
    uint8_t version               # 0: HTTP/1.0, 1: HTTP/1.1
    uint8_t chunked
    uint8_t tunnel                # Upgrade or CONNECT: the rest is relayed as it comes
    uint8_t has_length
    uint64_t length
    uint32_t line_end             # the request line's end, CRLF included
    uint32_t host_start           # the Host line, CRLF included (host_end 0: none)
    uint32_t host_end


# -- PROXY protocol (modes/proxyhdr.pxi) ----------------------------------------------------

cdef enum:
    PROXYHDR_MAX = 1024           # bytes: a v1 line is <= 107; a v2 header with TLVs <= this
    PROXYHDR_OUT = 108            # bytes: the longest header relaycore sends (v1, TCP6)


cdef struct ProxyAddrs:
    # What a PROXY header says: the client's address and the one it connected to
    # (family 0: UNKNOWN or LOCAL, the connection's own addresses stand).
    sockaddr_in6 src
    sockaddr_in6 dst
