"""The supervisor's ZeroMQ sockets, bound in run_dir (protocol.py says what flows where).

run_dir has been claimed by the supervisor before (relaycore.rundir: a safe directory,
and a lock so that a second relaycore given the same run_dir stops with a clear message
instead of taking the first one's sockets, which ZeroMQ would unlink when it binds).
"""

import os

import msgspec
import zmq

from relaycore import protocol
from relaycore.errors import StartupError

EVENTS_HWM = 100_000  # worker messages queued in the supervisor before workers drop reports
# An admin request is a few dozen bytes; a peer that sends more is dropped by ZeroMQ
# before the supervisor allocates it.
ADMIN_MAX_MESSAGE = 64 * 1024


class ControlPlane:
    def __init__(self, run_dir: str, publish: str | None) -> None:
        self.run_dir = run_dir
        self._encoder = msgspec.msgpack.Encoder()
        self._worker_decoder = msgspec.msgpack.Decoder(protocol.WorkerMessage)
        self._admin_decoder = msgspec.msgpack.Decoder(protocol.AdminRequest)
        self._ctx = zmq.Context(io_threads=1)
        self.events = self._bind(zmq.PULL, protocol.EVENTS_SOCKET)
        self.events.setsockopt(zmq.RCVHWM, EVENTS_HWM)
        self.control = self._bind(zmq.PUB, protocol.CONTROL_SOCKET)
        self.stats = self._bind(zmq.PUB, protocol.STATS_SOCKET)
        self.admin = self._bind(zmq.REP, protocol.ADMIN_SOCKET)
        self.admin.setsockopt(zmq.MAXMSGSIZE, ADMIN_MAX_MESSAGE)
        if publish is not None:
            try:
                self.stats.bind(publish)
            except zmq.ZMQError as e:
                self.close()
                raise StartupError(f"stats.publish: cannot bind {publish}: {e}") from e

    def _bind(self, kind: int, name: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        path = os.path.join(self.run_dir, name)
        try:
            sock.bind(f"ipc://{path}")
        except zmq.ZMQError as e:
            sock.close()
            raise StartupError(f"cannot bind ipc://{path}: {e}") from e
        os.chmod(path, 0o600)
        return sock

    def worker_messages(self, limit: int = 10_000) -> list[protocol.WorkerMessage]:
        """What the workers sent, without waiting (at most `limit`, so that a flood
        cannot keep the supervisor from its signals)."""
        messages = []
        for _ in range(limit):
            try:
                raw = self.events.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                messages.append(self._worker_decoder.decode(raw))
            except msgspec.DecodeError:
                continue  # not from a worker of ours; nothing to act on
        return messages

    def admin_request(self) -> protocol.AdminRequest | None:
        """The pending admin request, or None; a malformed one is answered here.

        Anyone with our uid can write to the admin socket. A REP socket may answer only
        once it has taken every frame of a request, so a request is taken whole, and one
        of more than one frame is malformed like any other garbage."""
        try:
            frames = self.admin.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        try:
            if len(frames) != 1:
                raise msgspec.DecodeError(f"expected one frame, got {len(frames)}")
            request: protocol.AdminRequest = self._admin_decoder.decode(frames[0])
        except msgspec.DecodeError as e:
            self.reply(protocol.ErrorReply(message=f"bad request: {e}"))
            return None
        return request

    def reply(self, message: protocol.AdminReply) -> None:
        # Never blocks and never raises: a peer that went away or stopped reading loses
        # its answer, the supervisor loses nothing.
        try:
            self.admin.send(self._encoder.encode(message), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def publish(self, topic: bytes, message: msgspec.Struct) -> None:
        try:
            self.stats.send_multipart([topic, self._encoder.encode(message)], zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber loses messages, never stalls the supervisor

    def tell_workers(self, message: protocol.ControlMessage) -> None:
        try:
            self.control.send(self._encoder.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        for name in ("events", "control", "stats", "admin"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close()
        self._ctx.term()
        for name in (
            protocol.EVENTS_SOCKET,
            protocol.CONTROL_SOCKET,
            protocol.STATS_SOCKET,
            protocol.ADMIN_SOCKET,
        ):
            try:
                os.unlink(os.path.join(self.run_dir, name))
            except FileNotFoundError:
                pass
