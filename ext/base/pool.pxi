# Owned buffers and pipes, pooled per worker.
#
# An owned buffer exists only while a direction holds bytes that dst refused; idle
# connections own none. A pipe exists only while a direction streams
# (docs/HOTPATH.md §2.4: an empty pipe still costs ~2.5 KiB of kernel memory and two
# fds). Only empty pipes go back to the pool; one that still holds bytes is closed.


cdef char *buf_get(Worker *w) noexcept nogil:
    if w.buf_pool_len:
        w.buf_pool_len -= 1
        return w.buf_pool[w.buf_pool_len]
    return <char *>malloc(SCRATCH_SIZE)


cdef void buf_put(Worker *w, char *buf) noexcept nogil:
    if w.buf_pool_len < BUF_POOL_MAX:
        w.buf_pool[w.buf_pool_len] = buf
        w.buf_pool_len += 1
    else:
        free(buf)


cdef bint dir_stash(Worker *w, Dir *dr, const void *data, size_t n) noexcept nogil:
    # Keep n bytes (at most SCRATCH_SIZE) in dr's owned buffer, which must be empty: they
    # go out first in this direction, ahead of anything read later. False: no buffer.
    if n == 0:
        return True
    dr.buf = buf_get(w)
    if dr.buf == NULL:
        return False
    memcpy(dr.buf, data, n)
    dr.buf_off = 0
    dr.buf_len = <uint32_t>n
    return True


cdef int pipe_get(Worker *w, int *r, int *wr) noexcept nogil:
    cdef int fds[2]
    if w.pipe_pool_len:
        w.pipe_pool_len -= 1
        r[0] = w.pipe_pool[2 * w.pipe_pool_len]
        wr[0] = w.pipe_pool[2 * w.pipe_pool_len + 1]
        return 0
    if w.pipes_open >= w.max_pipes:
        return -1
    if pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0:
        return -1
    # Failure leaves the default size, which only costs throughput.
    fcntl(fds[1], F_SETPIPE_SZ, w.pipe_size)
    w.pipes_open += 1
    r[0] = fds[0]
    wr[0] = fds[1]
    return 0


cdef void pipe_put(Worker *w, int r, int wr, bint empty) noexcept nogil:
    if empty and w.pipe_pool_len < w.max_pipes:
        w.pipe_pool[2 * w.pipe_pool_len] = r
        w.pipe_pool[2 * w.pipe_pool_len + 1] = wr
        w.pipe_pool_len += 1
        return
    close(r)
    close(wr)
    w.pipes_open -= 1


cdef void dir_release(Worker *w, Dir *d) noexcept nogil:
    if d.buf != NULL:
        buf_put(w, d.buf)
        d.buf = NULL
        d.buf_len = 0
        d.buf_off = 0
    if d.pipe_r >= 0:
        pipe_put(w, d.pipe_r, d.pipe_w, d.pipe_bytes == 0)
        d.pipe_r = -1
        d.pipe_w = -1
        d.pipe_bytes = 0
