"""Simulated devices: plain HTTP telemetry through the relay to a json_echo HttpsUpstream,
each answer checked, each request timed. What `relaycore demo` shows, and what its test
drives.

A device opens `connections` connections to the relay, one after the other, and sends
`requests` POST /telemetry on each (HTTP/1.1 keep-alive). The first request of a
connection also pays for the relay's connect and TLS handshake upstream (full, or resumed
with a session ticket); later ones only cross the relay. All devices run at once, a thread
each; every socket operation has a timeout, and drive_devices has a deadline.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

DEVICE_TIMEOUT_S = 10.0
# Added to the deadline of drive_devices for each request a device makes.
PER_REQUEST_S = 0.1


@dataclass
class DeviceReport:
    """What one simulated device saw."""

    name: str
    connections: int = 0
    requests: int = 0
    ok: int = 0
    resumed: int = 0
    first_full_ms: list[float] = field(default_factory=list)
    first_resumed_ms: list[float] = field(default_factory=list)
    kept_ms: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def first_ms(self) -> list[float]:
        return self.first_full_ms + self.first_resumed_ms


def telemetry(name: str, seq: int, temp_c: float) -> bytes:
    """One request body."""
    return json.dumps({"device": name, "seq": seq, "temp_c": temp_c}).encode()


def check_answer(status: int, data: bytes, sent: int) -> dict[str, Any]:
    """The `tls` part of json_echo's answer, or ValueError saying what is wrong with it."""
    text = data.decode(errors="replace").strip()
    if status != 200:
        raise ValueError(f"HTTP {status} from the server: {text[:200]}")
    try:
        answer = json.loads(text)
        got = answer["got"]["body_bytes"]
        tls = answer["tls"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not the demo server's JSON answer: {text[:200]!r}") from exc
    if got != sent:
        raise ValueError(f"sent {sent} body bytes, the server got {got}")
    if not isinstance(tls, dict):
        raise ValueError(f"not the demo server's JSON answer: {text[:200]!r}")
    return tls


def run_device(index: int, relay: tuple[str, int], connections: int, requests: int) -> DeviceReport:
    """Device `index` (dev-<index>): its connections and requests, see the module's
    docstring. A failure ends it, in `error`."""
    report = DeviceReport(f"dev-{index}")
    temps = random.Random(index)
    temp = 19.0 + index
    seq = 0
    try:
        for _ in range(connections):
            conn = http.client.HTTPConnection(relay[0], relay[1], timeout=DEVICE_TIMEOUT_S)
            report.connections += 1
            try:
                for r in range(requests):
                    temp = round(temp + temps.uniform(-0.3, 0.3), 1)
                    body = telemetry(report.name, seq, temp)
                    seq += 1
                    t0 = time.perf_counter()
                    conn.request("POST", "/telemetry", body, {"Content-Type": "application/json"})
                    report.requests += 1
                    response = conn.getresponse()
                    data = response.read()
                    ms = (time.perf_counter() - t0) * 1000.0
                    tls = check_answer(response.status, data, len(body))
                    if r > 0:
                        report.kept_ms.append(ms)
                    elif tls.get("resumed"):
                        report.resumed += 1
                        report.first_resumed_ms.append(ms)
                    else:
                        report.first_full_ms.append(ms)
                    report.ok += 1
            finally:
                conn.close()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        report.error = f"request {report.requests}: {what or type(exc).__name__}"
    return report


def drive_devices(
    relay: tuple[str, int], devices: int, connections: int, requests: int
) -> list[DeviceReport]:
    """All devices at once, a thread each; their reports, in device order. TimeoutError if
    any is still waiting for an answer at the deadline."""
    reports: list[DeviceReport | None] = [None] * devices

    def one(i: int) -> None:
        reports[i] = run_device(i + 1, relay, connections, requests)

    threads = [
        threading.Thread(target=one, args=(i,), name=f"dev-{i + 1}", daemon=True)
        for i in range(devices)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEVICE_TIMEOUT_S + connections * requests * PER_REQUEST_S
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    done = [r for r in reports if r is not None]
    if len(done) < devices:
        raise TimeoutError(
            f"{devices - len(done)} device(s) still waiting for answers at the deadline"
        )
    return done
