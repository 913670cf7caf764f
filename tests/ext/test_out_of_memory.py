"""A worker out of memory: when the pool cannot give a connection an owned buffer for the
bytes its destination refused, the connection fails with cause out_of_memory (an error
event, the device reset), and it is not counted among the resets (docs/ERRORS.md).

Provoked for real, in a child process: the relay's upstream never reads, so the bytes
back up until the relay must keep some in an owned buffer; by then RLIMIT_AS is down to
the address space in use and the heap is full (malloc until it fails), so the buffer's
malloc fails. The loop allocates nothing else on that path, and Python, which would,
allocates only small objects from its free lists meanwhile.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import pytest
from support.relay import io_kwargs

CHILD = textwrap.dedent(
    """
    import ctypes, json, resource, socket, sys
    from relaycore import _core

    libc = ctypes.CDLL(None)
    malloc, free = libc.malloc, libc.free
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.argtypes = [ctypes.c_void_p]

    upstream = socket.create_server(("127.0.0.1", 0))      # accepts, never reads
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    loop = _core.Loop(splice="off", max_connections=4, **json.loads(sys.argv[1]))
    loop.add_listener(listener.detach(), loop.add_upstream(*upstream.getsockname()))
    device = socket.create_connection(("127.0.0.1", port))
    device.setblocking(False)
    for _ in range(100):
        loop.run(10)
        if loop.route_counters()[0]["accepted"]:
            break
    chunk = memoryview(b"x" * 65536)
    held = [0] * 4096
    limit, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) << 10
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 20), hard))
    n = 0
    while n < len(held) and (p := malloc(65536)):
        held[n] = p
        n += 1
    for _ in range(4000):
        try:
            device.send(chunk)
        except BlockingIOError:
            pass
        loop.run(5)
        if loop.active == 0:
            break
    for k in range(n):
        free(held[k])
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        device.setblocking(True)
        device.settimeout(5)
        while device.recv(65536):
            pass
        device_saw = "eof"
    except OSError as exc:
        device_saw = type(exc).__name__
    events = [(e.route, e.cause, e.errno, e.reason) for e in loop.pop_errors()]
    print(json.dumps({"held": n, "events": events, "counters": loop.counters(),
                      "device": device_saw}))
    loop.close()
    """
)


# On the ring, refused bytes wait in its receive buffers: no owned buffer is asked for.
@pytest.mark.epoll_only
def test_no_buffer_for_refused_bytes_is_out_of_memory() -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(io_kwargs())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    counters = result["counters"]
    assert 0 < result["held"] < 4096, result  # the heap was filled, and then was full
    assert result["events"] == [[0, "out_of_memory", errno.ENOMEM, "Cannot allocate memory"]]
    assert counters["errors_out_of_memory"] == 1, counters
    assert counters["resets"] == 0, counters
    assert counters["accepted"] == counters["closed"] == 1, counters
    assert result["device"] == "ConnectionResetError", result
