# Gateway mode: which route a redirected connection takes, from its original destination.
#
# nftables REDIRECT rewrites the destination of a device's TCP connection to our
# listener; conntrack remembers the original, which SO_ORIGINAL_DST (IPv4) and
# IP6T_SO_ORIGINAL_DST (IPv6) return. That address is looked up in the worker's match
# table (modes/match.pxi), most specific first (the Python side orders it: passthrough
# rules, then longer prefixes, then rules with a port).
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


cdef uint16_t gateway_route(Worker *w, int fd, sockaddr_in6 *dst) noexcept nogil:
    cdef const Match *m
    if not original_destination(fd, dst):
        return w.gateway_reject
    m = match_find(w.matches, w.nmatches, dst)
    return m.route if m != NULL else w.gateway_default
