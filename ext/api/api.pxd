# What Python sees (api/*.pxi): the Loop and its ErrorEvents. The TLS contexts are
# declared with TLS (tls/types.pxd).

cdef class ErrorEvent:
    cdef readonly int route
    cdef readonly str cause
    cdef int err                  # Python reads it as .errno (errno is a C macro)
    cdef readonly str client
    cdef readonly str upstream
    cdef readonly str reason
    cdef readonly str destination


cdef class Loop:
    cdef Worker *w
    cdef list tls_contexts        # keeps every route's TLS context alive
    cdef Worker *live(self) except NULL
    cdef Route *route_at(self, int route) except NULL
    cdef Route *new_route(self, uint8_t kind) except NULL
    cdef void release(self) noexcept   # worker_free, once; w is NULL afterwards


# A new ErrorEvent from a ring entry of route r (copied: the entry may be reused).
cdef ErrorEvent event_from(const Route *r, const ErrorEntry *e)
