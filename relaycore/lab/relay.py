"""`relaycore run -c CONFIG` as a child process, the way an operator runs it: for the demo,
the end-to-end tests and bench/.

The child runs in its own session and process group, so that a Ctrl-C in a terminal reaches
only its parent (the demo), which stops it the way an operator would (SIGTERM: drain, exit
0) and can tell a clean stop from a failed one; and so that stop() can kill workers that
outlive their supervisor. A thread reads its output (stderr, with stdout merged in) line by
line, so the pipe never fills: it keeps the lines, notes the ready line and wakes whoever
waits for a line.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, ClassVar, Self

from relaycore.errors import StartupError
from relaycore.lab.base import Running, wait_for

READY_MARK = "ready generation="
# Lines kept for lines()/output(): a day of a relay's INFO lines, bounded all the same.
MAX_LINES = 100_000
STOP_TIMEOUT = 15.0
# After SIGKILL, or after the output's EOF: what is left is a reap or a join.
REAP_TIMEOUT = 5.0


class RelayProcess(Running):
    """One `relaycore [--log-level L] [OPTIONS] run [RUN_OPTIONS] -c CONFIG` child.

    `options` go before `run` (`--log-format json`, say), `run_options` after it
    (`--watch`); `wrapper` is a command that execs the rest of its arguments (a private
    mount namespace, say), so that signals still reach relaycore. `on_line`, when set, gets
    each output line on the reader thread.
    `io`: the `[relay] io` its config gets where the file does not set one (start() and
    write_config() write it in); None: the class's `default_io`, which a test session sets
    to run every relay of the suite on one io mode (`pytest --io=io_uring`).
    Use as a context manager (start, then stop on the way out) or call start() and stop().
    """

    default_io: ClassVar[str | None] = None

    def __init__(
        self,
        config_path: Path,
        *,
        log_level: str = "info",
        options: Sequence[str] = (),
        wrapper: Sequence[str] = (),
        cwd: Path | None = None,
        run_options: Sequence[str] = (),
        io: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.io = self.default_io if io is None else io
        self.log_level = log_level
        self.options = list(options)
        self.run_options = list(run_options)
        self.wrapper = list(wrapper)
        self.cwd = cwd
        self.on_line: Callable[[str], None] | None = None
        self.ready_line = ""
        # Set once the output reached EOF: the supervisor and every worker are gone (or
        # closed their stderr).
        self.ended = threading.Event()
        self._lines: collections.deque[str] = collections.deque(maxlen=MAX_LINES)
        self._count = 0  # lines read so far, including those the deque dropped
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._stopped = False

    @property
    def command(self) -> list[str]:
        # --log-level and the options belong to `relaycore` itself: before `run`.
        return [
            *self.wrapper,
            sys.executable,
            "-m",
            "relaycore",
            "--log-level",
            self.log_level,
            *self.options,
            "run",
            *self.run_options,
            "-c",
            str(self.config_path),
        ]

    @property
    def proc(self) -> subprocess.Popen[str]:
        """The child (the supervisor, or the wrapper that execs it)."""
        if self._proc is None:
            raise RuntimeError("the relay was not started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._proc is not None:
            raise RuntimeError("the relay was started already")
        if self.io is not None:
            with contextlib.suppress(OSError):  # no file: the relay says so, as it should
                self.write_config(self.config_path.read_text())
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            cwd=self.cwd,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout,), name="relay-output", daemon=True
        )
        self._reader.start()
        return self

    def write_config(self, text: str) -> None:
        """Write `text` to the config file (for a reload, say), with this relay's `io`."""
        self.config_path.write_text(text if self.io is None else with_relay_io(text, self.io))

    def wait_ready(self, timeout: float) -> float:
        """Block until the relay logs its ready line; the seconds that took.

        Raises StartupError, with the relay's last line, if it exits (or closes its
        output) first or if the deadline passes.
        """
        t0 = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: bool(self.ready_line) or self.ended.is_set(), timeout)
            if self.ready_line:
                return time.monotonic() - t0
        code = self.wait(REAP_TIMEOUT if self.ended.is_set() else 0.0)
        last = self.tail(1)
        detail = f": {last[0].strip()}" if last else ""
        if code is None:
            raise StartupError(
                f"the relay did not log {READY_MARK!r} within {timeout:.0f} s{detail}"
            )
        raise StartupError(f"the relay exited with code {code} before it was ready{detail}")

    def wait(self, timeout: float | None = None) -> int | None:
        """The relay's exit code once it exits, or None if it still runs after `timeout`
        (None: no deadline, for a user who stops it with Ctrl-C)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (the relay drains, then exits), then SIGKILL to the whole process group
        if it outlives `timeout`; then the output thread is joined and the pipe closed.

        Returns the exit code (negative: killed by that signal). Idempotent; a second
        Ctrl-C while draining kills the group at once and is raised again.
        """
        proc = self._proc
        if proc is None:
            return 0
        if self._stopped:
            return proc.returncode
        if proc.poll() is None:
            with _gone_already():
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                proc.wait(REAP_TIMEOUT)
            except KeyboardInterrupt:
                self._kill_group()
                proc.wait(REAP_TIMEOUT)
                raise
        # Workers that outlive their supervisor are still in its group. The group id
        # cannot be reused while any of them lives, so this reaches only ours.
        self._kill_group()
        self._stopped = True
        if self._reader is not None:
            self._reader.join(REAP_TIMEOUT)
        if proc.stdout is not None and not (self._reader and self._reader.is_alive()):
            proc.stdout.close()
        return proc.returncode

    def _kill_group(self) -> None:
        with _gone_already():
            os.killpg(self.proc.pid, signal.SIGKILL)

    # -- its output ----------------------------------------------------------------------------

    def _read(self, stream: IO[str]) -> None:
        try:
            for raw in stream:
                line = raw.rstrip("\n")
                with self._cond:
                    self._lines.append(line)
                    self._count += 1
                    if not self.ready_line and READY_MARK in line:
                        self.ready_line = line
                    self._cond.notify_all()
                callback = self.on_line
                if callback is not None:
                    callback(line)
        finally:
            with self._cond:
                self.ended.set()
                self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        """Every output line so far (complete once stop() has returned)."""
        with self._cond:
            return list(self._lines)

    @property
    def line_count(self) -> int:
        """How many lines the relay has written so far: a mark for wait_line's `since`."""
        with self._cond:
            return self._count

    def output(self) -> str:
        return "\n".join(self.lines)

    def tail(self, n: int = 10) -> list[str]:
        """The last n lines."""
        with self._cond:
            return list(self._lines)[-n:]

    def wait_line(self, pattern: str | re.Pattern[str], timeout: float, *, since: int = 0) -> str:
        """The first line matching the regex, of those from line number `since` on (see
        line_count), once the relay has written it. Raises TimeoutError, with the output,
        if none has by the deadline or the output ended without one."""
        regex = re.compile(pattern)
        found: list[str] = []
        checked = since  # line number of the first line not looked at yet

        def seen() -> bool:
            nonlocal checked
            first_kept = self._count - len(self._lines)
            new = itertools.islice(self._lines, max(0, checked - first_kept), None)
            found.extend(itertools.islice((line for line in new if regex.search(line)), 1))
            checked = self._count
            return bool(found) or self.ended.is_set()

        with self._cond:
            self._cond.wait_for(seen, timeout)
        if not found:
            why = "before its output ended" if self.ended.is_set() else f"within {timeout}s"
            raise TimeoutError(
                f"no line of the relay's matched {regex.pattern!r} {why}:\n{self.output()}"
            )
        return found[0]

    # -- its processes -------------------------------------------------------------------------

    def worker_pids(self, expected: int = 1, timeout: float = 10.0) -> list[int]:
        """The supervisor's children (its workers), once there are `expected` of them."""

        def enough() -> list[int]:
            kids = _children(self.pid)
            return kids if len(kids) >= expected else []

        try:
            return wait_for(enough, timeout, f"{expected} workers")
        except TimeoutError as err:
            raise TimeoutError(
                f"{err}; children now {_children(self.pid)}:\n{self.output()}"
            ) from None


def with_relay_io(text: str, io: str) -> str:
    """The config `text` with `io = "<io>"` in its [relay] table (added if it has none);
    unchanged when it sets `io` already, or is not TOML, or spells [relay] in a way a line
    cannot extend (a test of an odd file wants it as written)."""
    try:
        document = tomllib.loads(text)
        relay = document.get("relay", {})
        if not isinstance(relay, dict) or "io" in relay:
            return text
        line = f'io = "{io}"'
        header = re.search(r"^\[relay\][ \t]*(#.*)?$", text, re.MULTILINE)
        if header is None:
            changed = f"[relay]\n{line}\n\n{text}"
        else:
            changed = f"{text[: header.end()]}\n{line}{text[header.end() :]}"
        if tomllib.loads(changed) == {**document, "relay": {**relay, "io": io}}:
            return changed
    except tomllib.TOMLDecodeError:
        pass
    return text


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (what /proc says now)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone since listdir
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


@contextmanager
def _gone_already() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass
