# TLS failures in words: which cause, and one human line for the error event. The error
# queue, the verify result and errno each tell part of it; these functions read them in
# that order and leave the queue empty.


cdef inline const char *peer_name(Conn *c) noexcept nogil:
    # Who is at the TLS end of c, for reasons: a connector's server, or a tunnel exit's
    # client (the entry node).
    return "the server" if c.tls_side == SIDE_UPSTREAM else "the client"


cdef inline bint is_alert(unsigned long e) noexcept nogil:
    # A received alert is queued as an SSL error with reason 1000 + its code.
    return (e != 0 and ERR_GET_LIB(e) == ERR_LIB_SSL
            and SSL_AD_REASON_OFFSET <= ERR_GET_REASON(e) < SSL_AD_REASON_OFFSET + 256)


cdef void alert_reason(unsigned long e, const char *peer, char *reason,
                       size_t reason_len) noexcept nogil:
    # e is a queued "alert received" error (is_alert). OpenSSL 3.0's alert names stop
    # before TLS 1.3's (116 is "unknown"); the error's own reason string has them
    # ("tlsv13 alert certificate required").
    cdef int code = ERR_GET_REASON(e) - SSL_AD_REASON_OFFSET
    cdef const char *name = SSL_alert_desc_string_long(code)
    cdef const char *text = ERR_reason_error_string(e)
    if strcmp(name, "unknown") == 0 and text != NULL:
        name = text
    snprintf(reason, reason_len, "%s sent alert %d: %s", peer, code, name)


cdef uint8_t tls_classify(SSL *ssl, const char *peer, int ssl_err, int err, char *reason,
                          size_t reason_len) noexcept nogil:
    # A failed handshake -> (cause, one human line). Leaves the error queue empty.
    cdef long verify = SSL_get_verify_result(ssl)
    cdef unsigned long e = ERR_peek_last_error()
    cdef int r = ERR_GET_REASON(e) if e else 0
    cdef uint8_t cause = CAUSE_TLS_HANDSHAKE_FAILED
    if ssl_err == SSL_ERROR_SSL and verify != X509_V_OK:
        snprintf(reason, reason_len, "certificate verify failed: %s",
                 X509_verify_cert_error_string(verify))
        if verify in (X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
                      X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                      X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
                      X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
                      X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE):
            cause = CAUSE_TLS_UNKNOWN_CA
        elif verify in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
            cause = CAUSE_TLS_HOSTNAME_MISMATCH
        elif verify in (X509_V_ERR_CERT_HAS_EXPIRED, X509_V_ERR_CERT_NOT_YET_VALID):
            cause = CAUSE_TLS_CERT_EXPIRED
        else:
            cause = CAUSE_TLS_VERIFY_FAILED
    elif is_alert(e):
        alert_reason(e, peer, reason, reason_len)
        cause = CAUSE_TLS_ALERT
        if ERR_GET_REASON(e) - SSL_AD_REASON_OFFSET == SSL_AD_NO_APPLICATION_PROTOCOL:
            cause = CAUSE_TLS_ALPN_REFUSED      # it takes none of the protocols offered
    elif e and ERR_GET_LIB(e) == ERR_LIB_SSL and r == SSL_R_NO_APPLICATION_PROTOCOL:
        snprintf(reason, reason_len, "%s offered none of the alpn protocols", peer)
        cause = CAUSE_TLS_ALPN_REFUSED
    elif e and ERR_GET_LIB(e) == ERR_LIB_SSL and r == SSL_R_UNEXPECTED_EOF_WHILE_READING:
        snprintf(reason, reason_len, "%s closed the connection during the handshake", peer)
    elif e and ERR_GET_LIB(e) == ERR_LIB_SSL and r == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        snprintf(reason, reason_len, "%s sent no certificate: an exit admits only entry"
                 " nodes with an allowed identity", peer)
        cause = CAUSE_TLS_VERIFY_FAILED
    elif ssl_err == SSL_ERROR_SYSCALL and err:
        snprintf(reason, reason_len, "connection error during the handshake: %s",
                 strerror(err))
    elif e:
        ERR_error_string_n(e, reason, reason_len)
    else:
        snprintf(reason, reason_len, "handshake failed (SSL error %d)", ssl_err)
    ERR_clear_error()
    return cause


