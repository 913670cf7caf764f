# The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): who the client
# really is, told by whoever accepted its TCP connection.
#
# Sending (a connector's `proxy_protocol`): once TCP to the upstream is up, and before the
# ClientHello or any byte of the device, one header with the device's address and port and
# the address it connected to: in gateway mode the original destination it dialled, else
# the relay's own address that accepted it (or, behind a balancer, what its header said).
# The header is a few dozen bytes on a socket that has sent nothing yet: it leaves whole.
#
# Reading (`accept_proxy`): a balancer in front sends the header first. It is looked at
# with MSG_PEEK and taken off the socket only once complete, with one recv of exactly its
# length, so no byte behind it is ever read here and nothing needs a buffer: an incomplete
# header waits for the next edge (edge-triggered epoll signals new data). A header that is
# malformed, missing (the first bytes are something else), longer than PROXYHDR_MAX or late
# (timeouts.handshake_s) is an event (proxy_header) and a reset. The parser is a pure
# function over bytes, exposed to hypothesis as parse_proxy_header.

cdef const uint8_t *V2_SIG = <const uint8_t *>b"\r\n\r\n\x00\r\nQUIT\n"


cdef bint v1_number(const uint8_t *p, size_t n, uint32_t *out) noexcept nogil:
    # 1-5 decimal digits, at most 65535.
    cdef size_t k
    cdef uint32_t v = 0
    if n == 0 or n > 5:
        return False
    for k in range(n):
        if not b'0' <= p[k] <= b'9':
            return False
        v = v * 10 + (p[k] - 48)
    out[0] = v
    return v <= 65535


cdef bint v1_address(const uint8_t *p, size_t n, int family, sockaddr_in6 *sa) noexcept nogil:
    cdef char text[INET6_ADDRSTRLEN]
    memset(sa, 0, sizeof(sockaddr_in6))
    if n == 0 or n >= sizeof(text):
        return False
    memcpy(text, p, n)
    text[n] = 0
    sa.sin6_family = family
    if family == AF_INET:
        return inet_pton(AF_INET, text, &(<sockaddr_in *>sa).sin_addr) == 1
    return inet_pton(AF_INET6, text, &sa.sin6_addr) == 1


cdef Py_ssize_t proxyhdr_v1(const uint8_t *p, size_t n, ProxyAddrs *out,
                            const char **why) noexcept nogil:
    # "PROXY TCP4|TCP6 src dst sport dport\r\n" or "PROXY UNKNOWN ...\r\n", <= 107 bytes.
    cdef size_t end = 0, k, start
    cdef size_t field[5]
    cdef size_t flen[5]
    cdef int nf = 0, family
    cdef uint32_t sport = 0, dport = 0
    while end + 1 < n and not (p[end] == b'\r' and p[end + 1] == b'\n'):
        end += 1
    if end + 1 >= n:
        if n >= 107:
            why[0] = "PROXY v1 line longer than 107 bytes"
            return -1
        return 0
    if end + 2 > 107:
        why[0] = "PROXY v1 line longer than 107 bytes"
        return -1
    # fields after "PROXY ", separated by single spaces
    k = 6
    while k <= end and nf < 5:
        start = k
        while k < end and p[k] != b' ':
            k += 1
        field[nf] = start
        flen[nf] = k - start
        nf += 1
        k += 1
    if nf >= 1 and flen[0] == 7 and memcmp(p + field[0], b"UNKNOWN", 7) == 0:
        memset(out, 0, sizeof(ProxyAddrs))
        return <Py_ssize_t>(end + 2)
    if nf != 5 or k != end + 1 or flen[0] != 4:
        why[0] = "malformed PROXY v1 line"
        return -1
    if memcmp(p + field[0], b"TCP4", 4) == 0:
        family = AF_INET
    elif memcmp(p + field[0], b"TCP6", 4) == 0:
        family = AF_INET6
    else:
        why[0] = "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"
        return -1
    if (not v1_address(p + field[1], flen[1], family, &out.src)
            or not v1_address(p + field[2], flen[2], family, &out.dst)
            or not v1_number(p + field[3], flen[3], &sport)
            or not v1_number(p + field[4], flen[4], &dport)):
        why[0] = "malformed address or port in a PROXY v1 line"
        return -1
    out.src.sin6_port = htons(<uint16_t>sport)      # same offset in sockaddr_in
    out.dst.sin6_port = htons(<uint16_t>dport)
    return <Py_ssize_t>(end + 2)


