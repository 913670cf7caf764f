# Match tables: (network, port) entries that an address is looked up in, in order. The
# gateway's table maps original destinations to routes (modes/gateway.pxi); a proxy
# exit's allow table says where its entries may go (destination_refusal, below).


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


cdef const Match *match_find(const Match *table, uint32_t n,
                             const sockaddr_in6 *sa) noexcept nogil:
    # The first entry that sa (AF_INET or AF_INET6) falls in, or NULL.
    cdef const uint8_t *addr
    cdef uint16_t port
    cdef uint32_t k
    cdef const Match *m
    if sa.sin6_family == AF_INET:
        addr = <const uint8_t *>&(<sockaddr_in *>sa).sin_addr
        port = ntohs((<sockaddr_in *>sa).sin_port)
    else:
        addr = <const uint8_t *>sa.sin6_addr.s6_addr
        port = ntohs(sa.sin6_port)
    for k in range(n):
        m = &table[k]
        if m.family == sa.sin6_family and (m.port == 0 or m.port == port) and \
                prefix_matches(m.addr, addr, m.prefix):
            return m
    return NULL


cdef Match *match_add(Match **table, uint32_t *n, str network, int port) except NULL:
    # Append (network, port) to the table (grown by one: only at setup) and return the
    # entry. network: an address or CIDR, IPv4 or IPv6; port 0: any.
    cdef Match *m
    net = ipaddress.ip_network(network, strict=False)
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range: {port}")
    m = <Match *>realloc(table[0], (n[0] + 1) * sizeof(Match))
    if m == NULL:
        raise MemoryError()
    table[0] = m
    m = &m[n[0]]
    memset(m, 0, sizeof(Match))
    m.family = AF_INET if net.version == 4 else AF_INET6
    m.prefix = net.prefixlen
    m.port = port
    raw = net.network_address.packed
    memcpy(m.addr, <char *>raw, len(raw))
    n[0] += 1
    return m


cdef void sockaddr_unmap(sockaddr_in6 *sa) noexcept nogil:
    # ::ffff:a.b.c.d is a.b.c.d: checked and connected as IPv4, or the policy could be
    # walked around by spelling 127.0.0.1 as ::ffff:127.0.0.1.
    cdef sockaddr_in v4
    cdef const uint8_t *a = sa.sin6_addr.s6_addr
    cdef int k
    if sa.sin6_family != AF_INET6:
        return
    for k in range(10):
        if a[k] != 0:
            return
    if a[10] != 0xff or a[11] != 0xff:
        return
    memset(&v4, 0, sizeof(v4))
    v4.sin_family = AF_INET
    v4.sin_port = sa.sin6_port
    memcpy(&v4.sin_addr, a + 12, 4)
    memset(sa, 0, sizeof(sockaddr_in6))
    memcpy(sa, &v4, sizeof(v4))


cdef bint destination_special(const sockaddr_in6 *sa) noexcept nogil:
    # What an exit refuses unless allowed by name, known without asking: the exit host
    # itself (loopback, unspecified) and link-local (cloud metadata services live at
    # 169.254.169.254). Its other addresses: local_address (modes/local.pxi).
    cdef const uint8_t *a
    cdef int k
    if sa.sin6_family == AF_INET:
        a = <const uint8_t *>&(<sockaddr_in *>sa).sin_addr
        return a[0] == 127 or a[0] == 0 or (a[0] == 169 and a[1] == 254)
    a = <const uint8_t *>sa.sin6_addr.s6_addr
    if a[0] == 0xfe and (a[1] & 0xc0) == 0x80:
        return True
    for k in range(15):
        if a[k] != 0:
            return False
    return a[15] <= 1                         # :: and ::1


cdef int destination_refusal(Worker *w, const Route *r, const sockaddr_in6 *sa) noexcept nogil:
    # A proxy exit's policy: DEST_ALLOWED, or why sa is refused. With allow_destinations
    # the list alone decides (an entry that covers an address of the exit's host lets
    # entries reach it: the operator said so); without it, anything but the special
    # addresses and the exit host's own.
    cdef int local
    if r.nallow:
        return DEST_ALLOWED if match_find(r.allow, r.nallow, sa) != NULL else DEST_NOT_LISTED
    if destination_special(sa):
        return DEST_SPECIAL
    local = local_address(w, sa)
    if local < 0:
        return DEST_UNKNOWN
    return DEST_LOCAL if local else DEST_ALLOWED
