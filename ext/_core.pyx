# cython: language_level=3, embedsignature=True, auto_pickle=False, autotestdict=False
"""relaycore._core: the worker's data path. One epoll loop, C structs, no Python per byte.

The interface (types, and the contract of every function one part calls in another) is
_core.pxd. The parts are included below layer by layer; read them in this order.
"""

import ipaddress
import os

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport (EAGAIN, EBUSY, ECONNREFUSED, ECONNRESET, EHOSTUNREACH,
                         EINPROGRESS, EINTR, EMFILE, ENETUNREACH, ENFILE, EINVAL, EIO, ENOBUFS,
                         ENOMEM, ENOSYS, EPROTO, ETIME, ETIMEDOUT, errno)
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset, strcmp, strerror, strlen
from posix.fcntl cimport F_GETFL, F_SETFL

# base: C errors into Python, addresses, failure causes, owned buffers and pipes, timers
include "base/errors.pxi"
include "base/sockaddr.pxi"
include "base/causes.pxi"
include "base/pool.pxi"
include "base/timers.pxi"

# the loop: plain pumps, a connection's life, accepting, the worker's turn
include "loop/pump.pxi"
include "loop/conn.pxi"
include "loop/dial.pxi"
include "loop/listener.pxi"
include "loop/worker.pxi"

# TLS: verification by pin, key-exchange groups, kernel TLS, contexts, failures in words,
# a connection's TLS, identities, the upstream certificates seen
include "tls/verify.pxi"
include "tls/groups.pxi"
include "tls/ktls.pxi"
include "tls/context.pxi"
include "tls/classify.pxi"
include "tls/reads.pxi"
include "tls/gather.pxi"
include "tls/stream.pxi"
include "tls/identity.pxi"
include "tls/certseen.pxi"

# io = "io_uring" (an experiment): the worker's ring, adopted connections, their moves
include "uring/ring.pxi"
include "uring/relay.pxi"
include "uring/pumps.pxi"

# modes: match tables and the exit host's own addresses, gateway, the proxy protocols, the
# resolver, tunnel exits, the PROXY protocol, the HTTP Host rewrite
include "modes/match.pxi"
include "modes/local.pxi"
include "modes/gateway.pxi"
include "modes/proxy.pxi"
include "modes/resolver.pxi"
include "modes/exit.pxi"
include "modes/proxyhdr.pxi"
include "modes/http.pxi"
include "modes/http_pump.pxi"

# what Python sees: error events, the Loop, the module's functions
include "api/events.pxi"
include "api/loop.pxi"
include "api/functions.pxi"
