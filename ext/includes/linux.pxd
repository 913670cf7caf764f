# Linux syscalls and constants used by the loop and the pump. Declarations only, no logic.
# Python.h (included first by Cython) defines _GNU_SOURCE, which accept4, pipe2, splice
# and F_SETPIPE_SZ need.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "<sys/epoll.h>" nogil:
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLET
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC
    union epoll_data_t:
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef uint32_t socklen_t
    ctypedef uint16_t sa_family_t
    enum:
        AF_INET
        AF_INET6
        SOCK_STREAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_ERROR
        SO_LINGER
        SHUT_WR
        MSG_NOSIGNAL
        MSG_PEEK
        SOCK_RAW
        MSG_DONTWAIT
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct linger:
        int l_onoff
        int l_linger
    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr *addr, socklen_t len)
    int accept4(int fd, sockaddr *addr, socklen_t *len, int flags)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int listen(int fd, int backlog)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getpeername(int fd, sockaddr *addr, socklen_t *len)
    int getsockname(int fd, sockaddr *addr, socklen_t *len)
    int shutdown(int fd, int how)
    ssize_t recv(int fd, void *buf, size_t len, int flags)
    ssize_t send(int fd, const void *buf, size_t len, int flags)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP
        SOL_IP
        SOL_IPV6
    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)


cdef extern from "compat.h" nogil:
    enum:
        SO_ORIGINAL_DST "RELAYCORE_SO_ORIGINAL_DST"
        IP6T_SO_ORIGINAL_DST "RELAYCORE_IP6T_SO_ORIGINAL_DST"
    void set_errno "relaycore_set_errno"(int e)   # errno = e (a cimported name cannot be assigned)


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY
        TCP_ULP


cdef extern from "<linux/tls.h>" nogil:
    # Kernel TLS (tls/ktls.pxi probes it; OpenSSL sets the keys itself). SOL_TLS is glibc's.
    enum:
        SOL_TLS
        TLS_TX
        TLS_1_3_VERSION
        TLS_CIPHER_AES_GCM_128
    struct tls_crypto_info:
        uint16_t version
        uint16_t cipher_type
    struct tls12_crypto_info_aes_gcm_128:
        tls_crypto_info info
        unsigned char iv[8]
        unsigned char key[16]
        unsigned char salt[4]
        unsigned char rec_seq[8]


cdef extern from "<strings.h>" nogil:
    int strcasecmp(const char *a, const char *b)
    int strncasecmp(const char *a, const char *b, size_t n)


cdef extern from "<arpa/inet.h>" nogil:
    enum:
        INET6_ADDRSTRLEN
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)


cdef extern from "<fcntl.h>" nogil:
    enum:
        O_NONBLOCK
        O_CLOEXEC
        O_RDONLY
        F_SETPIPE_SZ
        F_GETPIPE_SZ
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK
    int fcntl(int fd, int cmd, ...)
    int open(const char *path, int flags)
    ssize_t splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t len,
                   unsigned int flags)


cdef extern from "<unistd.h>" nogil:
    int pipe2(int fds[2], int flags)
    int close(int fd)
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC_COARSE
    int clock_gettime(int clk, timespec *ts)


cdef extern from "<sys/prctl.h>" nogil:
    enum:
        PR_SET_PDEATHSIG
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
              unsigned long arg5)


cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)


cdef extern from "<netdb.h>" nogil:
    enum:
        AF_UNSPEC
        EAI_SYSTEM
    struct addrinfo:
        int ai_flags
        int ai_family
        int ai_socktype
        int ai_protocol
        socklen_t ai_addrlen
        sockaddr *ai_addr
        addrinfo *ai_next
    int getaddrinfo(const char *node, const char *service, const addrinfo *hints,
                    addrinfo **res)
    void freeaddrinfo(addrinfo *res)
    const char *gai_strerror(int errcode)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_signal(pthread_cond_t *c)


cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    enum:
        SIG_SETMASK
    int sigfillset(sigset_t *s)
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)


# rtnetlink: a proxy exit asks the kernel how it would route a destination (modes/local.pxi).
cdef extern from "<linux/netlink.h>" nogil:
    enum:
        AF_NETLINK
        NETLINK_ROUTE
        NLM_F_REQUEST
        NLMSG_ERROR
        NLMSG_HDRLEN
    struct nlmsghdr:
        uint32_t nlmsg_len
        uint16_t nlmsg_type
        uint16_t nlmsg_flags
        uint32_t nlmsg_seq
        uint32_t nlmsg_pid
    struct nlmsgerr:
        int error


cdef extern from "<linux/rtnetlink.h>" nogil:
    enum:
        RTM_GETROUTE
        RTM_NEWROUTE
        RTA_DST
        RTN_LOCAL
    struct rtmsg:
        uint8_t rtm_family
        uint8_t rtm_dst_len
        uint8_t rtm_type
    struct rtattr:
        uint16_t rta_len
        uint16_t rta_type
