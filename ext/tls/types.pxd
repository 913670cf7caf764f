# Types of TLS: the per-context settings the C side reads for each connection, and the two
# context classes Python builds (tls/context.pxi). Declarations only.

cdef enum:
    # Sessions kept per context (per worker). Each connection brings the server's tickets
    # (2 by default); with fewer than the handshakes in flight, the rest go full (the
    # peer benchmark saw 99.9% resumed at 8 in flight, 60% at 32, with 8 here).
    SESSION_CACHE = 64
    MAX_PINS = 16

# TLSConf.ktls_mode, ServerConf.ktls_mode
cdef enum:
    KTLS_OFF = 0
    KTLS_AUTO
    KTLS_REQUIRE

cdef enum:
    ALPN_WIRE_MAX = 512           # bytes of an alpn list in wire form (length-prefixed)


cdef struct Alpn:
    # An alpn list in wire form: each protocol as one length byte and its bytes, in order.
    unsigned char wire[ALPN_WIRE_MAX]
    uint32_t len
# TLSConf.pq_mode, ServerConf.pq_mode: post-quantum key exchange (tls/groups.pxi)
cdef enum:
    PQ_OFF = 0                    # classical groups only
    PQ_PREFER                     # hybrid first, classical after; an event on a classical one
    PQ_REQUIRE                    # as prefer, and a handshake without one fails


cdef struct TLSConf:
    # A client context's settings, kept in its SSL_CTX app data.
    char server_name[256]
    uint8_t send_sni              # server_name is a DNS name
    uint8_t check_host            # verify the certificate against server_name (DNS)
    uint8_t check_ip              # ... against server_name (an IP literal)
    uint8_t ktls_mode
    uint8_t pq_mode
    uint8_t offers_pq             # the group list has a post-quantum group
    uint8_t learns_share          # pq's own group list: one key share, once the server chose
    uint8_t share_group           # ... for this GROUP_* (GROUP_NONE: not yet, two shares)
    uint8_t verify_chain          # with pins: the chain must verify too (verify = true)
    uint32_t npins
    unsigned char pins[MAX_PINS][32]
    SSL_SESSION *sessions[SESSION_CACHE]
    uint32_t nsessions
    Alpn alpn                     # offered in this order (len 0: no ALPN)


cdef struct CertSeen:
    # A connector's upstream certificate as its latest handshakes presented it, on the
    # route (tls/certseen.pxi). Python reads the dates and names from `leaf`.
    X509 *leaf                    # our reference; NULL before the first handshake
    unsigned char pin[32]         # SHA-256 of leaf's DER SubjectPublicKeyInfo
    unsigned char previous_pin[32]  # the key before the latest change (key_changes > 0)
    uint64_t key_changes          # handshakes that presented another key than the one before
    uint64_t seen_ms              # Worker.now_ms of the latest handshake


cdef struct ServerConf:
    # A tunnel exit's SSL_CTX app data: who may connect (the verify callback reads it).
    unsigned char (*pins)[32]     # allowed client keys: SHA-256 of the DER SPKI
    uint32_t npins
    uint8_t has_ca                # a client certificate that chains to the CA is allowed too
    uint8_t ktls_mode
    Alpn alpn                     # the protocols the exit takes, its preference first
    uint8_t pq_mode
    uint8_t offers_pq


cdef class TLSClientContext:
    cdef SSL_CTX *ctx
    cdef TLSConf *conf


cdef class TLSServerContext:
    cdef SSL_CTX *ctx
    cdef ServerConf *conf
