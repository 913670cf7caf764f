# TLS contexts: one SSL_CTX per connector (client) or tunnel exit (server), per generation;
# one SSL per connection.
#
# The handshake and every read and write are driven by the epoll loop: libssl reads and
# writes the non-blocking socket itself (a socket BIO, which kTLS needs), and tells us
# what it waits for (WANT_READ / WANT_WRITE). Either direction's call may want either
# readiness: SSL_read can want to write (a KeyUpdate answer) and SSL_write can want to
# read, so each side remembers which readiness it waits for (Conn.tls_want).
#
# The OpenSSL error queue is per thread and must be empty before each SSL_* call, or
# SSL_get_error lies (SSL_get_error(3)); every call below is preceded by ERR_clear_error.
#
# Session resumption: the client cache is ours, per context (so per upstream and settings),
# a few sessions deep. TLS 1.3 tickets arrive after the handshake, through new_session_cb
# during a later SSL_read, and are used once (RFC 8446 C.4); TLS 1.2 sessions are reused.

cdef int on_new_session(SSL *ssl, SSL_SESSION *session) noexcept nogil:
    # Returning 1 keeps OpenSSL's reference: it is ours now.
    cdef TLSConf *conf = <TLSConf *>SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl))
    if conf == NULL or not SSL_SESSION_is_resumable(session):
        return 0
    if conf.nsessions == SESSION_CACHE:
        SSL_SESSION_free(conf.sessions[0])
        memmove(&conf.sessions[0], &conf.sessions[1], (SESSION_CACHE - 1) * sizeof(void *))
        conf.nsessions -= 1
    conf.sessions[conf.nsessions] = session
    conf.nsessions += 1
    return 1


cdef void session_offer(TLSConf *conf, SSL *ssl) noexcept nogil:
    # The newest session: a TLS 1.3 ticket leaves the cache (single use), a TLS 1.2
    # session stays for the next connection too.
    cdef SSL_SESSION *s
    if conf.nsessions == 0:
        return
    s = conf.sessions[conf.nsessions - 1]
    SSL_set_session(ssl, s)
    if SSL_SESSION_get_protocol_version(s) >= TLS1_3_VERSION:
        conf.nsessions -= 1
        SSL_SESSION_free(s)


cdef void on_info(const SSL *ssl, int where, int ret) noexcept nogil:
    # kTLS policy for OpenSSL 3.0: TLS 1.3 offloads only TX and a KeyUpdate then corrupts
    # the stream (hotpath.md §1.7), so once the version is known to be 1.3, and before the
    # application keys exist, kTLS is switched off for this connection. The version is
    # known only once the ServerHello is read: before that, SSL_version() already says
    # 1.3 (the highest offered), and acting on it would turn kTLS off for TLS 1.2 too
    # (seen in the kTLS guest: no connection was offloaded).
    # A server (tunnel exit) knows the version when it writes its ServerHello.
    if SSL_version(ssl) != TLS1_3_VERSION:
        return
    if ((where & SSL_CB_CONNECT_LOOP and SSL_get_state(ssl) == TLS_ST_CR_SRVR_HELLO)
            or (where & SSL_CB_ACCEPT_LOOP and SSL_get_state(ssl) == TLS_ST_SW_SRVR_HELLO)):
        SSL_clear_options(<SSL *>ssl, SSL_OP_ENABLE_KTLS)


cdef bint spki_sha256(X509 *cert, unsigned char *md) noexcept nogil:
    # The pin of a certificate: SHA-256 over its DER SubjectPublicKeyInfo (not
    # X509_pubkey_digest, which hashes only the key bits: hotpath.md §3). md: 32 bytes.
    cdef unsigned char *der = NULL
    cdef unsigned int mdlen = 0
    cdef int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der)
    if n <= 0:
        return False
    EVP_Digest(der, n, md, &mdlen, EVP_sha256(), NULL)
    OPENSSL_free(der)
    return True


