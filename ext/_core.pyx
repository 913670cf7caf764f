# cython: language_level=3, embedsignature=True
"""relaycore._core: the worker's data path. One epoll loop, C structs, no Python per byte.

The parts are included in dependency order; read them in this order too.
"""

import ipaddress
import os

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport (EAGAIN, ECONNREFUSED, ECONNRESET, EHOSTUNREACH, EINPROGRESS, EINTR,
                         EMFILE, ENETUNREACH, ENFILE, EINVAL, EIO, ENOBUFS, ENOMEM,
                         EPROTO, ETIMEDOUT, errno)
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset, strcmp, strerror, strlen
from posix.fcntl cimport F_GETFL, F_SETFL

from includes.linux cimport *
from includes.openssl cimport *

include "consts.pxi"
include "state.pxi"
include "errors.pxi"
include "pool.pxi"
include "timers.pxi"
include "tls.pxi"
include "tls_conn.pxi"
include "pump.pxi"
include "gateway.pxi"
include "proxy.pxi"
include "resolver.pxi"
include "exit.pxi"
include "identity.pxi"
include "listener.pxi"
include "conn.pxi"
include "loop.pxi"


def set_parent_death_signal(int signum):
    """prctl(PR_SET_PDEATHSIG): the kernel sends signum when the parent exits."""
    if prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) < 0:
        raise_from_errno(errno, "prctl(PR_SET_PDEATHSIG)")
