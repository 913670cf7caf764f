# Functions of the base layer (base/*.pxi) that other files call, one contract each.

# -- base/errors.pxi: C errors into Python --------------------------------------------------
# Always raises OSError(err, "<what>: <strerror>"); the only errno -> exception.
cdef int raise_from_errno(int err, str what) except -1
# OpenSSL's error queue as one line, oldest first; the queue is empty afterwards.
cdef str ssl_error_text()

# -- base/sockaddr.pxi ----------------------------------------------------------------------
# "ip:port" ("[ip]:port" for IPv6); "?" for length 0 or another family.
cdef str format_sockaddr(const sockaddr_storage *ss, socklen_t length)
# An IP literal and a port 1-65535 into *ss and *length, or ValueError.
cdef int parse_sockaddr(str host, int port, sockaddr_storage *ss, socklen_t *length) except -1

# -- base/causes.pxi ------------------------------------------------------------------------
# Counts `cause` on c's route; the new ring entry, reason empty (to write), or NULL: ring full.
cdef ErrorEntry *error_event(Worker *w, Conn *c, uint8_t cause, int err) noexcept nogil
# A new dict of the counters with Python's names (errors_<cause>, "active").
cdef dict counters_dict(const Counters *ctr)

# -- base/pool.pxi --------------------------------------------------------------------------
# A buffer of SCRATCH_SIZE from the pool (or malloc), the caller's; NULL: no memory.
cdef char *buf_get(Worker *w) noexcept nogil
# buf back to the pool (or freed when the pool is full); the caller forgets it.
cdef void buf_put(Worker *w, char *buf) noexcept nogil
# Copies n <= SCRATCH_SIZE bytes into dr's (empty) owned buffer, sent first; False: no memory.
cdef bint dir_stash(Worker *w, Dir *dr, const void *data, size_t n) noexcept nogil
# 0 and a pipe (pooled or new) the caller owns, or -1: at max_pipes, or pipe2 failed.
cdef int pipe_get(Worker *w, int *r, int *wr) noexcept nogil
# The pipe back to the pool if empty and there is room, else closed.
cdef void pipe_put(Worker *w, int r, int wr, bint empty) noexcept nogil
# The direction's owned buffer and pipe back to the pools; it holds neither afterwards.
cdef void dir_release(Worker *w, Dir *d) noexcept nogil

# -- base/timers.pxi ------------------------------------------------------------------------
# Milliseconds of CLOCK_MONOTONIC_COARSE (a tick or so of resolution, no syscall cost).
cdef inline uint64_t clock_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)

# conns[i]'s one deadline, replacing any; conn_expire runs when its tick has passed.
cdef void timer_arm(Worker *w, int32_t i, uint64_t deadline_ms) noexcept nogil
# conns[i] has no deadline afterwards (nothing to do if it had none).
cdef void timer_disarm(Worker *w, int32_t i) noexcept nogil
# conn_expire for every connection whose deadline's tick has passed. [may close]
cdef void timers_expire(Worker *w) noexcept nogil