cdef bint pin_listed(const unsigned char *md, unsigned char (*pins)[32],
                     uint32_t npins) noexcept nogil:
    cdef uint32_t k
    for k in range(npins):
        if memcmp(md, pins[k], 32) == 0:
            return True
    return False


cdef void note_refused(SSL *ssl, const unsigned char *md) noexcept nogil:
    cdef Worker *w = <Worker *>SSL_get_app_data(ssl)
    if w != NULL:
        memcpy(w.refused_pin, md, 32)
        w.refused_pin_set = 1


cdef inline SSL *store_ssl(X509_STORE_CTX *store) noexcept nogil:
    return <SSL *>X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx())


cdef inline int pin_admits(X509_STORE_CTX *store) noexcept nogil:
    # A pin overrules the chain's complaint (a self-signed node identity has no chain), so
    # the complaint must not outlive it: SSL_get_verify_result reports the store's last
    # error, and a later failure of the same handshake would be blamed on it.
    X509_STORE_CTX_set_error(store, X509_V_OK)
    return 1


cdef int on_verify_server(int ok, X509_STORE_CTX *store) noexcept nogil:
    # A connector with pins checks the server's (leaf) key during the handshake, so that a
    # server with another key never sees our client certificate or our Finished (a tunnel
    # exit would otherwise dial its target for nothing). With verify = true the chain
    # must verify too; with verify = false the pin alone decides.
    cdef SSL *ssl = store_ssl(store)
    cdef TLSConf *conf = <TLSConf *>SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl))
    cdef X509 *leaf = X509_STORE_CTX_get0_cert(store)
    cdef unsigned char md[32]
    if leaf == NULL or not spki_sha256(leaf, md):
        return 0
    if pin_listed(md, conf.pins, conf.npins):
        if conf.verify_chain:
            return ok
        return pin_admits(store)
    note_refused(ssl, md)
    if ok or not conf.verify_chain:
        X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED)
    return 0


cdef int on_verify_client(int ok, X509_STORE_CTX *store) noexcept nogil:
    # A tunnel exit's check of the entry node. OpenSSL calls this for each certificate of
    # the chain, with `ok` saying whether it verified. The entry's own (leaf) certificate
    # decides: its key in the allow list admits it whatever the chain (a self-signed node
    # identity has none), else only a chain to the configured CA does. A refused key is
    # left in the worker for the error event.
    cdef SSL *ssl = store_ssl(store)
    cdef ServerConf *conf = <ServerConf *>SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl))
    cdef X509 *leaf = X509_STORE_CTX_get0_cert(store)
    cdef unsigned char md[32]
    if leaf == NULL or not spki_sha256(leaf, md):
        return 0
    if pin_listed(md, conf.pins, conf.npins):
        return pin_admits(store)
    if conf.has_ca and ok:
        return 1
    note_refused(ssl, md)
    if ok or not conf.has_ca:
        # "bad certificate" rather than the chain's complaint (a node identity is
        # self-signed): the certificate is fine, its key is not allowed.
        X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED)
    return 0


cdef str ssl_error_text():
    # Everything in the error queue, oldest first, as one line (and the queue emptied).
    cdef char buf[256]
    cdef unsigned long e
    parts = []
    while True:
        e = ERR_get_error()
        if e == 0:
            break
        ERR_error_string_n(e, buf, sizeof(buf))
        parts.append(buf.decode(errors="replace"))
    return "; ".join(parts) or "no detail from OpenSSL"


