# Several TLS records per send: OpenSSL writes each record with its own write() (partial
# writes return after every record), so a 64 KiB chunk from the plain side cost four
# syscalls. Where the kernel does not encrypt, c.ssl's write BIO becomes this one
# (tls_gather_start, after the handshake): during a batch (the plain->TLS pump, one
# chunk at a time) records are appended to c.out, a pooled buffer, and sent with one send
# at the end (tls_out_flush). Outside a batch (alerts, close_notify, a KeyUpdate, the
# exit's replies) it writes through like the socket BIO, after whatever c.out still holds,
# so the records keep their order.
#
# Backpressure stays exact: what the socket does not take stays in c.out, READY_WRITE is
# cleared, and the pump reads nothing more from the plain side until c.out is sent. A
# write that finds no room (c.out full of bytes the socket refused) asks OpenSSL to retry,
# as a full socket does: SSL_write says WANT_WRITE and keeps its record. The pool buffer
# goes back once empty, so an idle connection holds none.
#
# Not with kTLS TX: OpenSSL sends through the kernel's socket BIO, and its pointer rules
# (docs/HOTPATH.md §1.7) keep SSL_write on owned buffers there.

cdef enum:
    # Plaintext the gathered pump reads at a time: its records (4 of at most 16 KiB, each
    # with at most 256 bytes of header, nonce, tag or padding) fit in one SCRATCH_SIZE.
    GATHER_READ = SCRATCH_SIZE - 4 * 256


cdef int out_send(Conn *c) noexcept nogil:
    # Send c.out to the TLS socket: 1 all gone (c.out kept, empty), 0 the socket is full
    # (READY_WRITE cleared; a short send says so too), <0 -errno.
    cdef Py_ssize_t s
    while c.out_len:
        if not c.ready[c.tls_side] & READY_WRITE:
            return 0
        s = send(c.fd[c.tls_side], c.out + c.out_off, c.out_len, MSG_NOSIGNAL)
        if s < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                c.ready[c.tls_side] &= ~READY_WRITE
                return 0
            return -errno
        c.out_off += <uint32_t>s
        c.out_len -= <uint32_t>s
        if c.out_len:
            c.ready[c.tls_side] &= ~READY_WRITE
            return 0
    c.out_off = 0
    return 1


cdef int tls_out_flush(Worker *w, Conn *c) noexcept nogil:
    # Send the gathered records: 1 none left (the buffer back to the pool), 0 the socket
    # is full (READY_WRITE cleared), <0 -errno.
    cdef int r
    if c.out == NULL:
        return 1
    r = out_send(c)
    if r == 1:
        buf_put(w, c.out)
        c.out = NULL
    return r


cdef int tls_out_drain(Worker *w, Conn *c) noexcept nogil:
    # tls_out_flush for the pumps: a failed send is a TLS failure (tls_fatal: the peer's
    # alert, if it sent one before it reset, becomes the event), as when OpenSSL wrote.
    cdef int r = tls_out_flush(w, c)
    if r < 0:
        return tls_fatal(w, c, SSL_ERROR_SYSCALL)   # errno is still send's
    return r


cdef int gather_write(BIO *b, const char *data, size_t n, size_t *written) noexcept nogil:
    # The BIO's write: 1 and *written, or 0 (retry flag set: wait for room; unset: fatal,
    # errno says why). Gathering: append to c.out; else send, after what c.out holds.
    cdef Conn *c = <Conn *>BIO_get_data(b)
    cdef Worker *w = <Worker *>SSL_get_app_data(c.ssl)
    cdef Py_ssize_t s
    cdef int r
    BIO_clear_retry_flags(b)
    if c.out != NULL and (not c.gathering or c.out_off + c.out_len + n > SCRATCH_SIZE):
        r = out_send(c) if c.gathering else tls_out_flush(w, c)
        if r < 0:
            return 0                        # errno is send's
        if r == 0:
            if not c.gathering or c.out_len + n > SCRATCH_SIZE:
                BIO_set_retry_write(b)      # older records first: wait for room
                return 0
            memmove(c.out, c.out + c.out_off, c.out_len)
            c.out_off = 0
    if c.gathering and n <= SCRATCH_SIZE:
        if c.out == NULL:
            c.out = buf_get(w)
            if c.out == NULL:
                return 0                        # errno is malloc's ENOMEM
            c.out_off = 0
            c.out_len = 0
        memcpy(c.out + c.out_off + c.out_len, data, n)
        c.out_len += <uint32_t>n
        written[0] = n
        return 1
    if not c.ready[c.tls_side] & READY_WRITE:
        BIO_set_retry_write(b)
        return 0
    s = send(c.fd[c.tls_side], data, n, MSG_NOSIGNAL)
    if s < 0:
        if errno == EAGAIN:
            c.ready[c.tls_side] &= ~READY_WRITE
            BIO_set_retry_write(b)
        elif errno == EINTR:
            BIO_set_retry_write(b)
        return 0
    if <size_t>s < n:
        c.ready[c.tls_side] &= ~READY_WRITE
    written[0] = <size_t>s
    return 1


cdef long gather_ctrl(BIO *b, int cmd, long num, void *ptr) noexcept nogil:
    # BIO_flush sends c.out (OpenSSL flushes after its handshake messages and alerts);
    # nothing else is asked of a write BIO that is not a socket's.
    cdef Conn *c = <Conn *>BIO_get_data(b)
    cdef int r
    if cmd == BIO_CTRL_FLUSH:
        BIO_clear_retry_flags(b)
        r = tls_out_flush(<Worker *>SSL_get_app_data(c.ssl), c)
        if r == 0:
            BIO_set_retry_write(b)
        return 1 if r == 1 else 0           # r < 0: errno is send's
    if cmd == BIO_CTRL_WPENDING:
        return c.out_len
    return 0


cdef BIO_METHOD *gather_method_new() noexcept nogil:
    # The gather BIO's methods: write and ctrl (it is never read).
    cdef BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                      "relaycore gather")
    if m != NULL:
        BIO_meth_set_write_ex(m, gather_write)
        BIO_meth_set_ctrl(m, gather_ctrl)
    return m


# Made at import (with the GIL), shared by every worker and never freed.
cdef BIO_METHOD *GATHER_METHOD = gather_method_new()


cdef void tls_gather_start(Conn *c) noexcept nogil:
    # After the handshake, where the kernel does not encrypt: the gather BIO writes.
    cdef BIO *b
    if c.ktls or c.ktls_tx_only or GATHER_METHOD == NULL:
        return
    b = BIO_new(GATHER_METHOD)
    if b == NULL:
        return                          # the socket BIO goes on writing: correct, slower
    BIO_set_data(b, c)
    BIO_set_init(b, 1)
    # No kTLS behind a BIO that is not the socket's: a later key change must not try.
    SSL_clear_options(c.ssl, SSL_OP_ENABLE_KTLS)
    SSL_set0_wbio(c.ssl, b)
    c.gather = 1
