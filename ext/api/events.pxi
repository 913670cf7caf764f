# Error events as Python sees them: one read-only ErrorEvent per failed connection, made
# from the worker's ring (base/causes.pxi) by Loop.pop_errors, never by Python code.


cdef class ErrorEvent:
    """One failed connection, as the loop recorded it; made only by Loop.pop_errors.

    route: its route id. cause: one of CAUSES (docs/ERRORS.md). errno: the errno behind
    it, or 0. client: the device's address, "ip:port" ("[ip]:port" for IPv6, "?" if
    unknown). upstream: where it went, the same way ("-" when that was never decided).
    reason: one human line. destination: the device's original destination (gateway), or
    the address a proxy exit dialled, else ""."""

    def __init__(self, *args, **kwargs):
        raise TypeError("ErrorEvent is made only by the loop (Loop.pop_errors)")

    @property
    def errno(self):
        """The errno behind the failure, or 0."""
        return self.err

    def __repr__(self):
        return (f"ErrorEvent(route={self.route}, cause={self.cause!r}, errno={self.err},"
                f" client={self.client!r}, upstream={self.upstream!r},"
                f" reason={self.reason!r}, destination={self.destination!r})")


cdef ErrorEvent event_from(const Route *r, const ErrorEntry *e):
    cdef ErrorEvent ev = ErrorEvent.__new__(ErrorEvent)
    ev.route = e.route
    ev.cause = CAUSES[e.cause]
    ev.err = e.err
    ev.client = format_sockaddr(&e.client, e.client_len)
    if e.reason[0]:
        ev.reason = e.reason.decode(errors="replace")
    else:
        ev.reason = strerror(e.err).decode() if e.err else ""
    if e.orig_dst.sin6_family:
        ev.destination = format_sockaddr(<const sockaddr_storage *>&e.orig_dst,
                                         sizeof(sockaddr_in6))
    else:
        ev.destination = ""
    if e.upstream.sin6_family:
        ev.upstream = format_sockaddr(<const sockaddr_storage *>&e.upstream,
                                      sizeof(sockaddr_in6))
    else:
        ev.upstream = ev.destination or "-"
    return ev