cdef class TLSClientContext:
    """An SSL_CTX for one connector: verification, client identity, versions, kTLS mode.

    Raises ValueError("<key>: <reason>") when a setting is refused by OpenSSL, where <key>
    is the config key at fault (cert, key, ca, ciphers, ...)."""

    cdef SSL_CTX *ctx
    cdef TLSConf *conf

    def __cinit__(self, *, server_name=None, ca=None, cert=None, key=None,
                  bint verify=True, str min_tls="1.2", ciphers=None, ciphersuites=None,
                  groups=None, pins=(), str ktls="auto"):
        cdef bytes raw
        cdef uint32_t k
        self.conf = <TLSConf *>calloc(1, sizeof(TLSConf))
        if self.conf == NULL:
            raise MemoryError()
        ERR_clear_error()
        self.ctx = SSL_CTX_new(TLS_client_method())
        if self.ctx == NULL:
            raise MemoryError(ssl_error_text())
        SSL_CTX_set_app_data(self.ctx, self.conf)
        SSL_CTX_set_mode(self.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                         | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS)
        SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_CLIENT
                                       | SSL_SESS_CACHE_NO_INTERNAL_STORE)
        SSL_CTX_sess_set_new_cb(self.ctx, on_new_session)
        if min_tls not in ("1.2", "1.3"):
            raise ValueError(f"min_tls: expected '1.2' or '1.3', got {min_tls!r}")
        SSL_CTX_set_min_proto_version(
            self.ctx, TLS1_3_VERSION if min_tls == "1.3" else TLS1_2_VERSION)
        if ciphers is not None and not SSL_CTX_set_cipher_list(self.ctx, ciphers.encode()):
            raise ValueError(f"ciphers: {ssl_error_text()}")
        if ciphersuites is not None and not SSL_CTX_set_ciphersuites(
                self.ctx, ciphersuites.encode()):
            raise ValueError(f"ciphersuites: {ssl_error_text()}")
        if groups is not None and not SSL_CTX_set1_groups_list(self.ctx, groups.encode()):
            raise ValueError(f"groups: {ssl_error_text()}")
        if ca is not None:
            raw = ca.encode()
            if os.path.isdir(ca):
                ok = SSL_CTX_load_verify_locations(self.ctx, NULL, raw)
            else:
                ok = SSL_CTX_load_verify_locations(self.ctx, raw, NULL)
            if not ok:
                raise ValueError(f"ca: cannot load {ca}: {ssl_error_text()}")
        elif not SSL_CTX_set_default_verify_paths(self.ctx):
            raise ValueError(f"ca: cannot load the system trust store: {ssl_error_text()}")
        if (cert is None) != (key is None):
            raise ValueError("key: cert and key go together")
        if cert is not None:
            load_identity(self.ctx, cert, key)
        self.conf.verify_chain = verify
        if pins:
            SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, on_verify_server)
        else:
            SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER if verify else SSL_VERIFY_NONE, NULL)
        if server_name is not None:
            raw = server_name.encode()
            if len(raw) >= <Py_ssize_t>sizeof(self.conf.server_name):
                raise ValueError("server_name: too long")
            memcpy(self.conf.server_name, <char *>raw, len(raw))
            is_ip = _is_ip_literal(server_name)
            self.conf.send_sni = not is_ip
            self.conf.check_host = verify and not is_ip
            self.conf.check_ip = verify and is_ip
        if len(pins) > MAX_PINS:
            raise ValueError(f"pin: at most {MAX_PINS} pins")
        for k, pin in enumerate(pins):
            if len(pin) != 32:
                raise ValueError("pin: each pin is a 32-byte SHA-256")
            memcpy(self.conf.pins[k], <char *>pin, 32)
        self.conf.npins = len(pins)
        self.conf.ktls_mode = ktls_mode_of(ktls)
        if self.conf.ktls_mode != KTLS_OFF:
            SSL_CTX_set_options(self.ctx, SSL_OP_ENABLE_KTLS)
            SSL_CTX_set_info_callback(self.ctx, on_info)

    def __dealloc__(self):
        cdef uint32_t k
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)
        if self.conf != NULL:
            for k in range(self.conf.nsessions):
                SSL_SESSION_free(self.conf.sessions[k])
            free(self.conf)

    @property
    def cached_sessions(self):
        """Sessions waiting in this context's cache (for tests and stats)."""
        return self.conf.nsessions


