# Kernel TLS: which connections the kernel encrypts, and the control records it hands back.
#
# With OpenSSL >= 3.2 kTLS is a record layer (ssl/record/methods/ktls_meth.c): with
# SSL_OP_ENABLE_KTLS, each time a direction's traffic key changes OpenSSL makes a new record
# layer and gives the key to the kernel with setsockopt(TLS_TX / TLS_RX). For TLS 1.2 that
# happens once per direction. For TLS 1.3 it happens again on every KeyUpdate: the peer's
# (our receive key), and ours in answer to one with update_requested (our send key). A
# kernel before Linux 6.14 refuses a second TLS_TX/TLS_RX (EBUSY), and OpenSSL 3.5, whose
# only fallback is the kTLS method it already runs, ends the connection ("no suitable
# record layer"): the rest of the stream is lost (docs/HOTPATH.md §1.9, measured in the
# kTLS guest on 6.1).
#
# The policy, decided per worker by a probe of the kernel (ktls_probe_rekey):
# - TLS 1.2 with AES-GCM or ChaCha20: offloaded both ways (no key ever changes).
# - TLS 1.3 where the kernel can rekey: offloaded both ways; a KeyUpdate is a control
#   record that SSL_read handles, and OpenSSL moves the kernel to the new key.
# - TLS 1.3 where it cannot: not offloaded at all (on_info clears SSL_OP_ENABLE_KTLS
#   before the traffic keys exist), because a peer's KeyUpdate with update_requested
#   rekeys our send side too. It stays in user space, byte-exact, counted ktls_declined.
# ktls = "require" holds per connection: one that is not offloaded both ways fails
# (cause ktls_required) instead of being relayed in user space.
#
# Offloaded, the TLS fd carries plaintext and the plain pumps (copy, splice) serve it. A
# non-data record (alert, close_notify, a TLS 1.3 ticket or KeyUpdate) makes recv fail with
# EIO and splice with EINVAL; SSL_read then consumes it with the record-type cmsg
# (tls_read_control). Until SSL_read says WANT_READ, it alone serves the TLS side and
# nothing is written to it: an answer OpenSSL owes (our KeyUpdate) may be half sent, and
# TLS 1.3 wants it before our next data record (RFC 8446 §4.6.3).


cdef int ktls_probe_rekey() noexcept nogil:
    # 1 if this kernel takes a second TLS_TX on a socket (TLS 1.3 KeyUpdate, Linux 6.14),
    # 0 if it refuses it, -errno if kernel TLS itself is unavailable. The probe: a loopback
    # TCP pair, the "tls" ULP, then two TLS 1.3 AES-128-GCM send keys (dummies: nothing is
    # sent). A cheaper sign, TlsTxRekeyOk in /proc/net/tls_stat, says only that the code
    # exists.
    cdef sockaddr_in addr
    cdef socklen_t alen = sizeof(addr)
    cdef tls12_crypto_info_aes_gcm_128 key
    cdef int lfd = -1
    cdef int cfd = -1
    cdef int afd = -1
    cdef int rc = -EIO
    memset(&addr, 0, sizeof(addr))
    memset(&key, 0, sizeof(key))
    addr.sin_family = AF_INET
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
    key.info.version = TLS_1_3_VERSION
    key.info.cipher_type = TLS_CIPHER_AES_GCM_128
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)
    cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)
    if (lfd < 0 or cfd < 0 or bind(lfd, <sockaddr *>&addr, alen) < 0 or listen(lfd, 1) < 0
            or getsockname(lfd, <sockaddr *>&addr, &alen) < 0
            or connect(cfd, <sockaddr *>&addr, alen) < 0):
        rc = -errno
    else:
        afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)
        if setsockopt(cfd, IPPROTO_TCP, TCP_ULP, "tls", 3) < 0:
            rc = -errno
        elif setsockopt(cfd, SOL_TLS, TLS_TX, &key, sizeof(key)) < 0:
            rc = -errno
        else:
            key.rec_seq[7] = 1
            rc = 1 if setsockopt(cfd, SOL_TLS, TLS_TX, &key, sizeof(key)) == 0 else 0
    if lfd >= 0:
        close(lfd)
    if cfd >= 0:
        close(cfd)
    if afd >= 0:
        close(afd)
    return rc


cdef void worker_ktls_probe(Worker *w) noexcept nogil:
    # Probe once, when the worker gets its first route that may offload.
    if w.ktls_rekey < 0:
        w.ktls_rekey = 1 if ktls_probe_rekey() == 1 else 0


