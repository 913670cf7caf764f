# The interface of relaycore._core: every type, then every function that one file calls
# in another, each with a one-line contract. Cython reads it before _core.pyx (through
# ext/relaycore/_core.pxd when it builds relaycore._core). Read this to walk the extension;
# _core.pyx lists the files that implement it, in order.
#
# Layers: base (constants, failure causes and counters, pools, timers), the loop (the
# worker's turn, listeners, a connection's state machine, the plain pumps), TLS (contexts,
# verification, failures in words, the TLS stream and its pumps), modes (match tables,
# gateway, tunnel exits and their proxy protocols, the resolver), and the Python API.
# Types come apart from functions (as HAProxy's *-t.h): <layer>/types.pxd (and
# base/causes.pxd), then <layer>/<layer>.pxd.
#
# Conventions, kept by every function declared here:
# - The per-connection path is `noexcept nogil` on C structs; it never raises. A
#   per-connection failure is an error event (conn_fail, error_event), never an exception.
#   Functions that may raise (`except -1`, `except NULL`, or returning a Python object)
#   run only from Python, between turns.
# - Byte movers (flush_owned, SSL writes) return >0 bytes moved, 0 no progress, <0 -errno
#   (HAProxy's convention). Pumps add the bytes they moved to *moved and return a named
#   result: PUMP_STOPPED, PUMP_EOF, PUMP_PROMOTED, PUMP_DEMOTED; fatal: -errno or
#   PUMP_NO_BUFFER (loop/types.pxd).
# - A connection is named by its slot i (or c = &w.conns[i]). [may close] marks every
#   function after whose return a connection it was given (for the loop's own steps: any)
#   may be CLOSED; its caller must not use the slot again except to read c.state. The tag
#   is on the declaration here and on the definition in its .pxi; a function without it
#   never closes a connection (tests/ext/test_ext_layout.py checks both ways).
# - Ownership moves only where a contract says so (conn_open takes client_fd, listener_add
#   takes fd, ...); otherwise the caller keeps what it passed.

from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from includes.linux cimport *
from includes.openssl cimport *
from includes.uring cimport *

include "base/types.pxd"
include "base/causes.pxd"
include "tls/types.pxd"
include "modes/types.pxd"
include "uring/types.pxd"
include "loop/types.pxd"

include "base/base.pxd"
include "loop/loop.pxd"
include "tls/tls.pxd"
include "modes/modes.pxd"
include "uring/uring.pxd"
include "api/api.pxd"
