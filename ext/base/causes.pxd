# Types of the failure causes and the counters: the CAUSE_* enum, what each route counts
# (one count per cause), what the worker counts, and an entry of the error-event ring.
# Declarations only; base/causes.pxi names the causes, counts them and records events.

# In the order of CAUSES (base/causes.pxi, which checks at import that there are
# CAUSE_COUNT names) and of docs/ERRORS.md. A cause's name is its enum name in lower case
# without CAUSE_ (tests/ext/test_causes.py holds the two to that).
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
    CAUSE_TLS_ALPN_REFUSED
    CAUSE_TLS_HANDSHAKE_FAILED
    CAUSE_TLS_TRUNCATED
    CAUSE_TLS_ERROR
    CAUSE_NO_ROUTE
    CAUSE_PROXY_REQUEST
    CAUSE_PROXY_DENIED
    CAUSE_RESOLVE_FAILED
    CAUSE_OUT_OF_MEMORY
    CAUSE_PROXY_HEADER
    CAUSE_HTTP_REQUEST
    CAUSE_TLS_PQ_REQUIRED
    CAUSE_PQ_CLASSICAL
    CAUSE_KTLS_REQUIRED
    CAUSE_COUNT


# The key-exchange groups a route counts its handshakes by (Counters.by_group, which Python
# sees as group_<name>), in the order of GROUPS (base/causes.pxi). tls/groups.pxi maps
# OpenSSL's names onto them; the ones before GROUP_X25519 are post-quantum.
cdef enum:
    GROUP_X25519MLKEM768 = 0
    GROUP_SECP256R1MLKEM768
    GROUP_SECP384R1MLKEM1024
    GROUP_MLKEM                   # ML-KEM alone (MLKEM512/768/1024): post-quantum, not hybrid
    GROUP_X25519
    GROUP_SECP256R1
    GROUP_SECP384R1
    GROUP_SECP521R1
    GROUP_X448
    GROUP_FFDHE                   # any ffdhe2048 .. ffdhe8192
    GROUP_OTHER
    GROUP_NONE                    # no key exchange: a resumed TLS 1.2 session
    GROUP_COUNT


cdef enum:
    ALPN_MAX = 8                  # protocols in a connector's or exit's alpn list


cdef struct Counters:
    # One route's connections. Each failure is counted once, by cause (by_cause, which
    # Python sees as errors_<cause>); the rest count what happened to every connection.
    uint64_t accepted
    uint64_t closed
    uint64_t idle_timeout
    uint64_t resets
    uint64_t bytes_in             # client -> upstream, delivered
    uint64_t bytes_out            # upstream -> client, delivered
    uint64_t bytes_copied
    uint64_t bytes_spliced
    uint64_t splice_promoted
    uint64_t splice_demoted
    uint64_t reads_empty          # data-path socket reads that found nothing (EAGAIN)
    uint64_t handshakes
    uint64_t handshakes_resumed
    uint64_t ktls_conns
    uint64_t ktls_declined
    uint64_t ktls_control_records
    uint64_t http_rewritten       # request heads whose Host was rewritten
    uint64_t alpn[ALPN_MAX]       # handshakes that agreed on the route's k-th ALPN protocol
    uint64_t by_cause[CAUSE_COUNT]  # every error event, counted even when the ring is full
    uint64_t by_group[GROUP_COUNT]  # completed handshakes by key-exchange group


cdef struct WorkerCounters:
    # What belongs to the worker, not to one route.
    uint64_t pipes_exhausted
    uint64_t accept_paused_emfile
    uint64_t accept_paused_limit
    uint64_t events_dropped


cdef struct ErrorEntry:
    # One error event in the worker's ring, until Loop.pop_errors makes an ErrorEvent of it.
    uint16_t route
    sockaddr_in6 orig_dst         # the device's original destination (gateway) or zeros
    sockaddr_in6 upstream         # the address dialled, or the route's (zeros: none)
    uint8_t cause
    int err
    char reason[REASON_LEN]       # empty: strerror(err)
    socklen_t client_len
    sockaddr_storage client
