"""Talking to a running relaycore from the CLI: admin requests and stats subscriptions.

The supervisor is found through its run_dir (the config's [relay] run_dir, or
--run-dir). Every wait has a deadline: a supervisor that does not answer is an error
with a hint, never a hang.
"""

import os
import stat
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


class NoAccessError(RelayError):
    """The run_dir cannot be entered by this user (it is 0700, the relay's user's): the
    relay may well be running. The operator's to fix: run the command as that user."""

    exit_code = 6


def socket_path(run_dir: str, name: str) -> str:
    """The path of the relay's socket `name` in run_dir. Raises NoAccessError when this
    user may not reach it, NotRunningError when it is not there."""
    path = os.path.join(run_dir, name)
    try:
        os.stat(path)
    except PermissionError:
        try:
            st = os.stat(run_dir)
            whose = f" (it belongs to uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}: run"
            whose += " this as that user)"
        except OSError:
            whose = " (or a directory above it: run this as the user relaycore runs as)"
        raise NoAccessError(
            f"cannot reach relaycore in run_dir {run_dir}: permission denied{whose}"
        ) from None
    except OSError:
        raise NotRunningError(
            f"relaycore is not running with run_dir {run_dir} (no {path}; use -c FILE or"
            " --run-dir DIR to name another)"
        ) from None
    return path


def admin(
    run_dir: str, request: protocol.AdminRequest, timeout_s: float = ADMIN_TIMEOUT_S
) -> protocol.AdminReply:
    path = socket_path(run_dir, protocol.ADMIN_SOCKET)
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
    path = socket_path(run_dir, protocol.STATS_SOCKET)
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