cdef void on_info(const SSL *ssl, int where, int ret) noexcept nogil:
    # The policy above for TLS 1.3 where the kernel cannot rekey: kTLS is switched off for
    # this connection once the version is known to be 1.3, and before the application keys
    # exist. The version is known only once the ServerHello is read: before that,
    # SSL_version() already says 1.3 (the highest offered), and acting on it would turn
    # kTLS off for TLS 1.2 too (seen in the kTLS guest: no connection was offloaded). A
    # server (tunnel exit) knows the version when it writes its ServerHello.
    cdef Worker *w
    if SSL_version(ssl) != TLS1_3_VERSION:
        return
    if ((where & SSL_CB_CONNECT_LOOP and SSL_get_state(ssl) == TLS_ST_CR_SRVR_HELLO)
            or (where & SSL_CB_ACCEPT_LOOP and SSL_get_state(ssl) == TLS_ST_SW_SRVR_HELLO)):
        w = <Worker *>SSL_get_app_data(ssl)
        if w == NULL or w.ktls_rekey != 1:
            SSL_clear_options(<SSL *>ssl, SSL_OP_ENABLE_KTLS)


cdef bint ktls_handshake_done(Worker *w, int32_t i) noexcept nogil:
    # After the handshake: did the kernel take both directions? Counted; with ktls =
    # "require" a connection it did not take fails here. False: it failed. [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    cdef uint8_t mode = r.srv.ktls_mode if r.kind == ROUTE_EXIT else r.tls.ktls_mode
    cdef bint tx, rx
    cdef char reason[REASON_LEN]
    cdef const char *tx_said = "refused"
    cdef const char *rx_said = "refused"
    if mode == KTLS_OFF:
        return True
    tx = BIO_get_ktls_send(SSL_get_wbio(c.ssl)) == 1
    rx = BIO_get_ktls_recv(SSL_get_rbio(c.ssl)) == 1
    c.ktls = tx and rx
    c.ktls_tx_only = tx and not rx
    if c.ktls:
        conn_ctr(w, c).ktls_conns += 1
        return True
    conn_ctr(w, c).ktls_declined += 1
    if mode != KTLS_REQUIRE:
        return True
    if SSL_version(c.ssl) == TLS1_3_VERSION and w.ktls_rekey != 1:
        snprintf(reason, REASON_LEN, "ktls = \"require\": TLS 1.3 is not offloaded on a kernel"
                 " that cannot rekey (KeyUpdate needs Linux 6.14)")
    else:
        if tx:
            tx_said = "offloaded"
        if rx:
            rx_said = "offloaded"
        snprintf(reason, REASON_LEN, "ktls = \"require\": the kernel did not take %s with %s"
                 " (send %s, receive %s)", SSL_get_version(c.ssl),
                 SSL_CIPHER_get_name(SSL_get_current_cipher(c.ssl)), tx_said, rx_said)
    conn_fail(w, i, CAUSE_KTLS_REQUIRED, EPROTO, reason)
    return False


cdef int tls_read_control(Worker *w, Conn *c, Py_ssize_t *moved) noexcept nogil:
    # On a kTLS receive socket the next record is not data (recv said EIO, splice EINVAL):
    # let OpenSSL read it with the record-type cmsg. The caller's buffer and pipe are
    # empty (it reads the source only then), so data OpenSSL returns keeps its order.
    cdef Dir *dr = &c.dir[c.tls_side]
    conn_ctr(w, c).ktls_control_records += 1
    if dr.buf_len or dr.pipe_bytes:
        return -EPROTO
    c.ktls_control = 1
    return ktls_pump(w, c, c.tls_side, moved)


cdef int ktls_pump(Worker *w, Conn *c, int d, Py_ssize_t *moved) noexcept nogil:
    # Direction d of an offloaded connection while OpenSSL has its turn (a control record,
    # or bytes it read before the switch): SSL_read serves the TLS side, until it says
    # WANT_READ. The other direction keeps its plain pump, but waits while OpenSSL owes
    # a write (an answer to a KeyUpdate that the socket had no room for).
    cdef int rc
    if d != c.tls_side:
        if c.tls_want[c.tls_side] == READY_WRITE:
            return PUMP_STOPPED
        return pump_splice(w, c, d, moved) if c.dir[d].pipe_r >= 0 else pump_copy(w, c, d, moved)
    rc = pump_tls_read(w, c, moved)
    if rc == PUMP_STOPPED and not c.ktls_control and not SSL_has_pending(c.ssl):
        return PUMP_RESUMED         # go round: a waiting direction may write again
    return rc
