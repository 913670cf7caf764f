# liburing (Debian's liburing-dev, linked statically): the io_uring calls of the
# experimental io = "io_uring" data path (uring/). Declarations only, no logic.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "<liburing.h>" nogil:
    enum:
        IORING_SETUP_COOP_TASKRUN
        IORING_SETUP_TASKRUN_FLAG
        IORING_FEAT_EXT_ARG
        IORING_CQE_F_BUFFER
        IORING_CQE_F_MORE
        IORING_CQE_BUFFER_SHIFT
        IOSQE_BUFFER_SELECT
    struct io_uring:
        unsigned features
        int ring_fd
    struct io_uring_params:
        uint32_t flags
        uint32_t features
    struct io_uring_sqe:
        uint8_t flags
        uint16_t buf_group
    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags
    struct io_uring_buf:
        pass
    struct io_uring_buf_ring:
        pass
    struct io_uring_buf_reg:
        uint64_t ring_addr
        uint32_t ring_entries
        uint16_t bgid
    struct __kernel_timespec:
        int64_t tv_sec
        long long tv_nsec

    int io_uring_queue_init_params(unsigned entries, io_uring *ring, io_uring_params *p)
    void io_uring_queue_exit(io_uring *ring)
    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    int io_uring_submit(io_uring *ring)
    int io_uring_submit_and_get_events(io_uring *ring)
    int io_uring_submit_and_wait_timeout(io_uring *ring, io_uring_cqe **cqe_ptr,
                                         unsigned wait_nr, __kernel_timespec *ts,
                                         void *sigmask)
    unsigned io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes, unsigned count)
    void io_uring_cq_advance(io_uring *ring, unsigned nr)
    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    void io_uring_prep_recv_multishot(io_uring_sqe *sqe, int sockfd, void *buf, size_t n,
                                      int flags)
    void io_uring_prep_send(io_uring_sqe *sqe, int sockfd, const void *buf, size_t n,
                            int flags)
    void io_uring_prep_poll_multishot(io_uring_sqe *sqe, int fd, unsigned poll_mask)
    void io_uring_prep_poll_add(io_uring_sqe *sqe, int fd, unsigned poll_mask)
    void io_uring_prep_cancel64(io_uring_sqe *sqe, uint64_t user_data, int flags)
    int io_uring_register_buf_ring(io_uring *ring, io_uring_buf_reg *reg, unsigned flags)
    int io_uring_unregister_buf_ring(io_uring *ring, int bgid)
    int io_uring_buf_ring_mask(uint32_t ring_entries)
    void io_uring_buf_ring_add(io_uring_buf_ring *br, void *addr, unsigned n,
                               unsigned short bid, int mask, int buf_offset)
    void io_uring_buf_ring_advance(io_uring_buf_ring *br, int count)


cdef extern from "<errno.h>" nogil:
    enum:
        ECANCELED                   # not in Cython's libc.errno


cdef extern from "<poll.h>" nogil:
    enum:
        POLLIN
        POLLERR


cdef extern from "<sys/mman.h>" nogil:
    enum:
        PROT_READ
        PROT_WRITE
        MAP_PRIVATE
        MAP_ANONYMOUS
    void *MAP_FAILED
    void *mmap(void *addr, size_t n, int prot, int flags, int fd, long off)
    int munmap(void *addr, size_t n)
