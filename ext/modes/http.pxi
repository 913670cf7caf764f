# http_host = "rewrite": every HTTP/1.x request a device sends on a TLS connector reaches
# the server with `Host: <server_name>[:port]`, because servers that check Host refuse the
# dummy address a device dialled.
#
# Only the device -> server direction is looked at, and only enough to find where each
# request head starts: a head is parsed whole (request line, fields, the empty line) and
# written anew with the Host line replaced (or added, right after the request line); a
# Content-Length body is counted through, a chunked one is followed by its chunk-size lines
# and trailers; everything else (bodies, chunk data, chunk lines, trailers) passes
# unchanged, many pieces in one SSL_write. Upgrade and CONNECT end the parsing: the rest
# of the connection is relayed as it comes. Responses are never parsed.
#
# Framing must agree with the server's, or a request could hide inside another
# (smuggling): so anything ambiguous is refused rather than guessed at: obsolete line
# folding, a field name with space before its colon, control bytes, more than one Host or
# Content-Length, a Transfer-Encoding other than chunked, both Transfer-Encoding and
# Content-Length, Transfer-Encoding in HTTP/1.0, a version other than HTTP/1.0 and 1.1,
# bare LF line ends. A head over HTTP_HEAD_MAX, or a request line that cannot be HTTP, is
# refused as soon as that is known. A refusal is an event (http_request), `400 Bad
# Request` to the device, close_notify to the server, which never sees those bytes.
#
# State: Http (modes/types.pxd), a few bytes per connection, and an input buffer from the
# pool held only while input waits: a head (or a chunk line) not complete yet, or bytes
# behind ones the server has not taken. Parsing is incremental across reads (the search
# for a head's end resumes where it stopped). The parser, http_step, is a pure function of
# the state and the bytes, exposed to hypothesis (and to h11 as the oracle) as
# http_rewrite in api/functions.pxi.


cdef inline bint is_tchar(uint8_t b) noexcept nogil:
    # RFC 9110 5.6.2 token characters.
    return (b'a' <= b <= b'z' or b'A' <= b <= b'Z' or b'0' <= b <= b'9'
            or b == b'!' or b == b'#' or b == b'$' or b == b'%' or b == b'&' or b == b"'"
            or b == b'*' or b == b'+' or b == b'-' or b == b'.' or b == b'^' or b == b'_'
            or b == b'`' or b == b'|' or b == b'~')


cdef inline bint is_ows(uint8_t b) noexcept nogil:
    return b == b' ' or b == b'\t'


cdef Py_ssize_t find_crlf_from(const uint8_t *p, size_t n, size_t start) noexcept nogil:
    # The offset of the first CRLF at or after start, or -1.
    cdef size_t k
    for k in range(start, n - 1 if n else 0):
        if p[k] == b'\r' and p[k + 1] == b'\n':
            return <Py_ssize_t>k
    return -1


cdef bint name_is(const uint8_t *p, size_t n, const char *name) noexcept nogil:
    # Case-insensitive: p[0:n] == name (lower case).
    cdef size_t k
    if n != strlen(name):
        return False
    for k in range(n):
        if (p[k] | 0x20 if b'A' <= p[k] <= b'Z' else p[k]) != <uint8_t>name[k]:
            return False
    return True


cdef bint request_line_ok(const uint8_t *p, size_t n, bint complete, uint8_t *version,
                          bint *connect) noexcept nogil:
    # "METHOD SP target SP HTTP/1.x" (complete: n is the line without CRLF), or, not yet
    # complete, a prefix of one.
    cdef size_t k = 0, t
    while k < n and p[k] != b' ':
        if not is_tchar(p[k]) or k >= 64:
            return False                # relaycore's limit: a method of 64 characters
        k += 1
    if not complete:
        return True
    if k == 0 or k == n:
        return False
    connect[0] = k == 7 and memcmp(p, b"CONNECT", 7) == 0
    t = k + 1
    k = t
    while k < n and p[k] != b' ':
        if p[k] < 0x21 or p[k] >= 0x7f:        # visible ASCII only (RFC 9112 3.2)
            return False
        k += 1
    if k == t or n - k - 1 != 8 or memcmp(p + k + 1, b"HTTP/1.", 7) != 0:
        return False
    if p[n - 1] != b'0' and p[n - 1] != b'1':
        return False
    version[0] = p[n - 1] - 48
    return True


cdef int field_line(const uint8_t *p, size_t n, size_t *vstart, size_t *vend) noexcept nogil:
    # A field line (no CRLF): token ":" OWS value OWS. The value's bounds; -1: malformed.
    cdef size_t k = 0
    cdef uint8_t b
    while k < n and p[k] != b':':
        if not is_tchar(p[k]):
            return -1
        k += 1
    if k == 0 or k == n:
        return -1
    vstart[0] = k + 1
    for k in range(k + 1, n):
        b = p[k]
        if (b < 0x20 and b != b'\t') or b == 0x7f:
            return -1
    while vstart[0] < n and is_ows(p[vstart[0]]):
        vstart[0] += 1
    vend[0] = n
    while vend[0] > vstart[0] and is_ows(p[vend[0] - 1]):
        vend[0] -= 1
    return 0


