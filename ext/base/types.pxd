# Types of the base layer: constants with their units. The failure causes and the
# counters are base/causes.pxd. Declarations only (HAProxy's *-t.h); the functions are in
# base/base.pxd.

cdef enum:
    SCRATCH_SIZE = 65536          # bytes: one recv in the copy pump; also an owned buffer
    BUF_POOL_MAX = 64             # owned buffers kept for reuse per worker
    TICK_MS = 50                  # timer wheel granularity
    WHEEL_SLOTS = 4096            # power of two; one turn of the wheel = 204.8 s
    ERR_RING = 256                # error events kept between two pop_errors()
    REASON_LEN = 200              # bytes of an error event's human reason

cdef enum:
    NIL = -1                      # end of an intrusive list of slot indices
