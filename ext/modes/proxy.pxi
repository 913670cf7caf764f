# A proxy exit's protocols and its request phase: the SOCKS5 and HTTP CONNECT request
# parsers, their replies, the answer to a refusal, and the proxy_* functions that turn a
# parsed request into a destination (try each allowed address in turn) or a refusal.
# modes/exit.pxi drives them from the connection's state machine.
#
# The parsers are pure functions over bytes, no I/O: they are fed what the entry node
# sent so far, and say "more", "done (n bytes)" or "refused, answer with this code". The
# entry was already authenticated by its TLS client certificate, so SOCKS5 offers only
# "no authentication" and CONNECT ignores Proxy-Authorization. They return >0 (the
# request's length: complete), 0 (incomplete: read more) or -code (refused: code is the
# SOCKS5 reply, 255 for a greeting we cannot serve, or the HTTP status). Every length is
# checked before a byte is read, and a request never exceeds PROXY_REQ_MAX: the caller
# refuses a full buffer that is still incomplete.


cdef bint host_name_ok(const uint8_t *p, size_t n) noexcept nogil:
    # A DNS name as a client may send it: 1-253 of letters, digits, '-', '.', '_'.
    # Anything else (spaces, NUL, %-escapes, control bytes) never names a host, and would
    # end up in getaddrinfo and in the operator's log.
    cdef size_t k
    cdef uint8_t b
    if n == 0 or n > 253:
        return False
    for k in range(n):
        b = p[k]
        if not (b'a' <= b <= b'z' or b'A' <= b <= b'Z' or b'0' <= b <= b'9'
                or b == b'-' or b == b'.' or b == b'_'):
            return False
    return True


cdef bint proxy_set_name(Proxy *px, const uint8_t *p, size_t n, uint16_t port) noexcept nogil:
    # The destination as text; an IP literal is a destination at once, a name waits for
    # the resolver (ndst 0). False for a host too long to be either.
    cdef sockaddr_in *v4 = <sockaddr_in *>&px.dst[0]
    cdef sockaddr_in6 *v6 = &px.dst[0]
    px.ndst = 0
    if n == 0 or n >= sizeof(px.name):
        return False
    memcpy(px.name, p, n)
    px.name[n] = 0
    px.port = port
    memset(&px.dst[0], 0, sizeof(sockaddr_in6))
    if inet_pton(AF_INET, px.name, &v4.sin_addr) == 1:
        v4.sin_family = AF_INET
        v4.sin_port = htons(port)
        px.ndst = 1
    elif inet_pton(AF_INET6, px.name, &v6.sin6_addr) == 1:
        v6.sin6_family = AF_INET6
        v6.sin6_port = htons(port)
        px.ndst = 1
    return True


cdef Py_ssize_t socks5_greeting(const uint8_t *p, size_t n) noexcept nogil:
    # VER NMETHODS METHODS (RFC 1928 §3). Needs method 0, "no authentication required".
    cdef size_t k
    if n == 0:
        return 0
    if p[0] != 5:
        return -SOCKS_NO_METHOD
    if n < 2:
        return 0
    if p[1] == 0:
        return -SOCKS_NO_METHOD
    if n < 2 + <size_t>p[1]:
        return 0
    for k in range(p[1]):
        if p[2 + k] == 0:
            return 2 + p[1]
    return -SOCKS_NO_METHOD


