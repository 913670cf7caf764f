# TLS on one connection: handshake, its failures in words, the two TLS pumps, close_notify.
#
# The TLS side (Conn.tls_side) is the upstream for a connector and the client (the entry
# node) for a tunnel exit; the other side is plain. The direction whose source is the TLS
# side starts in SSL_read, the other ends in SSL_write. Conn.tls_want[d] is the readiness
# of the TLS socket that direction d's next SSL_* call waits for: usually READ for
# SSL_read and WRITE for SSL_write, but either can ask for the other (tls_want[0] is also
# the handshake's). A WANT_* answer means the socket BIO saw EAGAIN, so the matching ready
# bit is cleared and the next edge brings the call back.
#
# kTLS (Linux, OpenSSL 3.0, TLS 1.2 only: see on_info in tls.pxi): when the kernel took
# both directions, the upstream fd carries plaintext and the plain pumps (copy, splice)
# serve it. SSL_write is then bypassed on purpose: under kTLS TX, OpenSSL keeps the
# *caller's* pointer as its pending buffer and a retry from another buffer would send the
# wrong bytes (hotpath.md §1.7). A non-data record (alert, close_notify) makes recv fail
# with EIO and splice with EINVAL; one SSL_read then consumes it (tls_read_control).
# Bytes OpenSSL read ahead before the switch are drained first (SSL_has_pending).
#
# SSL_write with partial writes returns after each record. When it says WANT_WRITE, the
# bytes it was given must be offered again, same content and length (with
# ACCEPT_MOVING_WRITE_BUFFER the pointer may change): they are kept in the direction's
# owned buffer until OpenSSL takes them.

cdef inline const char *peer_name(Conn *c) noexcept nogil:
    # Who is at the TLS end of c, for reasons: a connector's server, or a tunnel exit's
    # client (the entry node).
    return "the server" if c.tls_side == SIDE_UPSTREAM else "the client"


cdef void alert_reason(unsigned long e, const char *peer, char *reason,
                       size_t reason_len) noexcept nogil:
    # e is a queued "alert received" error (reason 1000 + the alert's code). OpenSSL
    # 3.0's alert names stop before TLS 1.3's (116 is "unknown"); the error's own reason
    # string has them ("tlsv13 alert certificate required").
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
    elif e and ERR_GET_LIB(e) == ERR_LIB_SSL and SSL_AD_REASON_OFFSET <= r < (
            SSL_AD_REASON_OFFSET + 256):
        # A received alert is queued as reason 1000 + its code.
        alert_reason(e, peer, reason, reason_len)
        cause = CAUSE_TLS_ALERT
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


cdef void conn_tls_fail(Worker *w, int32_t i, int ssl_err) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef int err = errno
    cdef char reason[REASON_LEN]
    cdef unsigned char b64[48]
    cdef uint8_t cause = tls_classify(c.ssl, peer_name(c), ssl_err, err, reason,
                                      sizeof(reason))
    if w.refused_pin_set:
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


cdef void conn_tls_start(Worker *w, int32_t i) noexcept nogil:
    # TCP to the upstream is up: create the SSL and send the ClientHello.
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    ERR_clear_error()
    c.ssl = SSL_new(r.tls_ctx)
    if c.ssl == NULL or SSL_set_fd(c.ssl, c.fd[SIDE_UPSTREAM]) != 1:
        conn_fail(w, i, CAUSE_TLS_HANDSHAKE_FAILED, ENOMEM, NULL)
        return
    SSL_set_connect_state(c.ssl)
    SSL_set_app_data(c.ssl, w)          # on_verify_server reports a refused key to w
    if r.tls.send_sni:
        SSL_set_tlsext_host_name(c.ssl, r.tls.server_name)
    if r.tls.check_host:
        SSL_set1_host(c.ssl, r.tls.server_name)
    elif r.tls.check_ip:
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c.ssl), r.tls.server_name)
    session_offer(r.tls, c.ssl)
    c.state = CONN_HANDSHAKING
    c.tls_want[0] = READY_WRITE
    c.tls_want[1] = READY_READ
    timer_arm(w, i, w.now_ms + w.handshake_timeout_ms)
    conn_handshake(w, i)


