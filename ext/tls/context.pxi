# TLS contexts: one SSL_CTX per connector (client) or tunnel exit (server), per generation,
# built by Python before the workers fork; one SSL per connection (tls/stream.pxi).
#
# Every context: partial writes and a moving write buffer (tls/stream.pxi explains why),
# buffers released while a connection is idle, TLS >= min_tls, kTLS per `ktls` (on_info,
# tls/ktls.pxi), key-exchange groups per `pq` and `groups` (tls/groups.pxi).
#
# Session resumption: the client cache is ours, per context (so per upstream and settings),
# a few sessions deep. TLS 1.3 tickets arrive after the handshake, through new_session_cb
# during a later SSL_read, and are used once (RFC 8446 C.4); TLS 1.2 sessions are reused.

# The OpenSSL this module runs (its own copy when linked statically: Python's ssl module
# may use another in the same process) and where setup.py found it.
OPENSSL_VERSION = OpenSSL_version(OPENSSL_VERSION_TEXT).decode()
OPENSSL_ORIGIN = RELAYCORE_OPENSSL_ORIGIN.decode()


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


cdef int ctx_setup(SSL_CTX *ctx, void *conf, str min_tls) except -1:
    # What every context has (the header above); conf becomes its app data.
    SSL_CTX_set_app_data(ctx, conf)
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                     | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS)
    if min_tls not in ("1.2", "1.3"):
        raise ValueError(f"min_tls: expected '1.2' or '1.3', got {min_tls!r}")
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION if min_tls == "1.3" else TLS1_2_VERSION)
    return 0


cdef int load_ca(SSL_CTX *ctx, str ca) except -1:
    # Trust `ca`, a PEM file or a hashed directory.
    cdef bytes raw = ca.encode()
    if os.path.isdir(ca):
        ok = SSL_CTX_load_verify_locations(ctx, NULL, raw)
    else:
        ok = SSL_CTX_load_verify_locations(ctx, raw, NULL)
    if not ok:
        raise ValueError(f"ca: cannot load {ca}: {ssl_error_text()}")
    return 0


cdef int load_identity(SSL_CTX *ctx, cert, key) except -1:
    # The certificate chain and its private key, or ValueError naming the key at fault.
    if not SSL_CTX_use_certificate_chain_file(ctx, cert.encode()):
        raise ValueError(f"cert: cannot load {cert}: {ssl_error_text()}")
    if not SSL_CTX_use_PrivateKey_file(ctx, key.encode(), SSL_FILETYPE_PEM):
        raise ValueError(f"key: cannot load {key}: {ssl_error_text()}")
    if not SSL_CTX_check_private_key(ctx):
        raise ValueError(f"key: does not match the certificate: {ssl_error_text()}")
    return 0


cdef int copy_pins(unsigned char (*dst)[32], pins, str key) except -1:
    # Each pin is the 32-byte SHA-256 of a DER SubjectPublicKeyInfo; dst has room for all.
    for k, pin in enumerate(pins):
        if len(pin) != 32:
            raise ValueError(f"{key}: each pin is a 32-byte SHA-256")
        memcpy(dst[k], <char *>pin, 32)
    return 0


cdef uint8_t set_ktls(SSL_CTX *ctx, str ktls) except 255:
    # The context's kTLS mode; with "auto" or "require", OpenSSL may offload TLS 1.2.
    cdef uint8_t mode
    try:
        mode = {"off": KTLS_OFF, "auto": KTLS_AUTO, "require": KTLS_REQUIRE}[ktls]
    except KeyError:
        raise ValueError(f"ktls: expected 'auto', 'off' or 'require', got {ktls!r}")
    if mode != KTLS_OFF:
        SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS)
        SSL_CTX_set_info_callback(ctx, on_info)
    return mode


cdef class TLSClientContext:
    """An SSL_CTX for one connector: verification, client identity, versions, kTLS mode.

    Raises ValueError("<key>: <reason>") when a setting is refused by OpenSSL, where <key>
    is the config key at fault (cert, key, ca, ciphers, ...)."""

    def __cinit__(self, *, server_name=None, ca=None, cert=None, key=None,
                  bint verify=True, str min_tls="1.2", ciphers=None, ciphersuites=None,
                  groups=None, pins=(), str ktls="auto", str pq="prefer", alpn=()):
        cdef bytes raw
        self.conf = <TLSConf *>calloc(1, sizeof(TLSConf))
        if self.conf == NULL:
            raise MemoryError()
        ERR_clear_error()
        self.ctx = SSL_CTX_new(TLS_client_method())
        if self.ctx == NULL:
            raise MemoryError(ssl_error_text())
        SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_CLIENT
                                       | SSL_SESS_CACHE_NO_INTERNAL_STORE)
        SSL_CTX_sess_set_new_cb(self.ctx, on_new_session)
        ctx_setup(self.ctx, self.conf, min_tls)
        if ciphers is not None and not SSL_CTX_set_cipher_list(self.ctx, ciphers.encode()):
            raise ValueError(f"ciphers: {ssl_error_text()}")
        if ciphersuites is not None and not SSL_CTX_set_ciphersuites(
                self.ctx, ciphersuites.encode()):
            raise ValueError(f"ciphersuites: {ssl_error_text()}")
        set_groups(self.ctx, groups, pq, True, &self.conf.pq_mode, &self.conf.offers_pq)
        self.conf.learns_share = groups is None and self.conf.pq_mode != PQ_OFF
        self.conf.share_group = GROUP_NONE
        if ca is not None:
            load_ca(self.ctx, ca)
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
        copy_pins(self.conf.pins, pins, "pin")
        self.conf.npins = len(pins)
        self.conf.ktls_mode = set_ktls(self.ctx, ktls)
        set_alpn(self.ctx, &self.conf.alpn, alpn, False)

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


