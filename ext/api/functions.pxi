# The module's plain functions: the worker's parent-death signal, and the proxy exit's
# request parsers (modes/proxy.pxi) for the fuzz tests. Node identities are
# tls/identity.pxi.


def ktls_probe():
    """Kernel TLS on this machine: "rekey" (TLS 1.2 and 1.3 can be offloaded: the kernel
    takes a new key on a KeyUpdate, Linux 6.14), "no-rekey" (TLS 1.2 only), or why it is
    unavailable (strerror of TCP_ULP "tls" or of TLS_TX)."""
    cdef int rc
    with nogil:
        rc = ktls_probe_rekey()
    if rc < 0:
        return strerror(-rc).decode()
    return "rekey" if rc else "no-rekey"


def set_parent_death_signal(int signum):
    """prctl(PR_SET_PDEATHSIG): the kernel sends signum when the parent exits."""
    if prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) < 0:
        raise_from_errno(errno, "prctl(PR_SET_PDEATHSIG)")


cdef tuple parse_result(Py_ssize_t rc, Py_ssize_t consumed, Proxy *px):
    if rc <= 0:
        return (rc, 0, "", 0)
    return (1, consumed, px.name.decode("ascii"), px.port)


def parse_socks5(bytes data):
    """The exit's SOCKS5 parser on the first bytes of a stream (greeting and request):
    (status, consumed, host, port). status 0: incomplete; 1: complete; < 0: refused,
    -status is the code the exit answers with (255: no acceptable method in the greeting,
    else a SOCKS5 reply code)."""
    cdef Proxy *px = <Proxy *>calloc(1, sizeof(Proxy))
    cdef const uint8_t *p = <const uint8_t *><const char *>data
    cdef Py_ssize_t n = len(data)
    cdef Py_ssize_t g, r
    if px == NULL:
        raise MemoryError()
    try:
        g = socks5_greeting(p, n)
        if g <= 0:
            return parse_result(g, 0, px)
        r = socks5_request(p + g, n - g, px)
        return parse_result(r, g + r, px)
    finally:
        free(px)


def parse_http_connect(bytes data):
    """The exit's HTTP CONNECT parser: (status, consumed, host, port). status 0:
    incomplete; 1: complete; < 0: refused, -status is the HTTP status of the reply."""
    cdef Proxy *px = <Proxy *>calloc(1, sizeof(Proxy))
    cdef Py_ssize_t r
    if px == NULL:
        raise MemoryError()
    try:
        r = http_connect_parse(<const uint8_t *><const char *>data, len(data), px)
        return parse_result(r, r, px)
    finally:
        free(px)


def parse_proxy_header(bytes data):
    """The PROXY protocol parser (modes/proxyhdr.pxi) on the first bytes of a connection:
    (status, consumed, source, destination, reason). status 0: incomplete; 1: complete
    (source and destination "ip:port", or "" for UNKNOWN / LOCAL); -1: refused."""
    cdef ProxyAddrs addrs
    cdef const char *why = NULL
    cdef Py_ssize_t r = proxyhdr_parse(<const uint8_t *><const char *>data, len(data),
                                       &addrs, &why)
    if r <= 0:
        return (-1 if r < 0 else 0, 0, "", "", why.decode() if why != NULL else "")
    if not addrs.src.sin6_family:
        return (1, r, "", "", "")
    return (1, r, format_sockaddr(<const sockaddr_storage *>&addrs.src, sizeof(sockaddr_in6)),
            format_sockaddr(<const sockaddr_storage *>&addrs.dst, sizeof(sockaddr_in6)), "")


def build_proxy_header(int version, str source, int source_port, str destination,
                       int destination_port):
    """The PROXY header (version 1 or 2) a connector sends for a device at source:port
    that connected to destination:port (IP literals; "" for unknown)."""
    cdef sockaddr_storage src, dst
    cdef socklen_t length = 0
    cdef uint8_t out[PROXYHDR_OUT]
    memset(&src, 0, sizeof(src))
    memset(&dst, 0, sizeof(dst))
    if source:
        parse_sockaddr(source, source_port, &src, &length)
    if destination:
        parse_sockaddr(destination, destination_port, &dst, &length)
    if version not in (1, 2):
        raise ValueError("version: 1 or 2")
    n = proxyhdr_build(out, version, <sockaddr_in6 *>&src, <sockaddr_in6 *>&dst)
    return bytes(out[:n])


def http_rewrite(bytes data, str host, int piece=65536):
    """The Host rewrite (modes/http.pxi) over a device's byte stream, fed `piece` bytes at a
    time as reads would bring them, through an input buffer as the pump's: (forwarded,
    consumed, reason). forwarded: what the server would get; consumed: the input bytes
    judged (the rest waits for more); reason: "" or why the stream was refused at
    `consumed` (nothing after it is forwarded)."""
    cdef Http st
    cdef bytes line = f"Host: {host}\r\n".encode()
    cdef char *buf = <char *>malloc(SCRATCH_SIZE)
    cdef char *out = <char *>malloc(SCRATCH_SIZE)
    cdef const char *why = NULL
    cdef size_t out_len = 0
    cdef size_t fed = 0, off = 0, length = 0, take
    cdef Py_ssize_t k
    cdef const uint8_t *src = <const uint8_t *><const char *>data
    forwarded = bytearray()
    memset(&st, 0, sizeof(st))
    if buf == NULL or out == NULL:
        free(buf)
        free(out)
        raise MemoryError()
    try:
        while fed < <size_t>len(data) or off < length:
            if off:
                memmove(buf, buf + off, length - off)
                length -= off
                off = 0
            take = min(<size_t>max(piece, 1), <size_t>len(data) - fed, SCRATCH_SIZE - length)
            memcpy(buf + length, src + fed, take)
            length += take
            fed += take
            while off < length:
                k = http_step(&st, <const uint8_t *>buf + off, length - off, line, len(line),
                              out, &out_len, &why)
                if k < 0:
                    return (bytes(forwarded), fed - length + off, why.decode())
                if k == 0:
                    break
                forwarded += out[:out_len] if out_len else buf[off:off + k]
                off += <size_t>k
            if take == 0:
                break
        return (bytes(forwarded), fed - length + off, "")
    finally:
        free(buf)
        free(out)
