# Gateway mode: which route a redirected connection takes, from its original destination.
#
# nftables REDIRECT rewrites the destination of a device's TCP connection to our
# listener; conntrack remembers the original, which SO_ORIGINAL_DST (IPv4) and
# IP6T_SO_ORIGINAL_DST (IPv6) return. That address is matched against the table the
# worker was given, most specific first (the Python side orders it: passthrough rules,
# then longer prefixes, then rules with a port).
#
# A connection that was not redirected (someone connected to the gateway port directly,
# from a device or from the uplink) must be rejected, not relayed: relaying it would
# open the default connector, client certificate and all, to anyone who can reach the
# port, and passing it through would loop to ourselves. Once a nat table is loaded,
# conntrack answers SO_ORIGINAL_DST for every connection, and for one that was not
# redirected it answers our own address: so "not intercepted" is either no answer or
# an original destination equal to the local address.


cdef bint original_destination(int fd, sockaddr_in6 *dst) noexcept nogil:
    # True and the original destination in dst, or False: not intercepted.
    cdef sockaddr_storage local
    cdef socklen_t length = sizeof(local)
    cdef int rc
    memset(dst, 0, sizeof(sockaddr_in6))
    if getsockname(fd, <sockaddr *>&local, &length) < 0:
        return False
    length = sizeof(sockaddr_in6)
    if local.ss_family == AF_INET:
        rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, dst, &length)
        if rc == 0 and memcmp(&(<sockaddr_in *>dst).sin_addr, &(<sockaddr_in *>&local).sin_addr,
                              4) == 0 and (<sockaddr_in *>dst).sin_port == (
                <sockaddr_in *>&local).sin_port:
            rc = -1
    else:
        rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst, &length)
        if rc == 0 and memcmp(&dst.sin6_addr, &(<sockaddr_in6 *>&local).sin6_addr,
                              16) == 0 and dst.sin6_port == (<sockaddr_in6 *>&local).sin6_port:
            rc = -1
    if rc < 0:
        memset(dst, 0, sizeof(sockaddr_in6))
        return False
    return True


cdef inline bint prefix_matches(const uint8_t *want, const uint8_t *have,
                                uint8_t bits) noexcept nogil:
    cdef uint8_t whole = bits // 8
    cdef uint8_t rest = bits % 8
    cdef uint8_t mask
    if memcmp(want, have, whole) != 0:
        return False
    if rest == 0:
        return True
    mask = <uint8_t>(0xff << (8 - rest))
    return (want[whole] & mask) == (have[whole] & mask)


cdef int32_t gateway_route(Worker *w, int fd, sockaddr_in6 *dst) noexcept nogil:
    cdef const uint8_t *addr
    cdef uint16_t port
    cdef uint32_t k
    cdef Match *m
    if not original_destination(fd, dst):
        return w.gateway_reject
    if dst.sin6_family == AF_INET:
        addr = <const uint8_t *>&(<sockaddr_in *>dst).sin_addr
        port = ntohs((<sockaddr_in *>dst).sin_port)
    else:
        addr = dst.sin6_addr.s6_addr
        port = ntohs(dst.sin6_port)
    for k in range(w.nmatches):
        m = &w.matches[k]
        if m.family == dst.sin6_family and (m.port == 0 or m.port == port) and \
                prefix_matches(m.addr, addr, m.prefix):
            return m.route
    return w.gateway_default
