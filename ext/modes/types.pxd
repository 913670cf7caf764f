# Types of the modes: the match tables (gateway routes, exit destinations), a proxy exit's
# request state, the resolver's jobs. Declarations only.

cdef struct ResolveJob                # below; a Proxy points to its job

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