cdef Py_ssize_t socks5_request(const uint8_t *p, size_t n, Proxy *px) noexcept nogil:
    # VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4). Only CONNECT.
    cdef size_t off, alen
    cdef uint16_t port
    cdef char text[INET6_ADDRSTRLEN]
    if n >= 1 and p[0] != 5:
        return -SOCKS_GENERAL_FAILURE
    if n >= 2 and p[1] != 1:
        return -SOCKS_COMMAND_UNSUPPORTED       # BIND, UDP ASSOCIATE
    if n >= 3 and p[2] != 0:
        return -SOCKS_GENERAL_FAILURE
    if n < 4:
        return 0
    if p[3] == 1:
        off, alen = 4, 4
    elif p[3] == 4:
        off, alen = 4, 16
    elif p[3] == 3:
        if n < 5:
            return 0
        off, alen = 5, p[4]
        if alen == 0:
            return -SOCKS_HOST_UNREACHABLE
    else:
        return -SOCKS_ATYP_UNSUPPORTED
    if n < off + alen + 2:
        return 0
    port = (p[off + alen] << 8) | p[off + alen + 1]
    if port == 0:
        return -SOCKS_HOST_UNREACHABLE
    if p[3] == 3:
        if not host_name_ok(p + off, alen) or not proxy_set_name(px, p + off, alen, port):
            return -SOCKS_HOST_UNREACHABLE
    else:
        inet_ntop(AF_INET if p[3] == 1 else AF_INET6, p + off, text, sizeof(text))
        proxy_set_name(px, <const uint8_t *>text, strlen(text), port)
    return <Py_ssize_t>(off + alen + 2)


cdef Py_ssize_t find_crlf(const uint8_t *p, size_t n, size_t start) noexcept nogil:
    cdef size_t k
    for k in range(start, n - 1 if n else 0):
        if p[k] == b'\r' and p[k + 1] == b'\n':
            return <Py_ssize_t>k
    return -1


cdef Py_ssize_t http_connect_parse(const uint8_t *p, size_t n, Proxy *px) noexcept nogil:
    # "CONNECT host:port HTTP/1.1\r\n" headers "\r\n" (RFC 9110 §9.3.6). The request
    # line is judged as soon as it is complete; the headers only need to end.
    cdef Py_ssize_t eol = find_crlf(p, n, 0)
    cdef Py_ssize_t end, line
    cdef size_t k, sp1, sp2, host_start, host_end, colon
    cdef uint32_t port = 0
    if eol < 0:
        return -431 if n >= PROXY_REQ_MAX else 0
    line = eol
    sp1 = 0
    while sp1 < <size_t>line and p[sp1] != b' ':
        if not (b'A' <= p[sp1] <= b'Z' or b'a' <= p[sp1] <= b'z'):
            return -400
        sp1 += 1
    if sp1 == 0 or sp1 == <size_t>line:
        return -400
    if sp1 != 7 or memcmp(p, b"CONNECT", 7) != 0:
        return -405
    sp2 = sp1 + 1
    while sp2 < <size_t>line and p[sp2] != b' ':
        sp2 += 1
    if sp2 == <size_t>line or <size_t>line - sp2 - 1 != 8 or (
            memcmp(p + sp2 + 1, b"HTTP/1.1", 8) != 0
            and memcmp(p + sp2 + 1, b"HTTP/1.0", 8) != 0):
        return -400
    # authority-form: host ":" port, the host a name, an IPv4 literal or "[" IPv6 "]"
    colon = sp2
    while colon > sp1 + 1 and p[colon - 1] != b':':
        colon -= 1
    if colon == sp1 + 1 or colon == sp2 or sp2 - colon > 5:
        return -400
    for k in range(colon, sp2):
        if not b'0' <= p[k] <= b'9':
            return -400
        port = port * 10 + (p[k] - 48)
    if port == 0 or port > 65535:
        return -400
    host_start = sp1 + 1
    host_end = colon - 1
    if p[host_start] == b'[':
        if not 3 <= host_end - host_start <= INET6_ADDRSTRLEN + 1 or p[host_end - 1] != b']':
            return -400
        host_start += 1
        host_end -= 1
        for k in range(host_start, host_end):
            if not (b'0' <= p[k] <= b'9' or b'a' <= p[k] <= b'f' or b'A' <= p[k] <= b'F'
                    or p[k] == b':' or p[k] == b'.'):
                return -400
        if (not proxy_set_name(px, p + host_start, host_end - host_start, <uint16_t>port)
                or px.ndst == 0 or px.dst[0].sin6_family != AF_INET6):
            return -400
    elif (not host_name_ok(p + host_start, host_end - host_start)
            or not proxy_set_name(px, p + host_start, host_end - host_start, <uint16_t>port)):
        return -400
    # The headers end at the first empty line.
    end = eol
    while True:
        if end + 3 < <Py_ssize_t>n and p[end + 2] == b'\r' and p[end + 3] == b'\n':
            return end + 4
        end = find_crlf(p, n, end + 2)
        if end < 0:
            return -431 if n >= PROXY_REQ_MAX else 0


