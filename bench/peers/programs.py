"""The C programs of bench-peers: the upstream peers (upstream.c) and the load generator
(loadgen.c), compiled at the start of a run and driven over their stdin and stdout.

Both link relaycore's own OpenSSL (3.5: ext/openssl/locate.py, as setup.py does), so that
the upstream can negotiate the hybrid group X25519MLKEM768 with a relay that offers it,
as a server on OpenSSL 3.5 would; the peers (stunnel, HAProxy, nginx) run the system's 3.0
and get X25519 from it."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from relays import HOST

HERE = Path(__file__).resolve().parent
OPENSSL = HERE.parents[1] / "ext" / "openssl"


def openssl() -> tuple[list[str], str]:
    """cc arguments to link relaycore's OpenSSL after the sources, and where it came from."""
    sys.path.insert(0, str(OPENSSL))
    try:
        from locate import locate  # ext/openssl is not a package
    finally:
        sys.path.remove(str(OPENSSL))
    found = locate()
    return found.gcc_args(), found.origin


class BuildError(RuntimeError):
    """A C program of bench/peers did not compile (the message says why)."""


def build(tmp: Path) -> dict[str, Path]:
    """upstream and loadgen compiled into tmp; exits saying why when they do not compile."""
    try:
        return compile_programs(tmp, ("upstream", "loadgen"))
    except BuildError as exc:
        sys.exit(str(exc))


def compile_programs(tmp: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """Compile bench/peers/NAME.c for each name into tmp, linked with relaycore's OpenSSL;
    BuildError says why one did not compile."""
    cc = shutil.which("cc")
    if cc is None:
        raise BuildError("bench-peers: a C compiler is needed (apt-get install gcc libssl-dev)")
    link, origin = openssl()
    print(f"bench-peers: {' and '.join(names)} link OpenSSL: {origin}", flush=True)
    out = {}
    for name in names:
        binary = tmp / name
        res = subprocess.run(
            [cc, "-O2", "-Wall", "-o", str(binary), str(HERE / f"{name}.c"), *link],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise BuildError(f"bench-peers: cc {name}.c failed (libssl-dev?):\n{res.stderr}")
        out[name] = binary
    return out


class Upstream:
    """bench/peers/upstream.c: `upstream sink|echo [--tls CERT KEY] [--no-resume]`, 2
    processes; the upstream of `make bench-peers`, `make bench` and the soak. `fail` is
    called with the reason when it does not start (default: exit)."""

    def __init__(
        self,
        binary: Path,
        mode: str,
        tls: tuple[Path, Path] | None,
        *,
        no_resume: bool = False,
        fail: Callable[[str], NoReturn] = sys.exit,
    ) -> None:
        args = [str(binary), mode, "--procs", "2"]
        if tls is not None:
            args += ["--tls", str(tls[0]), str(tls[1])]
        if no_resume:
            args.append("--no-resume")
        self.name = ("tls-" if tls else "") + mode + ("-full" if no_resume else "")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            fail(f"bench upstream {self.name} did not start (got {line!r})")
        self.address = (HOST, int(line))

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        words = self.proc.stdout.readline().split()
        return {
            words[i]: (int(words[i + 1]) if words[i + 1].isdigit() else words[i + 1])
            for i in range(0, len(words) - 1, 2)
        }

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Loadgen:
    """One bench/peers/loadgen.c run: its "phase" lines go to a queue as they come."""

    def __init__(self, binary: Path, args: list[str], timeout_s: float) -> None:
        self.proc = subprocess.Popen(
            [str(binary), *args, "--timeout", str(timeout_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.result: dict[str, Any] | None = None
        self.deadline = time.monotonic() + timeout_s + 15
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next_line(self) -> str | None:
        """The next line, or None at EOF; the run is killed past its deadline."""
        try:
            return self.lines.get(timeout=max(0.1, self.deadline - time.monotonic()))
        except queue.Empty:
            self.proc.kill()
            return None

    def until(self, on_phase: Callable[[str], None] | None = None, stop_at: str = "") -> None:
        """Read lines, calling on_phase for each phase line, up to phase `stop_at` or the
        result (kept in self.result)."""
        while True:
            line = self.next_line()
            if line is None:
                return
            if line.startswith("phase "):
                name = line.split()[1]
                if on_phase is not None:
                    on_phase(name)
                if name == stop_at:
                    return
            elif line.startswith("result "):
                self.result = json.loads(line[len("result ") :])
                return

    def finish(self) -> dict[str, Any]:
        if self.result is None:
            self.until()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().strip()
        if self.result is None:
            return {"error": f"loadgen exited {self.proc.returncode} without a result: {err}"}
        if self.proc.returncode not in (0, None) and "error" not in self.result:
            self.result["error"] = f"loadgen exit code {self.proc.returncode}"
        return self.result