cdef void conn_handshake(Worker *w, int32_t i) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    cdef int rc, e
    cdef uint8_t ktls_mode
    ERR_clear_error()
    w.refused_pin_set = 0
    rc = SSL_do_handshake(c.ssl)
    if rc == 1:
        # Pins were checked inside the handshake (on_verify_server, on_verify_client).
        conn_ctr(w, c).handshakes += 1
        if SSL_session_reused(c.ssl):
            conn_ctr(w, c).handshakes_resumed += 1
        ktls_mode = r.srv.ktls_mode if r.kind == ROUTE_EXIT else r.tls.ktls_mode
        if ktls_mode != KTLS_OFF:
            c.ktls = (BIO_get_ktls_send(SSL_get_wbio(c.ssl)) == 1
                      and BIO_get_ktls_recv(SSL_get_rbio(c.ssl)) == 1)
            if c.ktls:
                conn_ctr(w, c).ktls_conns += 1
            else:
                conn_ctr(w, c).ktls_declined += 1
        c.tls_want[1 - c.tls_side] = READY_WRITE
        c.tls_want[c.tls_side] = READY_READ
        if r.kind == ROUTE_EXIT:
            exit_handshake_done(w, i)
        else:
            conn_relaying(w, i)
        return
    e = SSL_get_error(c.ssl, rc)
    if e == SSL_ERROR_WANT_READ:
        c.ready[c.tls_side] &= ~READY_READ
        c.tls_want[0] = READY_READ
    elif e == SSL_ERROR_WANT_WRITE:
        c.ready[c.tls_side] &= ~READY_WRITE
        c.tls_want[0] = READY_WRITE
    else:
        conn_tls_fail(w, i, e)


cdef Py_ssize_t tls_blocked(Worker *w, Conn *c, int d, int ssl_err) noexcept nogil:
    # After an SSL_* call returned <= 0 on a relaying connection: 0 if it only has to
    # wait (ready bit cleared, tls_want set), else -errno (fatal, event recorded).
    cdef ErrorEvent *ev
    cdef unsigned long e
    cdef int err, r
    cdef char probe[64]
    if ssl_err == SSL_ERROR_WANT_READ:
        c.ready[c.tls_side] &= ~READY_READ
        c.tls_want[d] = READY_READ
        return 0
    if ssl_err == SSL_ERROR_WANT_WRITE:
        c.ready[c.tls_side] &= ~READY_WRITE
        c.tls_want[d] = READY_WRITE
        return 0
    err = errno if ssl_err == SSL_ERROR_SYSCALL and errno else ECONNRESET
    c.tls_dead = 1
    conn_ctr(w, c).tls_errors += 1
    if ssl_err == SSL_ERROR_SYSCALL:
        # The peer reset us. In TLS 1.3 it often said why first, in an alert our
        # handshake did not wait for (a refused client certificate arrives after our
        # Finished): one SSL_read brings that alert into the error queue.
        ERR_clear_error()
        SSL_read(c.ssl, probe, sizeof(probe))
    e = ERR_peek_last_error()
    r = ERR_GET_REASON(e) if e else 0
    if e and ERR_GET_LIB(e) == ERR_LIB_SSL and SSL_AD_REASON_OFFSET <= r < (
            SSL_AD_REASON_OFFSET + 256):
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


cdef Py_ssize_t tls_write(Worker *w, Conn *c, char *p, size_t n) noexcept nogil:
    # >0 bytes OpenSSL took, 0 it waits, <0 fatal.
    cdef int d = 1 - c.tls_side
    cdef int k
    if not c.ready[c.tls_side] & c.tls_want[d]:
        return 0
    ERR_clear_error()
    k = SSL_write(c.ssl, p, <int>n)
    if k > 0:
        c.tls_want[d] = READY_WRITE
        count_delivered(w, c, d, k, False)
        return k
    return tls_blocked(w, c, d, SSL_get_error(c.ssl, k))


cdef Py_ssize_t pump_tls_write(Worker *w, Conn *c) noexcept nogil:
    # plain side -> TLS side: recv from the plain socket, SSL_write to the TLS one.
    cdef int src = 1 - c.tls_side
    cdef Dir *dr = &c.dir[src]
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t n, s, k
    while total < PUMP_BUDGET:
        if dr.buf_len:
            k = tls_write(w, c, dr.buf + dr.buf_off, dr.buf_len)
            if k <= 0:
                return k if k < 0 else total
            dr.buf_off += <uint32_t>k
            dr.buf_len -= <uint32_t>k
            total += k
            if dr.buf_len == 0:
                buf_put(w, dr.buf)
                dr.buf = NULL
                dr.buf_off = 0
            continue
        if dr.eof or not c.ready[src] & READY_READ:
            break
        n = recv(c.fd[src], w.scratch, SCRATCH_SIZE, 0)
        if n == 0:
            dr.eof = 1
            return total if total else 1
        if n < 0:
            if errno == EAGAIN:
                c.ready[src] &= ~READY_READ
                break
            if errno == EINTR:
                continue
            return -errno
        total += n
        s = 0
        while s < n:
            k = tls_write(w, c, w.scratch + s, n - s)
            if k < 0:
                return k
            if k == 0:
                break
            s += k
        if s < n:
            dr.buf = buf_get(w)
            if dr.buf == NULL:
                return -ENOMEM
            memcpy(dr.buf, w.scratch + s, n - s)
            dr.buf_off = 0
            dr.buf_len = <uint32_t>(n - s)
            return total
    return total


