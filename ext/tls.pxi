# TLS origination: one SSL_CTX per connector (per generation), one SSL per connection.
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
    if (where & SSL_CB_CONNECT_LOOP and SSL_get_state(ssl) == TLS_ST_CR_SRVR_HELLO
            and SSL_version(ssl) == TLS1_3_VERSION):
        SSL_clear_options(<SSL *>ssl, SSL_OP_ENABLE_KTLS)


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
            if not SSL_CTX_use_certificate_chain_file(self.ctx, cert.encode()):
                raise ValueError(f"cert: cannot load {cert}: {ssl_error_text()}")
            if not SSL_CTX_use_PrivateKey_file(self.ctx, key.encode(), SSL_FILETYPE_PEM):
                raise ValueError(f"key: cannot load {key}: {ssl_error_text()}")
            if not SSL_CTX_check_private_key(self.ctx):
                raise ValueError(f"key: does not match the certificate: {ssl_error_text()}")
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
        try:
            self.conf.ktls_mode = {"off": KTLS_OFF, "auto": KTLS_AUTO,
                                   "require": KTLS_REQUIRE}[ktls]
        except KeyError:
            raise ValueError(f"ktls: expected 'auto', 'off' or 'require', got {ktls!r}")
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


def _is_ip_literal(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
