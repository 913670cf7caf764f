"""Garbage on the admin socket from the relay's own user (issue 16): whatever arrives,
the supervisor answers or drops it, keeps serving, and `status` answers at once after it.

Each case talks ZeroMQ (or not) to run_dir/admin.sock the wrong way, then asks `status`
with a deadline far under the CLI's own 5 s."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import msgspec
import pytest
import zmq
from control import relaycore
from support.relay import relay_config, relay_process
from support.servers import EchoServer

from relaycore.lab.base import free_port

STATUS_DEADLINE_S = 2.0


def multipart(ctx: zmq.Context[zmq.Socket[bytes]], path: str) -> list[zmq.Socket[bytes]]:
    # A request of two frames: the supervisor must take both before it may answer.
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"ipc://{path}")
    sock.send_multipart([b"garbage", b"more garbage"])
    return [sock]


def valid_then_more(ctx: zmq.Context[zmq.Socket[bytes]], path: str) -> list[zmq.Socket[bytes]]:
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{path}")
    sock.send_multipart([b"", msgspec.msgpack.encode({"type": "status"}), b"trailing"])
    return [sock]


def no_delimiter(ctx: zmq.Context[zmq.Socket[bytes]], path: str) -> list[zmq.Socket[bytes]]:
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{path}")
    sock.send(b"garbage without an envelope")
    return [sock]


def oversized(ctx: zmq.Context[zmq.Socket[bytes]], path: str) -> list[zmq.Socket[bytes]]:
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"ipc://{path}")
    sock.send(b"x" * (16 << 20))
    return [sock]


def many_peers(ctx: zmq.Context[zmq.Socket[bytes]], path: str) -> list[zmq.Socket[bytes]]:
    # A request each from 200 peers that never read their answers.
    socks = []
    for _ in range(200):
        sock = ctx.socket(zmq.REQ)
        sock.connect(f"ipc://{path}")
        sock.send(b"\x93garbage")
        socks.append(sock)
    return socks


def raw_bytes(ctx: zmq.Context[zmq.Socket[bytes]], path: str) -> list[socket.socket]:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(path)
    raw.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"not a ZMTP greeting" * 100)
    return [raw]


Sender = Callable[[zmq.Context[zmq.Socket[bytes]], str], list[zmq.Socket[bytes]]]


@pytest.mark.parametrize(
    "send",
    [multipart, valid_then_more, no_delimiter, oversized, many_peers, raw_bytes],
)
def test_garbage_on_the_admin_socket_leaves_status_working(tmp_path, send: Sender) -> None:
    run_dir = tmp_path / "run"
    with (
        EchoServer() as echo,
        relay_process(
            relay_config(run_dir=run_dir, listen_port=free_port(), upstream_port=echo.port),
            tmp_path,
        ) as relay,
    ):
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        held = []
        try:
            held = send(ctx, str(run_dir / "admin.sock"))
            for _ in range(3):
                t0 = time.monotonic()
                out = relaycore("status", "--run-dir", str(run_dir))
                took = time.monotonic() - t0
                assert out.returncode == 0, f"{out.stderr}\n{relay.output()}"
                assert took < STATUS_DEADLINE_S, f"status took {took:.1f} s"
            assert relay.proc.poll() is None, relay.output()
        finally:
            for sock in held:
                sock.close(linger=0) if isinstance(sock, zmq.Socket) else sock.close()
            ctx.term()
