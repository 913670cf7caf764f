# Functions of the loop (loop/*.pxi) that other files call, one contract each.

# -- loop/conn.pxi: a connection's life -----------------------------------------------------
# The counters of c's route.
cdef inline Counters *conn_ctr(Worker *w, Conn *c) noexcept nogil:
    return &w.routes[c.route].ctr

# Runs conns[i] in this turn's run queue (once, however often it is queued).
cdef inline void conn_queue(Worker *w, int32_t i) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    if c.queued:
        return
    c.queued = 1
    c.next = w.run_head
    w.run_head = i

# Takes client_fd into the free slot w.free_head (the caller checked), routes it. [may close]
cdef void conn_open(Worker *w, uint32_t listener, int client_fd,
                    const sockaddr_in6 *peer) noexcept nogil
# Goes where the route says once the device is accepted (and its PROXY header read). [may close]
cdef void conn_start(Worker *w, int32_t i) noexcept nogil
# A refusal was written to the client: FIN, then read and drop its input. [may close]
cdef void conn_linger(Worker *w, int32_t i) noexcept nogil
# TCP_NODELAY on fd.
cdef void set_nodelay(int fd) noexcept nogil

# -- loop/dial.pxi: the upstream's addresses in turn ----------------------------------------
# Edge-triggered readiness of conns[i]'s `side`: 0, or -1 and errno.
cdef int conn_register(Worker *w, int32_t i, int side) noexcept nogil
# Dials the route's addresses, from the one that last connected. [may close]
cdef void route_dial(Worker *w, int32_t i) noexcept nogil
# A socket to dst (the slot owns it) and a non-blocking connect: CONNECTING. [may close]
cdef void conn_dial(Worker *w, int32_t i, const sockaddr_in6 *dst) noexcept nogil
# The connect failed: the next address (route's or proxy's); False: none left. [may close]
cdef bint conn_dial_next(Worker *w, int32_t i) noexcept nogil
# Whether a redialled connection's upstream socket is connected yet.
cdef bint dial_connected(Conn *c) noexcept nogil
# The connect failed with err: the next address, or an event and a reset. [may close]
cdef void conn_connect_failed(Worker *w, int32_t i, int err) noexcept nogil
# The connect deadline passed: the next address, or connect_timeout. [may close]
cdef void conn_connect_timeout(Worker *w, int32_t i) noexcept nogil
# TCP is up: PROXY header, then TLS, the exit's next step, or relaying. [may close]
cdef void conn_connected(Worker *w, int32_t i) noexcept nogil
# RELAYING from now on, under the idle timeout.
cdef void conn_relaying(Worker *w, int32_t i) noexcept nogil
# A pump's fatal result: a reset on both sides (or out_of_memory, an HTTP refusal). [may close]
cdef void conn_pump_failed(Worker *w, int32_t i, int rc) noexcept nogil
# Moves what can move now; stays queued if its budget ran out. [may close]
cdef void conn_run(Worker *w, int32_t i) noexcept nogil
# Its deadline passed (the timer is already disarmed). [may close]
cdef void conn_expire(Worker *w, int32_t i) noexcept nogil
# An event (reason or strerror(err)), then a reset, or an exit's refusal and FIN. [may close]
cdef void conn_fail(Worker *w, int32_t i, uint8_t cause, int err,
                    const char *reason) noexcept nogil
# Frees fds (RSTs if abortive), buffers, SSL, proxy state: CLOSED till the turn ends. [may close]
cdef void conn_close(Worker *w, int32_t i, bint abortive) noexcept nogil

# -- loop/pump.pxi: byte movers (results: PUMP_* in loop/types.pxd) -------------------------
# Delivered bytes into the route's counters (d: the direction, spliced or copied).
cdef inline void count_delivered(Worker *w, Conn *c, int d, Py_ssize_t n,
                                 bint spliced) noexcept nogil:
    if d == SIDE_CLIENT:
        conn_ctr(w, c).bytes_in += n
    else:
        conn_ctr(w, c).bytes_out += n
    if spliced:
        conn_ctr(w, c).bytes_spliced += n
    else:
        conn_ctr(w, c).bytes_copied += n

# A pump's return: add the bytes it moved to *moved, then return `result`.
cdef inline int pump_result(Py_ssize_t *moved, Py_ssize_t total, int result) noexcept nogil:
    moved[0] += total
    return result

# A read of `asked` bytes from a TCP socket on `side` gave n > 0. Fewer: it gave all it had
# (bytes that come later raise a new edge), so READY_READ is cleared and the socket is not
# read again for an EAGAIN; unless the side reported a FIN or an error (READY_HUP), whose
# edge is spent: then reads go on to the 0 or the error. Not for a kTLS receive socket,
# whose reads stop at a record boundary (docs/HOTPATH.md §8).
cdef inline void read_short(Conn *c, int side, Py_ssize_t n, size_t asked) noexcept nogil:
    if <size_t>n < asked and not c.ready[side] & READY_HUP:
        c.ready[side] &= ~READY_READ

# d's owned buffer to side 1 - d: >0 sent, 0 dst full, <0 -errno; pooled once empty.
cdef Py_ssize_t flush_owned(Worker *w, Conn *c, int d) noexcept nogil
# d by copy: a PUMP_* result, bytes added to *moved; fatal: -errno or PUMP_NO_BUFFER.
cdef int pump_copy(Worker *w, Conn *c, int d, Py_ssize_t *moved) noexcept nogil
# A side whose direction is stalled and that reported an error: the fatal result, else 0.
cdef int stalled_source_failed(Worker *w, Conn *c) noexcept nogil
# d through its pipe: a PUMP_* result, bytes added to *moved; fatal: -errno.
cdef int pump_splice(Worker *w, Conn *c, int d, Py_ssize_t *moved) noexcept nogil

# -- loop/listener.pxi ----------------------------------------------------------------------
# Accept on fd, which the worker owns from now on, for `route` (or per connection: gateway).
cdef int listener_add(Worker *w, int fd, uint16_t route, bint gateway) except -1
# Accepts up to ACCEPT_BUDGET connections on listener k, or pauses it. [may close]
cdef void listener_accept(Worker *w, uint32_t k) noexcept nogil
# Closes every listener fd: no more accepts; relayed connections go on.
cdef void listeners_close(Worker *w) noexcept nogil
# Every listener rests EMFILE_PAUSE_MS (the process is out of fds).
cdef void listeners_pause_emfile(Worker *w) noexcept nogil
# A slot is free again: re-arms the listeners not resting for fds.
cdef void listeners_resume_limit(Worker *w) noexcept nogil
# Re-arms the rested listeners whose time is up, once the reserve fd is back.
cdef void listeners_tick(Worker *w) noexcept nogil
# Holds the reserve fd again (if it does not already); False: no fd yet.
cdef bint reserve_restore(Worker *w) noexcept nogil

# -- loop/worker.pxi ------------------------------------------------------------------------
# A new worker, every slot free, no route or listener; freed by worker_free. Raises.
cdef Worker *worker_new(uint32_t max_conns, int splice_mode, uint32_t max_pipes,
                        int pipe_size) except NULL
# Turns until clock_ms() reaches deadline_ms: 0, or epoll_wait's -errno. [may close]
cdef int worker_run(Worker *w, uint64_t deadline_ms) noexcept nogil
# Aborts every connection, closes every fd, joins the resolver, frees w. [may close]
cdef void worker_free(Worker *w) noexcept nogil
