# Byte movers on plain sockets: one direction of one connection, src side d -> dst side
# 1 - d, by copy (through the worker's scratch buffer) or by splice (through a pipe). The
# TLS pumps, which move the same way through SSL_read / SSL_write, are tls/stream.pxi.
#
# Every pump keeps the same invariant: never read src while bytes read earlier wait for
# dst (in the owned buffer or in the pipe). So each direction holds at most one buffer or
# one pipe of bytes, and a reader that stalls stalls its writer: memory stays flat.
#
# Sockets are edge-triggered. READY_READ / READY_WRITE are set by events and cleared when
# a syscall says EAGAIN, READY_READ also by a short recv (read_short: the socket is empty,
# so reading it again would only find EAGAIN); a pump that stops early for its budget
# leaves them set and the connection is queued to run again without waiting for an edge
# that will not come. A short splice says nothing (the pipe may have run out of slots, and
# a kTLS socket splices a record at a time): splice reads on to EAGAIN.
#
# Return convention (loop/types.pxd): a pump adds the bytes it moved (read from src, or
# delivered to dst from the owned buffer) to *moved and returns why it stopped, by name:
# PUMP_STOPPED, PUMP_EOF, PUMP_PROMOTED, PUMP_DEMOTED; or, fatal for the connection,
# -errno (HAProxy's convention) or PUMP_NO_BUFFER. It never raises and never closes.


cdef Py_ssize_t flush_owned(Worker *w, Conn *c, int d) noexcept nogil:
    # Send direction d's owned buffer to side 1 - d. >0 sent, 0 dst full, <0 -errno.
    # The buffer goes back to the pool once empty.
    cdef Dir *dr = &c.dir[d]
    cdef Py_ssize_t s
    if not c.ready[1 - d] & READY_WRITE:
        return 0
    s = send(c.fd[1 - d], dr.buf + dr.buf_off, dr.buf_len, MSG_NOSIGNAL)
    if s < 0:
        if errno == EAGAIN:
            c.ready[1 - d] &= ~READY_WRITE
            return 0
        return -errno
    count_delivered(w, c, d, s, False)
    dr.buf_off += <uint32_t>s
    dr.buf_len -= <uint32_t>s
    if dr.buf_len:
        # A short send means the socket buffer is full: wait for EPOLLOUT.
        c.ready[1 - d] &= ~READY_WRITE
    else:
        buf_put(w, dr.buf)
        dr.buf = NULL
        dr.buf_off = 0
    return s


cdef bint dir_try_promote(Worker *w, Conn *c, Dir *dr) noexcept nogil:
    # Give dr a pipe from the pool. The owned buffer must be empty: bytes must leave in
    # the order they came.
    if dr.buf_len or dr.no_pipe:
        return False
    if pipe_get(w, &dr.pipe_r, &dr.pipe_w) < 0:
        dr.pipe_r = -1
        dr.pipe_w = -1
        dr.no_pipe = 1
        w.wctr.pipes_exhausted += 1
        return False
    dr.pipe_bytes = 0
    dr.small_fills = 0
    conn_ctr(w, c).splice_promoted += 1
    return True


cdef int pump_copy(Worker *w, Conn *c, int d, Py_ssize_t *moved) noexcept nogil:
    # recv into the worker's scratch buffer and send at once; only what dst refuses is
    # copied into an owned buffer, which is flushed before src is read again.
    cdef Dir *dr = &c.dir[d]
    cdef int src = c.fd[d]
    cdef int dst = c.fd[1 - d]
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t n, s
    if dr.buf_len:
        total = flush_owned(w, c, d)
        if total < 0:
            return <int>total
        if total == 0 or dr.buf_len:
            return pump_result(moved, total, PUMP_STOPPED)
    while not dr.eof and total < PUMP_BUDGET and c.ready[d] & READY_READ:
        if w.splice_mode == SPLICE_ALWAYS or (
            w.splice_mode == SPLICE_AUTO and dr.full_reads >= PROMOTE_AFTER
        ):
            if dir_try_promote(w, c, dr):
                return pump_result(moved, total, PUMP_PROMOTED)
        n = recv(src, w.scratch, SCRATCH_SIZE, 0)
        if n == 0:
            dr.eof = 1
            return pump_result(moved, total, PUMP_EOF)
        if n < 0:
            if errno == EAGAIN:
                c.ready[d] &= ~READY_READ
                conn_ctr(w, c).reads_empty += 1
                break
            if errno == EINTR:
                continue
            if errno == EIO and c.ktls and d == c.tls_side:
                moved[0] += total
                return tls_read_control(w, c, moved)
            return -errno
        dr.full_reads = dr.full_reads + 1 if n == SCRATCH_SIZE else 0
        if not (c.ktls and d == c.tls_side):
            read_short(c, d, n, SCRATCH_SIZE)
        total += n
        s = 0
        if c.ready[1 - d] & READY_WRITE:
            s = send(dst, w.scratch, n, MSG_NOSIGNAL)
            if s < 0:
                if errno != EAGAIN:
                    return -errno
                s = 0
            count_delivered(w, c, d, s, False)
        if s < n:
            if not dir_stash(w, dr, w.scratch + s, n - s):
                return PUMP_NO_BUFFER
            c.ready[1 - d] &= ~READY_WRITE
            break
    return pump_result(moved, total, PUMP_STOPPED)


