"""Talking to a running relaycore from the CLI: admin requests and stats subscriptions.

The supervisor is found through its run_dir (the config's [relay] run_dir, or
--run-dir). Every wait has a deadline: a supervisor that does not answer is an error
with a hint, never a hang.
"""

import os
from collections.abc import Iterator

import msgspec
import zmq

from relaycore import protocol
from relaycore.errors import RelayError

ADMIN_TIMEOUT_S = 5.0
RELOAD_TIMEOUT_S = 30.0  # a reload waits for the new workers to come up


class NotRunningError(RelayError):
    """No supervisor answers at the run_dir: relaycore is not running there, or the
    run_dir is not the one it uses. The operator's to fix."""

    exit_code = 6


def admin(
    run_dir: str, request: protocol.AdminRequest, timeout_s: float = ADMIN_TIMEOUT_S
) -> protocol.AdminReply:
    path = os.path.join(run_dir, protocol.ADMIN_SOCKET)
    if not os.path.exists(path):
        raise NotRunningError(
            f"relaycore is not running with run_dir {run_dir} (no {path}; use -c FILE or"
            " --run-dir DIR to name another)"
        )
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{path}")
        sock.send(msgspec.msgpack.encode(request))
        if not sock.poll(round(timeout_s * 1000)):
            raise NotRunningError(
                f"no answer from relaycore at {path} within {timeout_s:g} s (is it running?)"
            )
        reply: protocol.AdminReply = msgspec.msgpack.decode(sock.recv(), type=protocol.AdminReply)
    finally:
        sock.close()
    if isinstance(reply, protocol.ErrorReply):
        raise RelayError(reply.message)
    return reply


def subscribe(run_dir: str, topic: bytes) -> Iterator[msgspec.Struct]:
    """Messages published on `topic` from now on (StatsReport or ErrorRecord), forever."""
    path = os.path.join(run_dir, protocol.STATS_SOCKET)
    if not os.path.exists(path):
        raise NotRunningError(f"relaycore is not running with run_dir {run_dir} (no {path})")
    kind: type[msgspec.Struct] = (
        protocol.StatsReport if topic == protocol.TOPIC_STATS else protocol.ErrorRecord
    )
    decoder = msgspec.msgpack.Decoder(kind)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(f"ipc://{path}")
    try:
        while True:
            got_topic, payload = sock.recv_multipart()
            if got_topic == topic:
                yield decoder.decode(payload)
    finally:
        sock.close()
