# Types of the experimental io_uring data path (io = "io_uring", uring/*.pxi): the
# worker's ring with its provided receive buffers, and each adopted connection's state.
# Declarations only.

cdef enum:
    URING_ENTRIES = 4096          # submission queue entries (the kernel doubles the CQ)
    URING_BUFS = 1024             # provided receive buffers per worker at most, by default
    # Given to the kernel at first, and as many more each time receives starve: the kernel
    # takes buffers in ring order, so every buffer it was given ends up touched (RSS).
    URING_BUFS_STEP = 64
    URING_BUF_SIZE = 16384        # bytes each (one TLS record's plaintext)
    URING_BGID = 0                # their buffer group
    # Bytes one side may hold received but not yet passed on before its multishot receive
    # is cancelled (the backpressure: the kernel then keeps them), and below which it is
    # armed again.
    URING_RX_HIGH = 65536
    URING_RX_LOW = 32768
    URING_CQE_BATCH = 256         # completions read at a time

# user_data of a request: slot << 8 | side << 4 | op; the epoll poll and cancels have no side.
cdef enum:
    UOP_RECV = 1                  # a side's multishot receive
    UOP_SEND = 2                  # a send to a side
    UOP_EPOLL = 3                 # the poll on the worker's epoll fd (slot 0)
    UOP_CANCEL = 4                # a cancel; its completion says nothing we use
    UOP_POLL = 5                  # a side's error watch while its receive is cancelled


cdef struct USide:
    # One socket of an adopted connection: what it received (a list of provided buffers
    # through Uring.next, oldest first) and what is being sent to it (one send at a time,
    # so the bytes keep their order).
    int32_t rx_head               # NIL: nothing received waits
    int32_t rx_tail
    uint32_t rx_off               # bytes of rx_head already passed on
    uint32_t rx_bytes             # received, not yet passed on
    uint8_t recv_armed            # its multishot receive is in flight
    uint8_t recv_cancelled        # ... and asked to stop (rx_bytes reached URING_RX_HIGH)
    uint8_t starved               # it ended for want of buffers: armed again once some are back
    uint8_t rx_eof                # the receive said 0: the peer's FIN
    uint8_t err_polled            # its error watch (a POLLERR poll) is in flight
    int rx_err                    # the receive failed: its errno, else 0
    int tx_err                    # a send failed: its errno, else 0
    uint8_t sending               # a send to this side is in flight
    char *tx                      # ... its bytes not yet sent: tx_len from tx
    uint32_t tx_len
    char *tx_owned                # the pool buffer tx points into (buf_put once sent), or NULL
    int32_t tx_bid                # or the provided buffer it points into (recycled), or NIL


cdef struct UConn:
    USide side[2]
    uint32_t inflight             # requests whose last completion has not come yet
    uint8_t close_notify          # our close_notify is written: the FIN follows once sent
    uint8_t parked                # CLOSED and off every list: freed by its last completion
    int32_t starved_next          # Uring.starved_head list


cdef struct Uring:
    io_uring ring
    io_uring_buf_ring *br         # the provided buffer ring (mmap'd)
    size_t br_size
    uint32_t nbufs                # provided receive buffers at most: a power of two
    uint32_t nbufs_added          # ... of which the kernel was given so far
    char *bufs                    # nbufs * URING_BUF_SIZE bytes
    int32_t *next                 # per buffer: the next one in the same USide rx list
    uint32_t *len                 # per buffer: the bytes received into it
    uint32_t bufs_free            # buffers the kernel may fill
    int mask                      # io_uring_buf_ring_mask(nbufs)
    int32_t starved_head          # connections with a receive waiting for buffers
    uint8_t epoll_armed           # the multishot poll on the epoll fd is in flight
    uint8_t epoll_ready           # ... and said the epoll fd has events
    uint8_t epoll_more            # the last epoll_wait filled its array: call it again
    uint32_t inflight             # connections' requests in flight (not the epoll poll)
    uint64_t adopted              # connections moved to the ring so far
    uint64_t starved              # receives that ended for want of buffers