cdef Py_ssize_t proxyhdr_v2(const uint8_t *p, size_t n, ProxyAddrs *out,
                            const char **why) noexcept nogil:
    # 12-byte signature, version/command, family, length (big endian), addresses, TLVs.
    cdef size_t length
    cdef sockaddr_in *s4
    cdef sockaddr_in *d4
    if n > 12 and (p[12] >> 4 != 2 or p[12] & 0xf > 1):
        why[0] = "PROXY v2 header with an unknown version or command"
        return -1
    if n < 16:
        return 0
    length = (<size_t>p[14] << 8) | p[15]
    if 16 + length > PROXYHDR_MAX:
        why[0] = "PROXY v2 header longer than relaycore accepts (1024 bytes)"
        return -1
    if n < 16 + length:
        return 0
    memset(out, 0, sizeof(ProxyAddrs))
    if p[12] & 0xf == 0:
        return <Py_ssize_t>(16 + length)            # LOCAL: the balancer's own check
    if p[13] == 0x11:                               # TCP over IPv4
        if length < 12:
            why[0] = "PROXY v2 header too short for its IPv4 addresses"
            return -1
        s4 = <sockaddr_in *>&out.src
        d4 = <sockaddr_in *>&out.dst
        s4.sin_family = AF_INET
        d4.sin_family = AF_INET
        memcpy(&s4.sin_addr, p + 16, 4)
        memcpy(&d4.sin_addr, p + 20, 4)
        memcpy(&s4.sin_port, p + 24, 2)
        memcpy(&d4.sin_port, p + 26, 2)
    elif p[13] == 0x21:                             # TCP over IPv6
        if length < 36:
            why[0] = "PROXY v2 header too short for its IPv6 addresses"
            return -1
        out.src.sin6_family = AF_INET6
        out.dst.sin6_family = AF_INET6
        memcpy(&out.src.sin6_addr, p + 16, 16)
        memcpy(&out.dst.sin6_addr, p + 32, 16)
        memcpy(&out.src.sin6_port, p + 48, 2)
        memcpy(&out.dst.sin6_port, p + 50, 2)
    # Any other family (UNSPEC, UDP, unix) leaves the connection's own addresses.
    return <Py_ssize_t>(16 + length)


cdef Py_ssize_t proxyhdr_parse(const uint8_t *p, size_t n, ProxyAddrs *out,
                               const char **why) noexcept nogil:
    # >0 the header's length (out filled; family 0: keep the connection's own addresses),
    # 0 incomplete, <0 refused (why says why).
    cdef size_t k
    cdef size_t sig = 12 if n > 12 else n
    cdef size_t word = 6 if n > 6 else n
    for k in range(sig):
        if p[k] != V2_SIG[k]:
            break
    else:
        return 0 if n <= 12 else proxyhdr_v2(p, n, out, why)
    for k in range(word):
        if p[k] != (<const uint8_t *>b"PROXY ")[k]:
            why[0] = "no PROXY header: the client sent something else first"
            return -1
    if n < 6:
        return 0
    return proxyhdr_v1(p, n, out, why)


cdef size_t proxyhdr_build(uint8_t *out, int version, const sockaddr_in6 *src_in,
                           const sockaddr_in6 *dst_in) noexcept nogil:
    # The header into out[PROXYHDR_OUT]; its length. Mixed families are sent as IPv6
    # (v4-mapped); unknown addresses as UNKNOWN (v1) or LOCAL (v2).
    cdef sockaddr_in6 src = src_in[0]
    cdef sockaddr_in6 dst = dst_in[0]
    cdef char a[INET6_ADDRSTRLEN]
    cdef char b[INET6_ADDRSTRLEN]
    cdef int n
    sockaddr_unmap(&src)
    sockaddr_unmap(&dst)
    if src.sin6_family != dst.sin6_family and src.sin6_family and dst.sin6_family:
        sockaddr_map6(&src)
        sockaddr_map6(&dst)
    if version == 1:
        if not src.sin6_family or not dst.sin6_family:
            memcpy(out, b"PROXY UNKNOWN\r\n", 15)
            return 15
        if src.sin6_family == AF_INET:
            inet_ntop(AF_INET, &(<sockaddr_in *>&src).sin_addr, a, sizeof(a))
            inet_ntop(AF_INET, &(<sockaddr_in *>&dst).sin_addr, b, sizeof(b))
        else:
            inet_ntop(AF_INET6, &src.sin6_addr, a, sizeof(a))
            inet_ntop(AF_INET6, &dst.sin6_addr, b, sizeof(b))
        n = snprintf(<char *>out, PROXYHDR_OUT, "PROXY %s %s %s %u %u\r\n",
                     "TCP4" if src.sin6_family == AF_INET else "TCP6", a, b,
                     ntohs(src.sin6_port), ntohs(dst.sin6_port))
        return <size_t>n
    memcpy(out, V2_SIG, 12)
    if not src.sin6_family or not dst.sin6_family:
        out[12] = 0x20                              # LOCAL
        out[13] = 0
        out[14] = 0
        out[15] = 0
        return 16
    out[12] = 0x21                                  # version 2, PROXY
    if src.sin6_family == AF_INET:
        out[13] = 0x11
        out[14] = 0
        out[15] = 12
        memcpy(out + 16, &(<sockaddr_in *>&src).sin_addr, 4)
        memcpy(out + 20, &(<sockaddr_in *>&dst).sin_addr, 4)
        memcpy(out + 24, &src.sin6_port, 2)
        memcpy(out + 26, &dst.sin6_port, 2)
        return 28
    out[13] = 0x21
    out[14] = 0
    out[15] = 36
    memcpy(out + 16, &src.sin6_addr, 16)
    memcpy(out + 32, &dst.sin6_addr, 16)
    memcpy(out + 48, &src.sin6_port, 2)
    memcpy(out + 50, &dst.sin6_port, 2)
    return 52


