# Socket addresses and their text: "a.b.c.d:port" and "[v6]:port" for error events, IP
# literals from Python for upstreams. Names are never resolved here.


cdef str format_sockaddr(const sockaddr_storage *ss, socklen_t length):
    cdef char text[INET6_ADDRSTRLEN]
    if length == 0:
        return "?"
    if ss.ss_family == AF_INET:
        inet_ntop(AF_INET, &(<sockaddr_in *>ss).sin_addr, text, sizeof(text))
        return f"{text.decode()}:{ntohs((<sockaddr_in *>ss).sin_port)}"
    if ss.ss_family == AF_INET6:
        inet_ntop(AF_INET6, &(<sockaddr_in6 *>ss).sin6_addr, text, sizeof(text))
        return f"[{text.decode()}]:{ntohs((<sockaddr_in6 *>ss).sin6_port)}"
    return "?"


cdef int parse_sockaddr(str host, int port, sockaddr_storage *ss, socklen_t *length) except -1:
    cdef bytes raw = host.encode()
    cdef sockaddr_in *v4 = <sockaddr_in *>ss
    cdef sockaddr_in6 *v6 = <sockaddr_in6 *>ss
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    memset(ss, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET, raw, &v4.sin_addr) == 1:
        v4.sin_family = AF_INET
        v4.sin_port = htons(port)
        length[0] = sizeof(sockaddr_in)
        return 0
    if inet_pton(AF_INET6, raw, &v6.sin6_addr) == 1:
        v6.sin6_family = AF_INET6
        v6.sin6_port = htons(port)
        length[0] = sizeof(sockaddr_in6)
        return 0
    raise ValueError(f"not an IP address: {host!r}")
