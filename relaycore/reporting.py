"""The worker's side of the control plane: report to the supervisor, never wait for it.

Every tick the worker hands its loop's failures, one ErrorRecord each, to `collect`;
every interval `report` sends
the cumulative counters and the merged error records with NOBLOCK. A full queue (the
supervisor is stalled) drops the counter report, which costs nothing because the next
one carries the same totals, and keeps the error records, merged, for the next try:
their counts are never lost, and they take one record per (connector, cause, upstream)
however long the stall. The queue is short (SNDHWM) plus the kernel's unix
socket buffer (net.core.wmem_default, ~200 KB; libzmq does not apply SO_SNDBUF to ipc), so
a stalled supervisor costs a worker a bounded, small amount of memory.

The event ring in C holds 256 events per tick; a flood overflows it, so records are a
sample. Their counts are topped up from the exact per-cause counters at each report, so
that `relaycore logs` says x10000 for 10,000 failures, not the few the ring itemised.
"""

import os
import time
from collections import Counter
from collections.abc import Iterable

import msgspec
import zmq

from relaycore import protocol
from relaycore.protocol import (
    CounterReport,
    ErrorBatch,
    ErrorRecord,
    WorkerBye,
    WorkerDraining,
    WorkerHello,
)

SEND_HWM = 4  # messages queued towards the supervisor before reports are dropped
BYE_LINGER_MS = 1000  # how long the last report may take to leave at exit

RecordKey = tuple[str, str, str]  # ErrorRecord.key: (connector, cause, upstream)


def merge_records(
    pending: dict[RecordKey, ErrorRecord], records: Iterable[ErrorRecord]
) -> dict[RecordKey, ErrorRecord]:
    """Merge `records` into `pending`, one record per key; returns `pending`."""
    for r in records:
        old = pending.get(r.key)
        pending[r.key] = r if old is None else old.merge(r)
    return pending


class ControlSubscriber:
    """The worker's end of the control socket: what the supervisor tells every worker.
    Its own ZeroMQ context unless given one (a worker without reports has none)."""

    def __init__(self, run_dir: str, ctx: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self._own = ctx is None
        self._ctx = zmq.Context(io_threads=1) if ctx is None else ctx
        self._decoder = msgspec.msgpack.Decoder(protocol.ControlMessage)
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.connect(f"ipc://{os.path.join(run_dir, protocol.CONTROL_SOCKET)}")

    def messages(self) -> list[protocol.ControlMessage]:
        """Control messages that arrived since the last call (never waits)."""
        messages: list[protocol.ControlMessage] = []
        while True:
            try:
                raw = self._sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return messages
            try:
                messages.append(self._decoder.decode(raw))
            except msgspec.ValidationError:
                continue  # a newer supervisor's message: not ours to act on

    def close(self) -> None:
        self._sub.close()
        if self._own:
            self._ctx.term()


class Reporter:
    def __init__(self, run_dir: str, slot: int, generation: int, interval_s: float) -> None:
        self.slot = slot
        self.generation = generation
        self.interval_s = interval_s
        self.dropped = 0
        self._pending: dict[RecordKey, ErrorRecord] = {}
        self._itemised: Counter[tuple[str, str]] = Counter()  # events collected per cause
        self._counted: dict[tuple[str, str], int] = {}  # errors_<cause> at the last report
        self._next_report = 0.0
        self._encoder = msgspec.msgpack.Encoder()
        # A fresh context after fork: the supervisor's is not ours to use (pyzmq).
        self._ctx = zmq.Context(io_threads=1)
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.connect(f"ipc://{os.path.join(run_dir, protocol.EVENTS_SOCKET)}")
        self._control = ControlSubscriber(run_dir, self._ctx)
        self._send(WorkerHello(slot=slot, generation=generation, pid=os.getpid()))

    def collect(self, records: list[ErrorRecord]) -> None:
        """Keep the loop's failures (one record each) for the next report, merged."""
        for r in records:
            self._itemised[r.connector, r.cause] += 1
        merge_records(self._pending, records)

    def due(self) -> bool:
        return time.monotonic() >= self._next_report

    def report(
        self,
        routes: dict[str, dict[str, int]],
        worker: dict[str, int],
        certs: dict[str, protocol.UpstreamCert] | None = None,
    ) -> None:
        """Send the counters (`routes`: route name -> counters), the upstream certificates
        seen (connector name -> certificate) and the pending records."""
        self._next_report = time.monotonic() + self.interval_s
        self._top_up(routes)
        counters = CounterReport(
            slot=self.slot,
            generation=self.generation,
            pid=os.getpid(),
            time=time.time(),
            connectors=routes,
            worker=worker,
            reports_dropped=self.dropped,
            certs=certs or {},
        )
        if not self._send(counters):
            self.dropped += 1
        if self._pending:
            batch = ErrorBatch(
                slot=self.slot,
                generation=self.generation,
                pid=os.getpid(),
                records=list(self._pending.values()),
            )
            if self._send(batch):
                self._pending.clear()

    def _top_up(self, routes: dict[str, dict[str, int]]) -> None:
        # Failures the counters saw but the ring could not itemise go to the newest
        # record of their (connector, cause); without one, to a record of their own.
        now = time.time()
        for connector, values in routes.items():
            for name, total in values.items():
                if not name.startswith("errors_"):
                    continue
                cause = name.removeprefix("errors_")
                delta = total - self._counted.get((connector, cause), 0)
                self._counted[connector, cause] = total
                missing = delta - self._itemised.pop((connector, cause), 0)
                if missing <= 0:
                    continue
                same = [k for k in self._pending if k[:2] == (connector, cause)]
                if same:
                    key = max(same, key=lambda k: self._pending[k].last)
                    self._pending[key] = msgspec.structs.replace(
                        self._pending[key], count=self._pending[key].count + missing
                    )
                else:
                    self._pending[connector, cause, "?"] = ErrorRecord(
                        connector=connector,
                        cause=cause,
                        upstream="?",
                        reason="not itemised: more failures than the event ring holds",
                        count=missing,
                        first=now,
                        last=now,
                        client="?",
                        worker=self.slot,
                        generation=self.generation,
                    )

    def control(self) -> list[protocol.ControlMessage]:
        """Control messages that arrived since the last call (never waits)."""
        return self._control.messages()

    def draining(self) -> None:
        self._send(WorkerDraining(slot=self.slot, generation=self.generation, pid=os.getpid()))

    def bye(
        self,
        routes: dict[str, dict[str, int]],
        worker: dict[str, int],
        certs: dict[str, protocol.UpstreamCert] | None = None,
    ) -> None:
        """Final report at exit; the only send allowed to wait (BYE_LINGER_MS at most)."""
        self.report(routes, worker, certs)
        self._send(WorkerBye(slot=self.slot, generation=self.generation, pid=os.getpid()))
        self._push.setsockopt(zmq.LINGER, BYE_LINGER_MS)

    def close(self) -> None:
        self._push.close()
        self._control.close()
        self._ctx.term()

    def _send(self, message: msgspec.Struct) -> bool:
        try:
            self._push.send(self._encoder.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True