cdef int load_identity(SSL_CTX *ctx, cert, key) except -1:
    # The certificate chain and its private key, or ValueError naming the key at fault.
    if not SSL_CTX_use_certificate_chain_file(ctx, cert.encode()):
        raise ValueError(f"cert: cannot load {cert}: {ssl_error_text()}")
    if not SSL_CTX_use_PrivateKey_file(ctx, key.encode(), SSL_FILETYPE_PEM):
        raise ValueError(f"key: cannot load {key}: {ssl_error_text()}")
    if not SSL_CTX_check_private_key(ctx):
        raise ValueError(f"key: does not match the certificate: {ssl_error_text()}")
    return 0


cdef uint8_t ktls_mode_of(str ktls) except 255:
    try:
        return {"off": KTLS_OFF, "auto": KTLS_AUTO, "require": KTLS_REQUIRE}[ktls]
    except KeyError:
        raise ValueError(f"ktls: expected 'auto', 'off' or 'require', got {ktls!r}")


cdef class TLSServerContext:
    """An SSL_CTX for one tunnel exit: its identity (cert, key) and who may connect: a
    client certificate whose key is in `allow_pins` (32-byte SHA-256 of the DER
    SubjectPublicKeyInfo) or that chains to `ca`.

    Raises ValueError("<key>: <reason>") where <key> is the config key at fault."""

    cdef SSL_CTX *ctx
    cdef ServerConf *conf

    def __cinit__(self, *, str cert, str key, allow_pins=(), ca=None, str min_tls="1.2",
                  str ktls="auto"):
        cdef uint32_t k
        self.conf = <ServerConf *>calloc(1, sizeof(ServerConf))
        if self.conf == NULL:
            raise MemoryError()
        ERR_clear_error()
        self.ctx = SSL_CTX_new(TLS_server_method())
        if self.ctx == NULL:
            raise MemoryError(ssl_error_text())
        SSL_CTX_set_app_data(self.ctx, self.conf)
        SSL_CTX_set_mode(self.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                         | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS)
        if min_tls not in ("1.2", "1.3"):
            raise ValueError(f"min_tls: expected '1.2' or '1.3', got {min_tls!r}")
        SSL_CTX_set_min_proto_version(
            self.ctx, TLS1_3_VERSION if min_tls == "1.3" else TLS1_2_VERSION)
        load_identity(self.ctx, cert, key)
        if ca is not None:
            raw = ca.encode()
            if os.path.isdir(ca):
                ok = SSL_CTX_load_verify_locations(self.ctx, NULL, raw)
            else:
                ok = SSL_CTX_load_verify_locations(self.ctx, raw, NULL)
            if not ok:
                raise ValueError(f"ca: cannot load {ca}: {ssl_error_text()}")
            self.conf.has_ca = 1
        if not allow_pins and ca is None:
            # An exit anyone can use is an open proxy: never the default.
            raise ValueError("allow: an exit needs allowed pins or a ca")
        self.conf.pins = <unsigned char (*)[32]>malloc(max(1, len(allow_pins)) * 32)
        if self.conf.pins == NULL:
            raise MemoryError()
        for k, pin in enumerate(allow_pins):
            if len(pin) != 32:
                raise ValueError("allow: each pin is a 32-byte SHA-256")
            memcpy(self.conf.pins[k], <char *>pin, 32)
        self.conf.npins = len(allow_pins)
        SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                           on_verify_client)
        # Resumed sessions skip the verify callback; OpenSSL refuses to resume a session
        # with a verified client without an id context (SSL_CTX_set_session_id_context(3)).
        SSL_CTX_set_session_id_context(self.ctx, <const unsigned char *>"relaycore-exit", 14)
        self.conf.ktls_mode = ktls_mode_of(ktls)
        if self.conf.ktls_mode != KTLS_OFF:
            SSL_CTX_set_options(self.ctx, SSL_OP_ENABLE_KTLS)
            SSL_CTX_set_info_callback(self.ctx, on_info)

    def __dealloc__(self):
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)
        if self.conf != NULL:
            free(self.conf.pins)
            free(self.conf)


def _is_ip_literal(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
