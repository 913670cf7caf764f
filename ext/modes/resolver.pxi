# Name resolution for proxy exits, off the loop. getaddrinfo blocks (a DNS timeout is
# seconds) and has no non-blocking form that libc does not itself run on threads, so a
# few threads per worker run it, started on the first name, and hand each result back
# through an eventfd that the loop polls like a socket (TAG_RESOLVER).
#
# A job belongs to the loop except between "queued" and "done", when a thread holds it;
# both lists are under the lock. A connection that closes while its job is out marks it
# cancelled and forgets it; the loop frees a cancelled job when it comes back, and a
# thread skips one it has not started yet. Threads block every signal: the worker's
# SIGTERM must interrupt the loop's epoll_wait, not a getaddrinfo.
# (The structs, ResolveJob and Resolver, are in modes/types.pxd.)


cdef void resolve_job(ResolveJob *job) noexcept nogil:
    cdef addrinfo hints
    cdef addrinfo *res = NULL
    cdef addrinfo *ai
    memset(&hints, 0, sizeof(hints))
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = SOCK_STREAM
    job.status = getaddrinfo(job.name, NULL, &hints, &res)
    job.err = errno if job.status == EAI_SYSTEM else 0
    job.n = 0
    if job.status != 0:
        return
    ai = res
    while ai != NULL and job.n < PROXY_MAX_DST:
        if ai.ai_addrlen <= sizeof(sockaddr_in6) and (
                ai.ai_addr.sa_family == AF_INET or ai.ai_addr.sa_family == AF_INET6):
            memset(&job.addrs[job.n], 0, sizeof(sockaddr_in6))
            memcpy(&job.addrs[job.n], ai.ai_addr, ai.ai_addrlen)
            # The port is at the same offset in sockaddr_in and sockaddr_in6.
            job.addrs[job.n].sin6_port = htons(job.port)
            job.n += 1
        ai = ai.ai_next
    freeaddrinfo(res)


cdef void *resolver_main(void *arg) noexcept nogil:
    cdef Resolver *rs = <Resolver *>arg
    cdef ResolveJob *job
    cdef uint64_t one = 1
    cdef bint skip
    while True:
        pthread_mutex_lock(&rs.lock)
        while rs.todo_head == NULL and not rs.stop:
            pthread_cond_wait(&rs.wake, &rs.lock)
        if rs.stop:
            pthread_mutex_unlock(&rs.lock)
            return NULL
        job = rs.todo_head
        rs.todo_head = job.next
        if rs.todo_head == NULL:
            rs.todo_tail = NULL
        skip = job.cancelled
        pthread_mutex_unlock(&rs.lock)
        if not skip:
            resolve_job(job)
        pthread_mutex_lock(&rs.lock)
        job.next = rs.done
        rs.done = job
        pthread_mutex_unlock(&rs.lock)
        write(rs.efd, &one, sizeof(one))


cdef Resolver *resolver_get(Worker *w) noexcept nogil:
    # The worker's resolver, made and started on first use; NULL if that failed.
    cdef Resolver *rs = w.resolver
    cdef epoll_event ev
    cdef sigset_t all_signals, old
    if rs != NULL:
        return rs
    rs = <Resolver *>calloc(1, sizeof(Resolver))
    if rs == NULL:
        return NULL
    rs.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if rs.efd < 0:
        free(rs)
        return NULL
    ev.events = EPOLLIN
    ev.data.u64 = TAG_RESOLVER
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, rs.efd, &ev) < 0:
        close(rs.efd)
        free(rs)
        return NULL
    pthread_mutex_init(&rs.lock, NULL)
    pthread_cond_init(&rs.wake, NULL)
    sigfillset(&all_signals)
    pthread_sigmask(SIG_SETMASK, &all_signals, &old)
    while rs.nthreads < RESOLVER_THREADS:
        if pthread_create(&rs.threads[rs.nthreads], NULL, resolver_main, rs) != 0:
            break
        rs.nthreads += 1
    pthread_sigmask(SIG_SETMASK, &old, NULL)
    w.resolver = rs
    if rs.nthreads == 0:
        resolver_free(w)
        return NULL
    return rs


cdef int resolver_submit(Worker *w, int32_t i) noexcept nogil:
    # Resolve conns[i].px.name in the background; 0, or -errno.
    cdef Proxy *px = w.conns[i].px
    cdef Resolver *rs = resolver_get(w)
    cdef ResolveJob *job
    if rs == NULL:
        return -EAGAIN
    job = <ResolveJob *>calloc(1, sizeof(ResolveJob))
    if job == NULL:
        return -ENOMEM
    job.conn = i
    job.port = px.port
    memcpy(job.name, px.name, sizeof(job.name))
    px.job = job
    pthread_mutex_lock(&rs.lock)
    if rs.todo_tail == NULL:
        rs.todo_head = job
    else:
        rs.todo_tail.next = job
    rs.todo_tail = job
    pthread_cond_signal(&rs.wake)
    pthread_mutex_unlock(&rs.lock)
    return 0


cdef void resolver_cancel(Worker *w, Proxy *px) noexcept nogil:
    cdef Resolver *rs = w.resolver
    cdef ResolveJob *job = px.job
    px.job = NULL
    pthread_mutex_lock(&rs.lock)
    job.cancelled = 1
    pthread_mutex_unlock(&rs.lock)


cdef void resolver_drain(Worker *w) noexcept nogil:
    # The eventfd fired: hand every finished job to its connection. [may close]
    cdef Resolver *rs = w.resolver
    cdef ResolveJob *job
    cdef ResolveJob *nxt
    cdef uint64_t count = 0
    read(rs.efd, &count, sizeof(count))
    pthread_mutex_lock(&rs.lock)
    job = rs.done
    rs.done = NULL
    pthread_mutex_unlock(&rs.lock)
    while job != NULL:
        nxt = job.next
        if not job.cancelled:
            w.conns[job.conn].px.job = NULL
            exit_resolved(w, job.conn, job)
        free(job)
        job = nxt


cdef void free_jobs(ResolveJob *job) noexcept nogil:
    cdef ResolveJob *nxt
    while job != NULL:
        nxt = job.next
        free(job)
        job = nxt


cdef void resolver_free(Worker *w) noexcept nogil:
    # Stop the threads (each finishes the lookup it is in) and free what is left.
    cdef Resolver *rs = w.resolver
    cdef uint32_t k
    if rs == NULL:
        return
    pthread_mutex_lock(&rs.lock)
    rs.stop = 1
    pthread_cond_broadcast(&rs.wake)
    pthread_mutex_unlock(&rs.lock)
    for k in range(rs.nthreads):
        pthread_join(rs.threads[k], NULL)
    free_jobs(rs.todo_head)
    free_jobs(rs.done)
    pthread_mutex_destroy(&rs.lock)
    pthread_cond_destroy(&rs.wake)
    close(rs.efd)
    free(rs)
    w.resolver = NULL
