# Is a destination the exit's own host? The kernel knows: it routes an address of this
# machine (every address of every interface, lo's whole 127/8 and ::1, a range made local
# with `ip route add local ...`) through its local table, as type RTN_LOCAL, and delivers
# a connection there to the host's own sockets. A proxy exit must not let its entries
# reach those (sshd, an admin page, a database bound to a private address).
#
# So the default policy asks, once per candidate address of a request, with an rtnetlink
# RTM_GETROUTE for that address, instead of keeping a copy of the interface addresses
# current (a table that races every `ip addr add` and misses local routes). The question
# is answered synchronously: rtnetlink runs the lookup inside our send(), without the
# RTNL lock (RTM_GETROUTE is RTNL_FLAG_DOIT_UNLOCKED for IPv4 and IPv6), so the answer
# is queued before send returns and recv never waits. Two syscalls and a FIB lookup per
# address, once per proxy request, off the per-byte path. It runs on the loop for
# literals and resolved names alike (the resolver hands its addresses back first), so
# one socket per worker serves every question. A question that cannot be asked (no
# socket, no answer) refuses the destination: the policy fails closed.
# (ip-route(8), rtnetlink(7); inet_rtm_getroute in net/ipv4/route.c.)

cdef enum:
    RTNL_REQUEST_SIZE = 64        # nlmsghdr + rtmsg + one RTA_DST of at most 16 bytes
    RTNL_ANSWER_SIZE = 1024       # the answer's header and rtmsg are all we read


cdef int local_address(Worker *w, const sockaddr_in6 *sa) noexcept nogil:
    # 1: the kernel would deliver a connection to sa (AF_INET or AF_INET6, unmapped) to
    # this host; 0: it would not (a route elsewhere, or none); <0: -errno, not asked.
    cdef char req[RTNL_REQUEST_SIZE]
    cdef char answer[RTNL_ANSWER_SIZE]
    cdef nlmsghdr *nh = <nlmsghdr *>req
    cdef rtmsg *rt = <rtmsg *>(req + NLMSG_HDRLEN)
    cdef rtattr *rta = <rtattr *>(req + NLMSG_HDRLEN + sizeof(rtmsg))
    cdef const nlmsghdr *got = <const nlmsghdr *>answer
    cdef const void *addr
    cdef size_t alen
    cdef ssize_t n
    if sa.sin6_family == AF_INET:
        addr = &(<const sockaddr_in *>sa).sin_addr
        alen = 4
    else:
        addr = &sa.sin6_addr
        alen = 16
    if w.rtnl_fd < 0:
        w.rtnl_fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)
        if w.rtnl_fd < 0:
            return -errno
    memset(req, 0, sizeof(req))
    w.rtnl_seq += 1
    nh.nlmsg_len = <uint32_t>(NLMSG_HDRLEN + sizeof(rtmsg) + sizeof(rtattr) + alen)
    nh.nlmsg_type = RTM_GETROUTE
    nh.nlmsg_flags = NLM_F_REQUEST
    nh.nlmsg_seq = w.rtnl_seq
    rt.rtm_family = <uint8_t>sa.sin6_family
    rt.rtm_dst_len = <uint8_t>(alen * 8)
    rta.rta_type = RTA_DST
    rta.rta_len = <uint16_t>(sizeof(rtattr) + alen)
    memcpy(<char *>rta + sizeof(rtattr), addr, alen)
    if send(w.rtnl_fd, req, nh.nlmsg_len, 0) < 0:
        return -errno
    while True:
        # A datagram longer than the buffer is cut short (MSG_TRUNC): we need its start.
        n = recv(w.rtnl_fd, answer, sizeof(answer), MSG_DONTWAIT)
        if n < 0:
            return -errno             # EAGAIN: no answer when there must be one
        if n < <ssize_t>(NLMSG_HDRLEN + sizeof(rtmsg)) or got.nlmsg_seq != w.rtnl_seq:
            continue                  # the answer to a question given up on earlier
        if got.nlmsg_type == NLMSG_ERROR:
            # No route, or an unreachable, prohibit or blackhole one: nothing reaches this
            # host's sockets that way (the connect fails on its own).
            return 0
        if got.nlmsg_type != RTM_NEWROUTE:
            return -EPROTO
        return (<const rtmsg *>(answer + NLMSG_HDRLEN)).rtm_type == RTN_LOCAL
