# Reads on a TLS socket that OpenSSL reads itself (a socket BIO, which kTLS needs): at
# most one read per record, and no read that is known to find nothing.
#
# Without read-ahead OpenSSL reads each record in two reads, its 5-byte header and then its
# body, and the loop's SSL_read after the last record reads the socket once more, for an
# EAGAIN. Once the handshake is over, and where the kernel does not decrypt, each
# connection gets read-ahead (OpenSSL reads as much as its record buffer holds) and a
# callback on the socket BIO that sees each read return: a short one empties the socket
# (read_short, as for the plain pumps), so the next SSL_read is called only when OpenSSL
# still holds bytes (SSL_has_pending) or an edge brings more (tls_may_read).
#
# Not during the handshake nor on a kTLS connection: OpenSSL hands the receive side to
# the kernel only if its buffer holds no partial record at the switch (docs/HOTPATH.md
# §1.5), and a kTLS read stops at a record boundary, so a short one says nothing. The
# handshake reads record by record, so nothing is buffered when read-ahead starts.


cdef long on_socket_read(BIO *b, int oper, const char *argp, size_t n, int argi,
                         long argl, int ret, size_t *processed) noexcept nogil:
    # The socket BIO's callback, around each of its calls: after a read that returned
    # bytes, a short one clears READY_READ of the TLS side (a full one sets it: there may
    # be more). ret is passed on unchanged.
    cdef Conn *c
    if oper == (BIO_CB_READ | BIO_CB_RETURN) and ret > 0:
        c = <Conn *>BIO_get_callback_arg(b)
        if processed[0] < n:
            read_short(c, c.tls_side, <Py_ssize_t>processed[0], n)
        else:
            c.ready[c.tls_side] |= READY_READ
    return ret


cdef void tls_lean_reads(Conn *c) noexcept nogil:
    # The handshake is done: read-ahead and the read callback, unless the kernel decrypts.
    cdef BIO *b
    if c.ktls:
        return
    b = SSL_get_rbio(c.ssl)
    SSL_set_read_ahead(c.ssl, 1)
    BIO_set_callback_arg(b, <char *>c)
    BIO_set_callback_ex(b, on_socket_read)
