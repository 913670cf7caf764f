"""Connect storms: many short connections at once, each checked end to end.

`AsyncEchoServer` is an asyncio echo upstream in a thread (thousands of connections
without a thread each). `storm()` opens `count` non-blocking connections from one
thread, `concurrency` at a time; each sends one line, must get it back, then closes.
Every outcome is counted: ok, refused, reset, timeout, wrong echo. `served_in_turn()`
waits for devices that were kept waiting (out of fds) to be served one after another.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relaycore.lab.base import HOST


class AsyncEchoServer:
    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="async-echo", daemon=True)

    def __enter__(self) -> AsyncEchoServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("echo server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                writer.write_eof()
                await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def start() -> None:
            self._server = await asyncio.start_server(echo, HOST, 0, backlog=4096)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        try:
            self._loop.run_forever()
        finally:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()


@dataclass
class StormResult:
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    done: int = 0

    @property
    def failed(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k != "ok")


@dataclass
class _Conn:
    sock: socket.socket
    want: bytes
    got: bytearray = field(default_factory=bytearray)
    sent: bool = False


def storm(
    port: int,
    count: int,
    *,
    concurrency: int = 500,
    deadline_s: float = 60.0,
    progress: StormResult | None = None,
) -> StormResult:
    """Bounded: at most `count` connections and `deadline_s` seconds, to 127.0.0.1 only."""
    result = progress if progress is not None else StormResult()
    sel = selectors.DefaultSelector()
    started = 0
    open_conns = 0
    deadline = time.monotonic() + deadline_s

    def finish(c: _Conn, outcome: str) -> None:
        nonlocal open_conns
        sel.unregister(c.sock)
        c.sock.close()
        open_conns -= 1
        result.outcomes[outcome] += 1
        result.done += 1

    try:
        while result.done < count:
            while started < count and open_conns < concurrency:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                err = sock.connect_ex((HOST, port))
                want = f"storm {started}\n".encode()
                c = _Conn(sock, want)
                started += 1
                open_conns += 1
                sel.register(sock, selectors.EVENT_WRITE, c)
                if err not in (0, errno.EINPROGRESS):
                    finish(c, errno.errorcode.get(err, str(err)))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for key in list(sel.get_map().values()):
                    finish(key.data, "timeout")
                result.outcomes["never_started"] += count - started
                break
            for key, _ in sel.select(min(remaining, 0.5)):
                c = key.data
                try:
                    if not c.sent:
                        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            finish(c, errno.errorcode.get(err, str(err)))
                            continue
                        c.sock.send(c.want)
                        c.sent = True
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                        continue
                    data = c.sock.recv(4096)
                except ConnectionResetError:
                    finish(c, "reset")
                    continue
                except ConnectionRefusedError:
                    finish(c, "refused")
                    continue
                if not data:
                    finish(c, "eof_early")
                    continue
                c.got += data
                if len(c.got) >= len(c.want):
                    finish(c, "ok" if bytes(c.got) == c.want else "wrong_echo")
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return result


def served_in_turn(
    waiting: dict[int, tuple[int, socket.socket]],
    echo: Callable[[int], bytes],
    output: Callable[[], str],
) -> None:
    """Each device of `waiting` (fd: (its number k, its socket)), which sent echo(k), gets
    it back and hangs up, which frees two of the relay's fds for the next. A reset
    raises; ten seconds in which nobody is served fail, with the relay's `output()`."""
    with selectors.DefaultSelector() as sel:
        for _, s in waiting.values():
            sel.register(s, selectors.EVENT_READ)
        while waiting:
            events = sel.select(timeout=10)
            assert events, f"{len(waiting)} devices never served:\n{output()}"
            for key, _ in events:
                k, s = waiting.pop(key.fd)
                assert s.recv(64) == echo(k)
                sel.unregister(s)
                s.close()
