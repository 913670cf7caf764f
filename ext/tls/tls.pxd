# Functions of TLS (tls/*.pxi) that other files call, one contract each.

# -- tls/context.pxi ------------------------------------------------------------------------
# Offers ssl the newest cached session; a TLS 1.3 ticket leaves the cache (single use).
cdef void session_offer(TLSConf *conf, SSL *ssl) noexcept nogil
# The position in alpn of the protocol ssl's handshake agreed on, or -1.
cdef int alpn_index(const Alpn *alpn, SSL *ssl) noexcept nogil
# A route's alpn list (its TLS context's) as text, in order.
cdef list route_alpn_names(const Route *r)

# -- tls/verify.pxi -------------------------------------------------------------------------
# cert's pin (SHA-256 of its DER SubjectPublicKeyInfo) into md[32]; False: no key.
cdef bint spki_sha256(X509 *cert, unsigned char *md) noexcept nogil
# SSL_CTX_set_verify callback of a connector with pins: the server's key must be pinned.
cdef int on_verify_server(int ok, X509_STORE_CTX *store) noexcept nogil
# SSL_CTX_set_verify callback of a tunnel exit: the entry's key allowed, or its CA.
cdef int on_verify_client(int ok, X509_STORE_CTX *store) noexcept nogil

# -- tls/certseen.pxi -----------------------------------------------------------------------
# A connector's handshake is done: note the leaf ssl's server presented on the route's seen.
cdef void cert_seen_note(CertSeen *seen, SSL *ssl, uint64_t now_ms) noexcept nogil
# Release seen's reference to its certificate (the route goes away).
cdef void cert_seen_clear(CertSeen *seen) noexcept nogil
# seen for Python: None before any handshake, else a dict (Loop.route_certs says which).
cdef object cert_seen_dict(const CertSeen *seen)
# -- tls/groups.pxi ------------------------------------------------------------------------
# ctx's groups from `groups` or pq (client: True for a connector); *mode, *offers_pq. Raises.
cdef int set_groups(SSL_CTX *ctx, groups, str pq, bint client, uint8_t *mode,
                    uint8_t *offers_pq) except -1
# A connector's new ssl: one key share, for the group its server chose last, once known.
cdef void share_offer(TLSConf *conf, SSL *ssl) noexcept nogil
# Handshake done: its group counted, pq applied; False: it failed (pq = "require"). [may close]
cdef bint tls_check_group(Worker *w, int32_t i) noexcept nogil
# The reason a pq = "require" refusal gives, naming the group c negotiated.
cdef void pq_reason(Conn *c, char *reason, size_t reason_len) noexcept nogil
# An exit requiring pq whose handshake failed: True (and why) if the client had no pq group.
cdef bint pq_refused_client(Conn *c, char *reason, size_t reason_len) noexcept nogil

# -- tls/ktls.pxi ---------------------------------------------------------------------------
# 1: the kernel rekeys kTLS (TLS 1.3 KeyUpdate); 0: it cannot; -errno: no kernel TLS.
cdef int ktls_probe_rekey() noexcept nogil
# Sets w.ktls_rekey by ktls_probe_rekey, the first time only.
cdef void worker_ktls_probe(Worker *w) noexcept nogil
# SSL_CTX info callback: TLS 1.3 is not offloaded where the kernel cannot rekey.
cdef void on_info(const SSL *ssl, int where, int ret) noexcept nogil
# Handshake done: offloaded both ways? Counted; ktls = "require" fails it if not. [may close]
cdef bint ktls_handshake_done(Worker *w, int32_t i) noexcept nogil
# A non-data record is next on a kTLS socket: SSL_read consumes it. As pump_tls_read.
cdef int tls_read_control(Worker *w, Conn *c, Py_ssize_t *moved) noexcept nogil
# Direction d of a kTLS connection while OpenSSL has its turn; PUMP_RESUMED when it ends.
cdef int ktls_pump(Worker *w, Conn *c, int d, Py_ssize_t *moved) noexcept nogil

# -- tls/classify.pxi -----------------------------------------------------------------------
# The handshake failed (ssl_err from SSL_get_error): its cause and reason to conn_fail. [may close]
cdef void tls_handshake_failed(Worker *w, int32_t i, int ssl_err) noexcept nogil
# An SSL_* call failed for good after the handshake: TLS dead, an event; the -errno to return.
cdef int tls_fatal(Worker *w, Conn *c, int ssl_err) noexcept nogil
# The peer closed TCP without close_notify: TLS marked dead, a tls_truncated event.
cdef void tls_truncated(Worker *w, Conn *c) noexcept nogil

