"""A device that resets while its upstream is still connecting frees its slot at once.

Without this, the slot is held until connect_timeout and the failure is then logged as
the upstream's (connect_timeout), which sends an operator looking at the wrong server.
"""

from __future__ import annotations

import socket
import struct
import time

from support.relay import HOST
from support.unreachable import BlackholeListener


def test_device_reset_during_connect_frees_the_slot_without_blaming_upstream(make_relay):
    with BlackholeListener() as hole:
        relay = make_relay(hole.port, connect_timeout_ms=10_000)
        device = socket.create_connection((HOST, relay.port), timeout=5)
        relay.wait_counters(
            lambda c: c["accepted"] == 1 and c["active"] == 1, 5, "the relay to accept"
        )
        device.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        started = time.monotonic()
        device.close()
        counters = relay.wait_counters(lambda c: c["active"] == 0, 5, "the slot to free")
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"slot held {elapsed:.1f}s after the device reset"
    assert counters["errors_connect_timeout"] == 0
    assert counters["resets"] == 1
    assert relay.pop_errors() == []