cdef class TLSServerContext:
    """An SSL_CTX for one tunnel exit: its identity (cert, key) and who may connect: a
    client certificate whose key is in `allow_pins` (32-byte SHA-256 of the DER
    SubjectPublicKeyInfo) or that chains to `ca`.

    Raises ValueError("<key>: <reason>") where <key> is the config key at fault."""

    def __cinit__(self, *, str cert, str key, allow_pins=(), ca=None, str min_tls="1.2",
                  str ktls="auto", str pq="prefer", alpn=()):
        self.conf = <ServerConf *>calloc(1, sizeof(ServerConf))
        if self.conf == NULL:
            raise MemoryError()
        ERR_clear_error()
        self.ctx = SSL_CTX_new(TLS_server_method())
        if self.ctx == NULL:
            raise MemoryError(ssl_error_text())
        ctx_setup(self.ctx, self.conf, min_tls)
        load_identity(self.ctx, cert, key)
        if ca is not None:
            load_ca(self.ctx, ca)
            self.conf.has_ca = 1
        if not allow_pins and ca is None:
            # An exit anyone can use is an open proxy: never the default.
            raise ValueError("allow: an exit needs allowed pins or a ca")
        self.conf.pins = <unsigned char (*)[32]>malloc(max(1, len(allow_pins)) * 32)
        if self.conf.pins == NULL:
            raise MemoryError()
        copy_pins(self.conf.pins, allow_pins, "allow")
        self.conf.npins = len(allow_pins)
        SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                           on_verify_client)
        # Resumed sessions skip the verify callback; OpenSSL refuses to resume a session
        # with a verified client without an id context (SSL_CTX_set_session_id_context(3)).
        SSL_CTX_set_session_id_context(self.ctx, <const unsigned char *>"relaycore-exit", 14)
        self.conf.ktls_mode = set_ktls(self.ctx, ktls)
        set_alpn(self.ctx, &self.conf.alpn, alpn, True)
        set_groups(self.ctx, None, pq, False, &self.conf.pq_mode, &self.conf.offers_pq)

    def __dealloc__(self):
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)
        if self.conf != NULL:
            free(self.conf.pins)
            free(self.conf)


cdef int set_alpn(SSL_CTX *ctx, Alpn *alpn, protocols, bint server) except -1:
    # ALPN (RFC 7301): a client offers `protocols` in order; a server (a tunnel exit) picks
    # the first of its own that the client offers, and refuses a client that offers only
    # others with the no_application_protocol alert (a client offering none is admitted).
    cdef bytes wire = b""
    protocols = list(protocols)
    if len(protocols) > ALPN_MAX:
        raise ValueError(f"alpn: at most {ALPN_MAX} protocols")
    for name in protocols:
        raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
        if not 0 < len(raw) < 256:
            raise ValueError(f"alpn: each protocol is 1-255 bytes, got {name!r}")
        wire += bytes([len(raw)]) + raw
    if len(wire) > ALPN_WIRE_MAX:
        raise ValueError("alpn: the list is too long")
    memcpy(alpn.wire, <char *>wire, len(wire))
    alpn.len = len(wire)
    if not protocols:
        return 0
    if server:
        SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, alpn)
    elif SSL_CTX_set_alpn_protos(ctx, alpn.wire, alpn.len) != 0:
        raise ValueError(f"alpn: {ssl_error_text()}")
    return 0


cdef int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                        const unsigned char *offered, unsigned int offered_len,
                        void *arg) noexcept nogil:
    cdef Alpn *alpn = <Alpn *>arg
    if SSL_select_next_proto(<unsigned char **>out, outlen, alpn.wire, alpn.len, offered,
                             offered_len) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_ALERT_FATAL          # the no_application_protocol alert
    return SSL_TLSEXT_ERR_OK


cdef int alpn_index(const Alpn *alpn, SSL *ssl) noexcept nogil:
    # The position in `alpn` of the protocol the handshake agreed on, or -1 (none).
    cdef const unsigned char *chosen = NULL
    cdef unsigned int n = 0
    cdef uint32_t off = 0
    cdef int k = 0
    SSL_get0_alpn_selected(ssl, &chosen, &n)
    if n == 0:
        return -1
    while off < alpn.len:
        if alpn.wire[off] == n and memcmp(alpn.wire + off + 1, chosen, n) == 0:
            return k
        off += 1 + alpn.wire[off]
        k += 1
    return -1


cdef list route_alpn_names(const Route *r):
    # The route's alpn list as text, in order.
    cdef const Alpn *alpn = NULL
    cdef uint32_t off = 0
    cdef list names = []
    if r.kind == ROUTE_EXIT and r.srv != NULL:
        alpn = &r.srv.alpn
    elif r.kind == ROUTE_UPSTREAM and r.tls != NULL:
        alpn = &r.tls.alpn
    while alpn != NULL and off < alpn.len:
        names.append(alpn.wire[off + 1:off + 1 + alpn.wire[off]].decode("ascii", "replace"))
        off += 1 + alpn.wire[off]
    return names


def _is_ip_literal(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