# -- tls/reads.pxi -------------------------------------------------------------------------
# The socket BIO's read callback: a short read clears READY_READ of the TLS side (read_short).
cdef long on_socket_read(BIO *b, int oper, const char *argp, size_t n, int argi,
                         long argl, int ret, size_t *processed) noexcept nogil
# Handshake done, receive not offloaded: read-ahead, and on_socket_read on c's socket BIO.
cdef void tls_lean_reads(Conn *c) noexcept nogil
# Whether direction d's next SSL_* call may proceed: its readiness, or (SSL_read) bytes
# OpenSSL holds already.
cdef inline bint tls_may_read(Conn *c, int d) noexcept nogil:
    return <bint>(c.ready[c.tls_side] & c.tls_want[d]) or (
        c.tls_want[d] == READY_READ and SSL_has_pending(c.ssl))

# -- tls/gather.pxi ------------------------------------------------------------------------
# Send c.out (to the TLS socket): 1 none left (buffer pooled), 0 socket full, <0 -errno.
cdef int out_send(Conn *c) noexcept nogil
# As out_send, and the buffer goes back to the pool once empty.
cdef int tls_out_flush(Worker *w, Conn *c) noexcept nogil
# tls_out_flush for a pump: a failed send goes through tls_fatal (event, -errno).
cdef int tls_out_drain(Worker *w, Conn *c) noexcept nogil
# The gather BIO's write: records into c.out during a batch, else through to the socket.
cdef int gather_write(BIO *b, const char *data, size_t n, size_t *written) noexcept nogil
# The gather BIO's ctrl: BIO_flush sends c.out.
cdef long gather_ctrl(BIO *b, int cmd, long num, void *ptr) noexcept nogil
# A BIO_METHOD with gather_write and gather_ctrl; NULL: no memory.
cdef BIO_METHOD *gather_method_new() noexcept nogil
# Handshake done, the kernel does not encrypt: c.ssl writes through the gather BIO.
cdef void tls_gather_start(Conn *c) noexcept nogil

# -- tls/stream.pxi -------------------------------------------------------------------------
# The slot's SSL (it owns it) on `side`, whose TCP is up; then the handshake. [may close]
cdef void conn_tls_start(Worker *w, int32_t i, int side) noexcept nogil
# One handshake step; once done, relaying (or the exit's next step). [may close]
cdef void conn_handshake(Worker *w, int32_t i) noexcept nogil
# After an SSL_* call <= 0: 0 if it waits (ready cleared, tls_want[d] set), else tls_fatal's.
cdef int tls_blocked(Worker *w, Conn *c, int d, int ssl_err) noexcept nogil
# SSL_write of p[0:n] when the TLS side is ready: >0 bytes taken (counted), 0 wait, <0 fatal.
cdef Py_ssize_t tls_write(Worker *w, Conn *c, char *p, size_t n) noexcept nogil
# The plain side's owned buffer through SSL_write: >0 taken, 0 wait, <0 fatal; pooled once empty.
cdef Py_ssize_t tls_flush_owned(Worker *w, Conn *c) noexcept nogil
# Plain side -> TLS side by SSL_write; as pump_copy (a PUMP_* result, -errno, PUMP_NO_BUFFER).
cdef int pump_tls_write(Worker *w, Conn *c, Py_ssize_t *moved) noexcept nogil
# TLS side -> plain side by SSL_read, until WANT_*: as pump_tls_write.
cdef int pump_tls_read(Worker *w, Conn *c, Py_ssize_t *moved) noexcept nogil
# close_notify towards the TLS side: 1 sent (or none owed), 0 wait, <0 -errno.
cdef int tls_close_notify(Worker *w, Conn *c) noexcept nogil
# A KeyUpdate the peer asked for, sent or written now: 1 none owed or done, 0 wait, <0 fatal.
cdef int tls_answer_key_update(Worker *w, Conn *c, int d) noexcept nogil
# The message callback installed with our close_notify: a later KeyUpdate request is ignored.
cdef void on_message_after_close_notify(int write_p, int version, int content_type,
                                        const void *buf, size_t n, SSL *ssl,
                                        void *arg) noexcept nogil

# -- tls/identity.pxi -----------------------------------------------------------------------
# What was written into the memory BIO bio, as bytes.
cdef bytes bio_bytes(BIO *bio)