cdef size_t socks5_reply(uint8_t *out, uint8_t code, int fd) noexcept nogil:
    # VER REP RSV ATYP BND.ADDR BND.PORT: on success the address the exit connected from
    # (fd's local address), on failure 0.0.0.0:0.
    cdef sockaddr_storage local
    cdef socklen_t length = sizeof(local)
    out[0] = 5
    out[1] = code
    out[2] = 0
    if fd >= 0 and getsockname(fd, <sockaddr *>&local, &length) == 0:
        if local.ss_family == AF_INET6:
            out[3] = 4
            memcpy(out + 4, &(<sockaddr_in6 *>&local).sin6_addr, 16)
            memcpy(out + 20, &(<sockaddr_in6 *>&local).sin6_port, 2)
            return 22
        out[3] = 1
        memcpy(out + 4, &(<sockaddr_in *>&local).sin_addr, 4)
        memcpy(out + 8, &(<sockaddr_in *>&local).sin_port, 2)
        return 10
    out[3] = 1
    memset(out + 4, 0, 6)
    return 10


cdef const char *http_reason(int status) noexcept nogil:
    if status == 200:
        return "Connection established"
    if status == 400:
        return "Bad Request"
    if status == 403:
        return "Forbidden"
    if status == 405:
        return "Method Not Allowed"
    if status == 408:
        return "Request Timeout"
    if status == 431:
        return "Request Header Fields Too Large"
    if status == 504:
        return "Gateway Timeout"
    return "Bad Gateway"


cdef size_t http_reply(char *out, size_t size, int status) noexcept nogil:
    # The reply's length; never more than what fits in out (snprintf says what would).
    cdef int n
    if status == 200:
        n = snprintf(out, size, "HTTP/1.1 200 %s\r\n\r\n", http_reason(200))
    else:
        n = snprintf(
            out, size, "HTTP/1.1 %d %s\r\n%sConnection: close\r\nContent-Length: 0\r\n\r\n",
            status, http_reason(status), "Allow: CONNECT\r\n" if status == 405 else "")
    return <size_t>min(max(n, 0), <int>size - 1)


cdef uint16_t refusal_code(uint8_t exit_mode, uint8_t cause, int err) noexcept nogil:
    # The protocol's answer to a failure after the request was understood.
    cdef bint socks = exit_mode == EXIT_SOCKS5
    if cause == CAUSE_PROXY_DENIED:
        return SOCKS_NOT_ALLOWED if socks else 403
    if cause == CAUSE_CONNECT_REFUSED:
        return SOCKS_REFUSED if socks else 502
    if cause == CAUSE_CONNECT_TIMEOUT:
        return SOCKS_TTL_EXPIRED if socks else 504
    if cause == CAUSE_RESOLVE_FAILED:
        return SOCKS_HOST_UNREACHABLE if socks else (504 if err == ETIMEDOUT else 502)
    if cause == CAUSE_CONNECT_FAILED and err == ENETUNREACH:
        return SOCKS_NET_UNREACHABLE if socks else 502
    if cause == CAUSE_CONNECT_FAILED and err == EHOSTUNREACH:
        return SOCKS_HOST_UNREACHABLE if socks else 502
    if cause == CAUSE_PROXY_REQUEST and err == ETIMEDOUT:
        return SOCKS_GENERAL_FAILURE if socks else 408
    return SOCKS_GENERAL_FAILURE if socks else 502


