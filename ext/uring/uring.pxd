# Functions of the io_uring data path (uring/*.pxi) that other files call, one contract each.

# -- uring/ring.pxi: the worker's ring --------------------------------------------------------
# w.uring: a ring, nbufs provided buffers (a power of two) and their ring: 0, or -errno.
cdef int uring_new(Worker *w, uint32_t nbufs) noexcept nogil
# Waits (bounded) for the last completions of closed connections, then frees w.uring.
cdef void uring_free(Worker *w) noexcept nogil
# Submits the turn's requests and waits up to timeout_ms for a completion: 0 or -errno.
cdef int uring_wait(Worker *w, int timeout_ms) noexcept nogil
# Every completion there is, recorded on its connection (which is queued).
cdef void uring_reap(Worker *w) noexcept nogil
# The epoll events the ring's poll announced, read without waiting: how many.
cdef int uring_epoll_events(Worker *w, epoll_event *events) noexcept nogil
# io_uring: epoll is read in the next turn even if the ring's poll says nothing (listeners).
cdef void uring_poll_epoll(Worker *w) noexcept nogil
# Connections whose receive waited for buffers are queued again once buffers are back.
cdef void uring_restart_starved(Worker *w) noexcept nogil
# A free submission entry (the queue flushed to the kernel if full); NULL if that failed.
cdef io_uring_sqe *uring_sqe(Uring *u) noexcept nogil
# Provided buffer bid back to the kernel.
cdef void uring_buf_put(Uring *u, int32_t bid) noexcept nogil
# Asks the kernel to cancel the request user_data (its completion follows).
cdef void uring_cancel(Uring *u, uint64_t user_data) noexcept nogil

# -- uring/relay.pxi: an adopted connection ---------------------------------------------------
# RELAYING starts: onto the ring if its path is one the ring serves, else left on epoll.
cdef void uring_adopt(Worker *w, int32_t i) noexcept nogil
# conn_close will write a close_notify: let it go straight to the socket if it can.
cdef void uring_conn_closing(Conn *c) noexcept nogil
# The slot is CLOSED: cancels its requests; the last completion frees c.u and the slot.
cdef void uring_conn_closed(Worker *w, int32_t i) noexcept nogil
# The oldest received buffer of s, off its list (the caller sends or recycles it).
cdef int32_t rx_unlink(Uring *u, USide *s) noexcept nogil
# n bytes of s's oldest buffer were passed on; it is recycled once all were.
cdef void rx_consumed(Uring *u, USide *s, uint32_t n) noexcept nogil
# A multishot receive on side's socket into the provided buffers; False: no entry.
cdef bint uring_arm_recv(Worker *w, int32_t i, int side) noexcept nogil
# Sends side's tx (set by the caller): 0, or -EBUSY (no submission entry).
cdef int uring_send(Worker *w, int32_t i, int side) noexcept nogil
# s's receive waits for buffers: conns[i] is listed (and held) until some are back.
cdef void uring_starve(Worker *w, int32_t i, USide *s) noexcept nogil
# A CLOSED connection without requests in flight: c.u freed, a parked slot to the dead list.
cdef void uring_maybe_free(Worker *w, int32_t i) noexcept nogil
# A completion of side's receive, recorded; the connection is queued.
cdef void uring_received(Worker *w, int32_t i, int side, int res,
                         uint32_t flags) noexcept nogil
# side's receive is cancelled: a POLLERR poll watches for its reset meanwhile.
cdef void uring_watch_errors(Worker *w, int32_t i, int side) noexcept nogil
# A completion of that poll: the socket's error recorded (rx_err) and the connection queued.
cdef void uring_polled(Worker *w, int32_t i, int side, int res) noexcept nogil
# A completion of a send to side, recorded; the connection is queued.
cdef void uring_sent(Worker *w, int32_t i, int side, int res) noexcept nogil

# -- uring/pumps.pxi --------------------------------------------------------------------------
# Passes on what each side received, forwards EOFs, re-arms receives. [may close]
cdef void uring_run(Worker *w, int32_t i) noexcept nogil