cdef void sockaddr_map6(sockaddr_in6 *sa) noexcept nogil:
    # a.b.c.d becomes ::ffff:a.b.c.d, in place (a v2 header has one family for both).
    cdef sockaddr_in v4
    if sa.sin6_family != AF_INET:
        return
    memcpy(&v4, sa, sizeof(v4))
    memset(sa, 0, sizeof(sockaddr_in6))
    sa.sin6_family = AF_INET6
    sa.sin6_port = v4.sin_port
    sa.sin6_addr.s6_addr[10] = 0xff
    sa.sin6_addr.s6_addr[11] = 0xff
    memcpy(&sa.sin6_addr.s6_addr[12], &v4.sin_addr, 4)


cdef bint proxyhdr_send(Worker *w, Conn *c) noexcept nogil:
    # The PROXY header of c's route on its new upstream socket; False: it did not go whole.
    cdef uint8_t out[PROXYHDR_OUT]
    cdef sockaddr_in6 dst
    cdef socklen_t length = sizeof(dst)
    cdef size_t n
    if c.orig_dst.sin6_family:
        dst = c.orig_dst
    elif getsockname(c.fd[SIDE_CLIENT], <sockaddr *>&dst, &length) < 0:
        memset(&dst, 0, sizeof(dst))
    n = proxyhdr_build(out, w.routes[c.route].proxy_out, &c.client, &dst)
    return send(c.fd[SIDE_UPSTREAM], out, n, MSG_NOSIGNAL) == <Py_ssize_t>n


cdef void proxyhdr_read(Worker *w, int32_t i) noexcept nogil:
    # The balancer's header, once all of it is here; then the route starts. [may close]
    cdef Conn *c = &w.conns[i]
    cdef ProxyAddrs addrs
    cdef const char *why = NULL
    cdef Py_ssize_t n, r
    n = recv(c.fd[SIDE_CLIENT], w.scratch, PROXYHDR_MAX, MSG_PEEK)
    if n < 0 and errno == EAGAIN:
        c.ready[SIDE_CLIENT] &= ~READY_READ
        return
    if n <= 0:
        conn_fail(w, i, CAUSE_PROXY_HEADER, errno if n < 0 else 0,
                  "the client closed the connection before its PROXY header ended")
        return
    r = proxyhdr_parse(<const uint8_t *>w.scratch, <size_t>n, &addrs, &why)
    if r == 0 and n < PROXYHDR_MAX:
        c.ready[SIDE_CLIENT] &= ~READY_READ         # the rest raises a new edge
        return
    if r <= 0:
        if r == 0:
            why = "PROXY header longer than relaycore accepts (1024 bytes)"
        conn_fail(w, i, CAUSE_PROXY_HEADER, EPROTO, why)
        return
    recv(c.fd[SIDE_CLIENT], w.scratch, <size_t>r, 0)    # exactly the header: peeked whole
    if addrs.src.sin6_family:
        c.client = addrs.src
        c.orig_dst = addrs.dst
    timer_disarm(w, i)
    c.state = CONN_CONNECTING
    conn_start(w, i)