cdef Py_ssize_t pump_tls_read(Worker *w, Conn *c) noexcept nogil:
    # TLS side -> plain side: SSL_read (a record at a time), send to the plain socket.
    # Loops until OpenSSL says WANT_*: with edge-triggered epoll, bytes left inside
    # OpenSSL (SSL_has_pending) would never raise another event. It stops early only
    # when the plain side is full, and then READ stays set so the next run resumes here.
    cdef int src = c.tls_side
    cdef int dst = 1 - src
    cdef Dir *dr = &c.dir[src]
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t n, s
    cdef int e
    cdef ErrorEvent *ev
    if dr.buf_len:
        total = flush_owned(w, c, src)
        if total < 0 or dr.buf_len:
            return total
    while not dr.eof and total < PUMP_BUDGET and c.ready[src] & c.tls_want[src]:
        ERR_clear_error()
        n = SSL_read(c.ssl, w.scratch, SCRATCH_SIZE)
        if n <= 0:
            e = SSL_get_error(c.ssl, <int>n)
            if e == SSL_ERROR_ZERO_RETURN:
                dr.eof = 1
                return total if total else 1
            if e == SSL_ERROR_SSL and ERR_GET_REASON(
                    ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING:
                # TCP FIN without close_notify: the stream may be cut short. Forward the
                # FIN (the device decides) and say so in the error log.
                ERR_clear_error()
                c.tls_dead = 1
                conn_ctr(w, c).tls_truncated += 1
                ev = error_event(w, c, CAUSE_TLS_TRUNCATED, 0)
                if ev != NULL:
                    snprintf(ev.reason, REASON_LEN,
                             "%s closed TCP without close_notify: the stream may be "
                             "truncated", peer_name(c))
                dr.eof = 1
                return total if total else 1
            s = tls_blocked(w, c, src, e)
            if s == 0 and e == SSL_ERROR_WANT_READ:
                # RELEASE_BUFFERS frees the read buffer only after a record is consumed;
                # the read that ends in WANT_READ allocates it again (17.7 KB per idle
                # connection, measured with heaptrack). Hand it back while we wait. That is
                # a malloc per wake-up on a busy connection: no difference in the TLS bulk
                # or echo benchmarks, within their noise.
                SSL_free_buffers(c.ssl)
            return s if s < 0 else total
        c.tls_want[src] = READY_READ
        total += n
        s = 0
        if c.ready[dst] & READY_WRITE:
            s = send(c.fd[dst], w.scratch, n, MSG_NOSIGNAL)
            if s < 0:
                if errno != EAGAIN:
                    return -errno
                s = 0
            count_delivered(w, c, src, s, False)
        if s < n:
            dr.buf = buf_get(w)
            if dr.buf == NULL:
                return -ENOMEM
            memcpy(dr.buf, w.scratch + s, n - s)
            dr.buf_off = 0
            dr.buf_len = <uint32_t>(n - s)
            c.ready[dst] &= ~READY_WRITE
            return total
    return total


cdef Py_ssize_t tls_read_control(Worker *w, Conn *c) noexcept nogil:
    # On a kTLS receive socket the next record is not data (recv said EIO, splice EINVAL):
    # let OpenSSL read it with the record-type cmsg. The caller's buffer and pipe are
    # empty (it reads the source only then), so data OpenSSL returns keeps its order.
    cdef Dir *dr = &c.dir[c.tls_side]
    conn_ctr(w, c).ktls_control_records += 1
    if dr.buf_len or dr.pipe_bytes:
        return -EPROTO
    return pump_tls_read(w, c)


cdef int tls_close_notify(Worker *w, Conn *c) noexcept nogil:
    # The plain side said EOF: send close_notify before the FIN. 1 done, 0 wait, <0 fatal.
    # After a fatal error OpenSSL must not be asked to shut down (SSL_get_error(3)).
    cdef int d = 1 - c.tls_side
    cdef int r
    if c.tls_dead:
        return 1
    if not c.ready[c.tls_side] & c.tls_want[d]:
        return 0
    ERR_clear_error()
    r = SSL_shutdown(c.ssl)
    if r >= 0:
        return 1
    return <int>tls_blocked(w, c, d, SSL_get_error(c.ssl, r))