cdef void tls_handshake_failed(Worker *w, int32_t i, int ssl_err) noexcept nogil:
    # The handshake failed (ssl_err from SSL_get_error): its cause and reason, then
    # conn_fail. [may close]
    cdef Conn *c = &w.conns[i]
    cdef int err = errno
    cdef char reason[REASON_LEN]
    cdef unsigned char b64[48]
    cdef uint8_t cause = tls_classify(c.ssl, peer_name(c), ssl_err, err, reason,
                                      sizeof(reason))
    cdef Route *r = &w.routes[c.route]
    if w.refused_classical:
        # pq = "require": a classical group, refused before our certificate went out.
        pq_reason(c, reason, REASON_LEN)
        cause = CAUSE_TLS_PQ_REQUIRED
    elif (r.kind == ROUTE_EXIT and r.srv.pq_mode == PQ_REQUIRE
          and pq_refused_client(c, reason, REASON_LEN)):
        cause = CAUSE_TLS_PQ_REQUIRED
    elif w.refused_pin_set:
        # The peer's key is not one we know: say which it is, so that an operator can
        # tell a node not yet allowed (or a rotated key) from a stranger.
        EVP_EncodeBlock(b64, w.refused_pin, 32)
        if c.tls_side == SIDE_CLIENT:
            snprintf(reason, REASON_LEN, "the client's key sha256/%s is not in allow%s",
                     <char *>b64, " and its certificate does not chain to the ca"
                     if w.routes[c.route].srv.has_ca else "")
        else:
            snprintf(reason, REASON_LEN,
                     "the server's key matches no configured pin (it is sha256/%s)",
                     <char *>b64)
        cause = CAUSE_TLS_PIN_MISMATCH
    conn_fail(w, i, cause, err, reason)


cdef int tls_fatal(Worker *w, Conn *c, int ssl_err) noexcept nogil:
    # An SSL_* call on an established connection failed for good (ssl_err is neither
    # WANT_*): mark the TLS dead (no close_notify), record a tls_alert or tls_error event
    # (none for an exit's entry that merely reset), and return the -errno the pump passes on.
    cdef ErrorEntry *ev
    cdef unsigned long e
    cdef int err = errno if ssl_err == SSL_ERROR_SYSCALL and errno else ECONNRESET
    cdef char probe[64]
    c.tls_dead = 1
    if ssl_err == SSL_ERROR_SYSCALL:
        # The peer reset us. In TLS 1.3 it often said why first, in an alert our
        # handshake did not wait for (a refused client certificate arrives after our
        # Finished): one SSL_read brings that alert into the error queue.
        ERR_clear_error()
        SSL_read(c.ssl, probe, sizeof(probe))
    e = ERR_peek_last_error()
    if ssl_err == SSL_ERROR_SYSCALL and c.tls_side == SIDE_CLIENT and not is_alert(e):
        # A tunnel exit's client (the entry node) reset the stream without a word: its
        # own device reset, and resets propagate as resets. That is no failure towards a
        # server, and a plain connector does not log its device's reset either: the
        # caller counts it as one.
        ERR_clear_error()
        return -err
    if is_alert(e):
        ev = error_event(w, c, CAUSE_TLS_ALERT, EPROTO)
        if ev != NULL:
            alert_reason(e, peer_name(c), ev.reason, REASON_LEN)
    else:
        ev = error_event(w, c, CAUSE_TLS_ERROR,
                         err if ssl_err == SSL_ERROR_SYSCALL else EPROTO)
        if ev != NULL:
            if ssl_err == SSL_ERROR_SYSCALL:
                snprintf(ev.reason, REASON_LEN, "%s broke the TLS connection: %s",
                         peer_name(c), strerror(err))
            elif e:
                ERR_error_string_n(e, ev.reason, REASON_LEN)
    ERR_clear_error()
    return -err if ssl_err == SSL_ERROR_SYSCALL else -EPROTO


cdef void tls_truncated(Worker *w, Conn *c) noexcept nogil:
    # The peer closed TCP without close_notify: the stream may be cut short. The caller
    # forwards the FIN (the device decides); this says so in the error log.
    cdef ErrorEntry *ev
    ERR_clear_error()
    c.tls_dead = 1
    ev = error_event(w, c, CAUSE_TLS_TRUNCATED, 0)
    if ev != NULL:
        snprintf(ev.reason, REASON_LEN,
                 "%s closed TCP without close_notify: the stream may be truncated",
                 peer_name(c))
