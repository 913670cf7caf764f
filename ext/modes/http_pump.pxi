# The device -> server pump of an http_host = "rewrite" connector: recv into the
# connection's input buffer, http_step (modes/http.pxi) over it, SSL_write of each piece:
# a rewritten head from the scratch buffer, unchanged bytes from the input buffer.
#
# It keeps the pump conventions (loop/pump.pxi, tls/stream.pxi): bytes SSL_write did not
# take are kept in the direction's owned buffer, offered again first, and nothing is read
# or parsed while they wait, so a server that stops reading stops the device. A refusal is
# PUMP_HTTP_REFUSED, which conn_pump_failed turns into http_refuse. Connectors without the
# rewrite never come here (Conn.http is NULL: pump() in loop/conn.pxi).


cdef bint http_open(Worker *w, Conn *c) noexcept nogil:
    # c tracks its requests from now on; False: no memory.
    c.http = <Http *>calloc(1, sizeof(Http))
    return c.http != NULL


cdef void http_free(Worker *w, Conn *c) noexcept nogil:
    if c.http.inbuf != NULL:
        buf_put(w, c.http.inbuf)
    free(c.http)
    c.http = NULL


cdef int http_send(Worker *w, Conn *c, const char *p, size_t n) noexcept nogil:
    # SSL_write p[0:n]; what it does not take goes to the owned buffer. 0: all taken, 1:
    # the rest waits, <0: fatal (-errno, PUMP_NO_BUFFER).
    cdef size_t s = 0
    cdef Py_ssize_t k
    while s < n:
        k = tls_write(w, c, <char *>p + s, n - s)
        if k < 0:
            return <int>k
        if k == 0:
            break
        s += <size_t>k
    if s == n:
        return 0
    if not dir_stash(w, &c.dir[1 - c.tls_side], p + s, n - s):
        return PUMP_NO_BUFFER
    return 1


cdef int http_forward(Worker *w, Conn *c) noexcept nogil:
    # Everything in the input buffer that can be judged, forwarded. 0: done (what is left
    # is an incomplete head or line), 1: the server stopped taking bytes, <0: fatal or
    # PUMP_HTTP_REFUSED.
    cdef Http *h = c.http
    cdef Route *r = &w.routes[c.route]
    cdef Py_ssize_t k
    cdef size_t out_len = 0
    cdef int rc
    while h.in_off < h.in_len:
        k = http_step(h, <const uint8_t *>h.inbuf + h.in_off, h.in_len - h.in_off,
                      r.http_host, r.http_host_len, w.scratch, &out_len, &h.why)
        if k < 0:
            return PUMP_HTTP_REFUSED
        if k == 0:
            break
        if out_len:
            conn_ctr(w, c).http_rewritten += 1
            h.in_off += <uint32_t>k
            rc = http_send(w, c, w.scratch, out_len)
        else:
            rc = http_send(w, c, h.inbuf + h.in_off, <size_t>k)
            h.in_off += <uint32_t>k
        if rc != 0:
            return rc
    if h.in_off == h.in_len:
        buf_put(w, h.inbuf)             # nothing waits: an idle device holds no buffer
        h.inbuf = NULL
        h.in_off = 0
        h.in_len = 0
    return 0


cdef int pump_http_write(Worker *w, Conn *c, Py_ssize_t *moved) noexcept nogil:
    # Plain side -> TLS side with every request's Host rewritten; as pump_tls_write.
    cdef int src = 1 - c.tls_side
    cdef Dir *dr = &c.dir[src]
    cdef Http *h = c.http
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t n, k
    cdef int rc
    while total < PUMP_BUDGET:
        if dr.buf_len:
            k = tls_flush_owned(w, c)
            if k < 0:
                return <int>k
            if k == 0:
                break
            total += k
            continue
        if h.inbuf != NULL:
            rc = http_forward(w, c)
            if rc < 0:
                return rc
            if rc == 1:
                continue                    # the owned buffer says whether it can go on
        if c.out != NULL:
            # The records of the last chunk, sent before the plain side is read again.
            k = tls_out_drain(w, c)
            if k < 0:
                return <int>k
            if k == 0:
                break
        if dr.eof or not c.ready[src] & READY_READ:
            break
        if h.inbuf == NULL:
            h.inbuf = buf_get(w)
            if h.inbuf == NULL:
                return PUMP_NO_BUFFER
        elif h.in_off:
            memmove(h.inbuf, h.inbuf + h.in_off, h.in_len - h.in_off)
            h.in_len -= h.in_off
            h.in_off = 0
        if h.in_len == SCRATCH_SIZE:
            # Cannot happen (a head or line this long was refused): never recv 0 bytes,
            # which would read as EOF.
            h.why = "request head too long"
            return PUMP_HTTP_REFUSED
        n = recv(c.fd[src], h.inbuf + h.in_len, SCRATCH_SIZE - h.in_len, 0)
        if n == 0:
            dr.eof = 1                      # an unfinished head is dropped, never sent
            return pump_result(moved, total, PUMP_EOF)
        if n < 0:
            if errno == EAGAIN:
                c.ready[src] &= ~READY_READ
                conn_ctr(w, c).reads_empty += 1
                if h.in_len == 0:
                    buf_put(w, h.inbuf)
                    h.inbuf = NULL
                break
            if errno == EINTR:
                continue
            return -errno
        read_short(c, src, n, SCRATCH_SIZE - h.in_len)
        h.in_len += <uint32_t>n
        total += n
    return pump_result(moved, total, PUMP_STOPPED)


cdef void http_refuse(Worker *w, int32_t i) noexcept nogil:
    # The device's request was refused (c.http.why): an event, 400 to the device, a
    # close_notify to the server, which got none of it, and a lingering close. [may close]
    cdef Conn *c = &w.conns[i]
    cdef const char *why = c.http.why
    cdef ErrorEntry *ev = error_event(w, c, CAUSE_HTTP_REQUEST, EPROTO)
    cdef char reply[REASON_LEN + 128]
    cdef int n
    if why == NULL:
        why = "malformed request"
    if ev != NULL:
        snprintf(ev.reason, REASON_LEN, "%s (answered with 400 Bad Request)", why)
    n = snprintf(reply, sizeof(reply), "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain"
                 "\r\nContent-Length: %d\r\nConnection: close\r\n\r\nrelaycore: %s\n",
                 <int>(strlen(why) + 12), why)
    send(c.fd[SIDE_CLIENT], reply, <size_t>n, MSG_NOSIGNAL)
    conn_linger(w, i)