cdef int pump_splice(Worker *w, Conn *c, int d, Py_ssize_t *moved) noexcept nogil:
    # src -> pipe -> dst with splice(2): no copy through user space. src is read only when
    # the pipe is empty, so EAGAIN from src always means "socket empty", never "pipe full"
    # (the ambiguity docs/HOTPATH.md §2.1 warns of). A short splice into dst is normal:
    # loop until dst says EAGAIN.
    cdef Dir *dr = &c.dir[d]
    cdef int src = c.fd[d]
    cdef int dst = c.fd[1 - d]
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t n
    while total < PUMP_BUDGET:
        if dr.pipe_bytes:
            if not c.ready[1 - d] & READY_WRITE:
                break
            n = splice(dr.pipe_r, NULL, dst, NULL, dr.pipe_bytes,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n < 0:
                if errno == EAGAIN:
                    c.ready[1 - d] &= ~READY_WRITE
                    break
                if errno == EINTR:
                    continue
                return -errno
            dr.pipe_bytes -= <uint32_t>n
            count_delivered(w, c, d, n, True)
            total += n
            continue
        if w.splice_mode == SPLICE_AUTO and dr.small_fills >= DEMOTE_AFTER:
            # The stream went quiet: hand the (empty) pipe back, copy small bytes again.
            pipe_put(w, dr.pipe_r, dr.pipe_w, True)
            dr.pipe_r = -1
            dr.pipe_w = -1
            dr.full_reads = 0
            conn_ctr(w, c).splice_demoted += 1
            return pump_result(moved, total, PUMP_DEMOTED)
        if dr.eof or not c.ready[d] & READY_READ:
            break
        n = splice(src, NULL, dr.pipe_w, NULL, <size_t>w.pipe_size,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n == 0:
            dr.eof = 1
            return pump_result(moved, total, PUMP_EOF)
        if n < 0:
            if errno == EAGAIN:
                c.ready[d] &= ~READY_READ
                conn_ctr(w, c).reads_empty += 1
                break
            if errno == EINTR:
                continue
            if errno == EINVAL and c.ktls and d == c.tls_side:
                # Not an unsupported splice: a non-data TLS record is next (HAProxy
                # 755436920).
                moved[0] += total
                return tls_read_control(w, c, moved)
            return -errno
        dr.small_fills = dr.small_fills + 1 if n < MIN_SPLICE else 0
        dr.pipe_bytes += <uint32_t>n
        total += n
    return pump_result(moved, total, PUMP_STOPPED)


cdef int stalled_source_failed(Worker *w, Conn *c) noexcept nogil:
    # A source is not read while the bytes it sent earlier wait for their destination (the
    # invariant above), so a reset there would go unnoticed until the destination drains,
    # or until the idle timeout. A side that reported a FIN or an error (READY_HUP) while
    # its direction is stalled is asked for its error: 0 none, else the pump's fatal
    # result (through tls_fatal on the TLS side, which names a server's reset or alert).
    cdef int d
    cdef int err
    cdef socklen_t errlen
    for d in range(2):
        if not c.ready[d] & READY_HUP or (c.dir[d].buf_len == 0 and c.dir[d].pipe_bytes == 0):
            continue
        err = 0
        errlen = sizeof(err)
        if getsockopt(c.fd[d], SOL_SOCKET, SO_ERROR, &err, &errlen) < 0 or err == 0:
            continue
        if c.ssl != NULL and d == c.tls_side and not c.ktls:
            set_errno(err)
            return tls_fatal(w, c, SSL_ERROR_SYSCALL)
        return -err
    return 0