cdef int head_parse(const uint8_t *p, size_t n, HttpHead *h, const char **why) noexcept nogil:
    # A complete head p[0:n] (ending in CRLF CRLF) into h; -1 and why: refused.
    cdef Py_ssize_t e
    cdef size_t pos, vs = 0, ve = 0
    cdef bint connect = False
    cdef bint has_te = False
    memset(h, 0, sizeof(HttpHead))
    e = find_crlf_from(p, n, 0)
    if e <= 0 or not request_line_ok(p, <size_t>e, True, &h.version, &connect):
        why[0] = "not an HTTP/1.0 or HTTP/1.1 request line"
        return -1
    h.line_end = <uint32_t>(e + 2)
    pos = h.line_end
    while pos < n - 2:
        e = find_crlf_from(p, n, pos)
        if is_ows(p[pos]):
            why[0] = "obsolete line folding (a field line starting with space or tab)"
            return -1
        if field_line(p + pos, <size_t>e - pos, &vs, &ve) < 0:
            why[0] = "malformed field line"
            return -1
        vs += pos
        ve += pos
        if name_is_field(p + pos, b"host"):
            if h.host_end:
                why[0] = "more than one Host field"
                return -1
            h.host_start = <uint32_t>pos
            h.host_end = <uint32_t>(e + 2)
        elif name_is_field(p + pos, b"content-length"):
            if h.has_length or not digits_value(p + vs, ve - vs, &h.length):
                why[0] = "more than one Content-Length, or not a number"
                return -1
            h.has_length = 1
        elif name_is_field(p + pos, b"transfer-encoding"):
            if has_te or not name_is(p + vs, ve - vs, b"chunked"):
                why[0] = "a Transfer-Encoding other than chunked"
                return -1
            has_te = True
            h.chunked = 1
        elif name_is_field(p + pos, b"upgrade"):
            h.tunnel = 1
        pos = <size_t>e + 2
    if h.chunked and h.has_length:
        why[0] = "both Transfer-Encoding and Content-Length"
        return -1
    if h.chunked and h.version == 0:
        why[0] = "Transfer-Encoding in an HTTP/1.0 request"
        return -1
    if connect:
        h.tunnel = 1
    return 0


cdef bint name_is_field(const uint8_t *line, const char *name) noexcept nogil:
    # Whether a (valid) field line's name is `name` (lower case).
    cdef size_t n = strlen(name)
    return line[n] == b':' and name_is(line, n, name)


cdef bint digits_value(const uint8_t *p, size_t n, uint64_t *out) noexcept nogil:
    # 1-18 decimal digits (h11 takes leading zeros too).
    cdef size_t k
    cdef uint64_t v = 0
    if n == 0 or n > 18:
        return False
    for k in range(n):
        if not b'0' <= p[k] <= b'9':
            return False
        v = v * 10 + (p[k] - 48)
    out[0] = v
    return True


cdef size_t head_write(const uint8_t *p, size_t n, const HttpHead *h, const char *host_line,
                       size_t host_len, char *out) noexcept nogil:
    # The head with its Host line replaced by host_line, placed after the request line.
    cdef size_t o = h.line_end
    memcpy(out, p, h.line_end)
    memcpy(out + o, host_line, host_len)
    o += host_len
    if h.host_end:
        memcpy(out + o, p + h.line_end, h.host_start - h.line_end)
        o += h.host_start - h.line_end
        memcpy(out + o, p + h.host_end, n - h.host_end)
        o += n - h.host_end
    else:
        memcpy(out + o, p + h.line_end, n - h.line_end)
        o += n - h.line_end
    return o