# -- the request phase of one connection ------------------------------------------------


cdef const char *refusal_text(int why) noexcept nogil:
    # What follows "... is not an allowed destination" in a proxy_denied event.
    if why == DEST_SPECIAL:
        return " (loopback, link-local and unspecified addresses need allow_destinations)"
    if why == DEST_LOCAL:
        return (" (it is an address of the exit's own host, which needs"
                " allow_destinations)")
    if why == DEST_UNKNOWN:
        return " (the kernel could not say whether it is the exit's own host)"
    return ""


cdef bint proxy_send(Conn *c, const void *data, int n) noexcept nogil:
    # One small write before relaying (a reply of at most a few dozen bytes on a fresh
    # connection, where the socket buffer is empty): it goes whole or the TLS is broken.
    cdef int k
    ERR_clear_error()
    k = SSL_write(c.ssl, data, n)
    ERR_clear_error()
    return k == n


cdef void proxy_consume(Proxy *px, size_t n) noexcept nogil:
    memmove(px.req, px.req + n, px.req_len - n)
    px.req_len -= <uint32_t>n


cdef void proxy_try(Worker *w, int32_t i) noexcept nogil:
    # Keep the addresses the exit's policy allows, then dial the first. [may close]
    cdef Conn *c = &w.conns[i]
    cdef Proxy *px = c.px
    cdef Route *r = &w.routes[c.route]
    cdef char reason[REASON_LEN]
    cdef uint8_t k, kept = 0
    cdef int why, last = DEST_NOT_LISTED
    for k in range(px.ndst):
        sockaddr_unmap(&px.dst[k])
        why = destination_refusal(w, r, &px.dst[k])
        if why == DEST_ALLOWED:
            if kept != k:
                px.dst[kept] = px.dst[k]
            kept += 1
        else:
            last = why
    if kept == 0:
        c.orig_dst = px.dst[0]
        snprintf(reason, REASON_LEN, "%.80s port %d is not an allowed destination%s", px.name,
                 px.port, refusal_text(last))
        conn_fail(w, i, CAUSE_PROXY_DENIED, 0, reason)
        return
    px.ndst = kept
    px.next_dst = 0
    proxy_dial(w, i)


cdef void proxy_dial(Worker *w, int32_t i) noexcept nogil:
    # Dial the first candidate address; conn_dial_next (loop/dial.pxi) the others.
    # [may close]
    cdef Conn *c = &w.conns[i]
    c.orig_dst = c.px.dst[0]            # where error events say it went
    conn_dial(w, i, &c.px.dst[0])


cdef void proxy_refuse(Worker *w, Conn *c, uint8_t cause, int err) noexcept nogil:
    # Answer a refused or failed request in the entry's protocol (best effort).
    cdef Proxy *px = c.px
    cdef uint8_t mode = w.routes[c.route].exit_mode
    cdef uint16_t code = px.reply_code
    cdef char reply[160]
    cdef size_t n
    if c.tls_dead or c.ssl == NULL:
        return
    if code == 0:
        code = refusal_code(mode, cause, err)
    if mode == EXIT_SOCKS5:
        if code == SOCKS_NO_METHOD:
            reply[0] = 5
            reply[1] = <char>0xff
            n = 2
        elif px.greeted:
            n = socks5_reply(<uint8_t *>reply, <uint8_t>code, -1)
        else:
            return                          # no greeting yet: no reply is due
    else:
        n = http_reply(reply, sizeof(reply), code)
    proxy_send(c, reply, <int>n)


cdef void proxy_free(Worker *w, Conn *c) noexcept nogil:
    if c.px.job != NULL:
        resolver_cancel(w, c.px)
    free(c.px)
    c.px = NULL
