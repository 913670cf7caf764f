# C errors into Python, the only two places: an errno becomes an OSError (whose subclass
# OSError picks: ConnectionRefusedError, ...), OpenSSL's error queue becomes one line.
# Per-connection failures never get here: they are error events (base/causes.pxi).


cdef int raise_from_errno(int err, str what) except -1:
    raise OSError(err, f"{what}: {strerror(err).decode()}")


cdef str ssl_error_text():
    # Everything in the error queue, oldest first, as one line (and the queue emptied).
    cdef char buf[256]
    cdef unsigned long e
    parts = []
    while True:
        e = ERR_get_error()
        if e == 0:
            break
        ERR_error_string_n(e, buf, sizeof(buf))
        parts.append(buf.decode(errors="replace"))
    return "; ".join(parts) or "no detail from OpenSSL"