cdef Py_ssize_t http_head_step(Http *st, const uint8_t *p, size_t n, const char *host_line,
                               size_t host_len, char *out, size_t *out_len,
                               const char **why) noexcept nogil:
    # A head at p: its length once complete (out: the rewritten head), 0: more, -1: refused.
    # The search resumes where the last one stopped (st.scan); the request line is judged
    # as soon as it can be, so that a device speaking something else (MQTT, TLS, HTTP/2)
    # is refused at once, not after 16 KiB or a timeout.
    cdef size_t k = st.scan
    cdef Py_ssize_t end = -1
    cdef HttpHead h
    cdef uint8_t version = 0
    cdef bint connect = False
    while k < n:
        if p[k] == b'\n':
            if k == 0 or p[k - 1] != b'\r':
                why[0] = "a bare LF line end"
                return -1
            if not st.line_ok:
                if not request_line_ok(p, k - 1, True, &version, &connect):
                    why[0] = "not an HTTP/1.0 or HTTP/1.1 request line"
                    return -1
                st.line_ok = 1
            if k >= 3 and p[k - 2] == b'\n' and p[k - 3] == b'\r':
                end = <Py_ssize_t>k - 3
                break
        k += 1
    if end < 0:
        if not st.line_ok and not request_line_ok(p, n, False, &version, &connect):
            why[0] = "not an HTTP/1.0 or HTTP/1.1 request line"
            return -1
        if n >= HTTP_HEAD_MAX:
            why[0] = "request head over 16 KiB"
            return -1
        st.scan = <uint32_t>n
        return 0
    st.scan = 0
    st.line_ok = 0
    if end + 4 > HTTP_HEAD_MAX:
        why[0] = "request head over 16 KiB"
        return -1
    if head_parse(p, <size_t>end + 4, &h, why) < 0:
        return -1
    out_len[0] = head_write(p, <size_t>end + 4, &h, host_line, host_len, out)
    if h.tunnel:
        st.mode = HTTP_TUNNEL
    elif h.chunked:
        st.mode = HTTP_CHUNK_SIZE
    elif h.length:
        st.mode = HTTP_BODY
        st.left = h.length
    return end + 4


cdef int chunk_line(Http *st, const uint8_t *p, size_t n, const char **why) noexcept nogil:
    # A line of a chunked body (no CRLF) moves the state on; -1: malformed.
    cdef size_t k = 0, vs = 0, ve = 0
    cdef uint64_t size = 0
    cdef uint8_t b
    if st.mode == HTTP_CHUNK_END:
        if n:
            why[0] = "chunk data longer than its chunk size"
            return -1
        st.mode = HTTP_CHUNK_SIZE
        return 0
    if st.mode == HTTP_TRAILERS:
        if n == 0:
            st.mode = HTTP_HEAD
            return 0
        if is_ows(p[0]) or field_line(p, n, &vs, &ve) < 0:
            why[0] = "malformed trailer field"
            return -1
        return 0
    while k < n and k < 16:
        b = p[k]
        if b'0' <= b <= b'9':
            size = size * 16 + (b - 48)
        elif b'a' <= (b | 0x20) <= b'f':
            size = size * 16 + ((b | 0x20) - 87)
        else:
            break
        k += 1
    if k == 0 or (k < n and p[k] != b';' and not is_ows(p[k])):
        why[0] = "malformed chunk size"
        return -1
    if k < n and p[k] != b';':
        while k < n and is_ows(p[k]):
            k += 1
        if k < n:
            why[0] = "malformed chunk size"
            return -1
    for k in range(k, n):
        if p[k] < 0x20 and p[k] != b'\t':
            why[0] = "malformed chunk extension"
            return -1
    if size == 0:
        st.mode = HTTP_TRAILERS
    else:
        st.mode = HTTP_CHUNK_DATA
        st.left = size
    return 0


cdef Py_ssize_t http_step(Http *st, const uint8_t *p, size_t n, const char *host_line,
                          size_t host_len, char *out, size_t *out_len,
                          const char **why) noexcept nogil:
    # The next piece of the device's bytes p[0:n]. >0: that many bytes are consumed, and
    # are either forwarded as they are (*out_len 0) or replaced by out[0:*out_len] (a
    # rewritten head, at most n + host_len bytes); 0: more input is needed; -1: refused
    # (why says why). Unchanged pieces in a row (body, chunk lines) come as one.
    cdef size_t pos = 0, m
    cdef Py_ssize_t e
    out_len[0] = 0
    while pos < n:
        if st.mode == HTTP_HEAD:
            if pos:
                return <Py_ssize_t>pos
            return http_head_step(st, p, n, host_line, host_len, out, out_len, why)
        if st.mode == HTTP_TUNNEL:
            return <Py_ssize_t>n
        if st.mode == HTTP_BODY or st.mode == HTTP_CHUNK_DATA:
            m = min(n - pos, st.left)
            pos += m
            st.left -= m
            if st.left == 0:
                st.mode = HTTP_HEAD if st.mode == HTTP_BODY else HTTP_CHUNK_END
            continue
        e = find_crlf_from(p, n, pos)
        if e < 0 or <size_t>e - pos > HTTP_LINE_MAX:
            if n - pos > HTTP_LINE_MAX:
                why[0] = "chunk-size or trailer line over 4 KiB"
                return <Py_ssize_t>pos if pos else -1     # what came before goes first
            break
        if chunk_line(st, p + pos, <size_t>e - pos, why) < 0:
            return <Py_ssize_t>pos if pos else -1
        pos = <size_t>e + 2
    return <Py_ssize_t>pos
