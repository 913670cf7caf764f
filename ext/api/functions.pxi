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
