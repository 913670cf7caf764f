"""tlspeer (tlspeer.c): a TLS peer built on the OpenSSL that relaycore._core links (3.5),
for what Python's ssl module (the system's OpenSSL 3.0) cannot do: negotiate the hybrid
group X25519MLKEM768, and send TLS 1.3 KeyUpdates mid-stream.

build() compiles it once into build/tlspeer with ext/openssl/locate.py's flags (the same
library, found or fetched the same way as setup.py does). `make test-ktls` builds it on the
host beforehand (`python tests/support/tlspeer.py`), so that the slow kTLS guest only runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).with_name("tlspeer.c")
BINARY = REPO / "build" / "tlspeer"
LOCATE = REPO / "ext" / "openssl"
WAIT_TIMEOUT = 10.0


def build() -> Path:
    """build/tlspeer, compiled if it is missing or older than its source."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    sys.path.insert(0, str(LOCATE))
    try:
        from locate import locate  # ext/openssl is not a package
    finally:
        sys.path.remove(str(LOCATE))
    BINARY.parent.mkdir(exist_ok=True)
    tmp = BINARY.with_suffix(f".{os.getpid()}")
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(tmp), str(SOURCE), *locate().gcc_args()], check=True
    )
    tmp.replace(BINARY)
    return BINARY


class TLSPeer:
    """One tlspeer process (see tlspeer.c for its modes). Its output goes to files, not
    pipes (the relay tests count the pipe fds of the process), and is parsed on demand:
    `.port` (server), `.keyshares` (server), `.group`, `.version`, `.cipher`; wait_done()
    gives its DONE report ({"in": bytes, "out": bytes, "in_sha256": hex, "out_sha256":
    hex, "keyupdates": n})."""

    def __init__(self, *args: str) -> None:
        # Closed by stop(): they live as long as the process.
        self._out = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(build()), *args], stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err
        )
        self.port = 0
        self.group: str | None = None
        self.keyshares: list[list[int]] = []  # server: each ClientHello's, by codepoint
        self.version: str | None = None
        self.cipher: str | None = None
        self.done: dict[str, int | str] | None = None

    @classmethod
    def server(cls, cert: Path | str, key: Path | str, every: int = 0) -> TLSPeer:
        peer = cls("server", str(cert), str(key), str(every))
        deadline = time.monotonic() + WAIT_TIMEOUT
        pacing = threading.Event()
        while not peer.poll().port:
            if peer.proc.poll() is not None or time.monotonic() > deadline:
                peer.stop()
                raise RuntimeError(f"tlspeer did not listen: {peer.stderr()}")
            pacing.wait(0.01)
        return peer

    @classmethod
    def client(
        cls, port: int, cert: Path | str, key: Path | str, nbytes: int, every: int = 0
    ) -> TLSPeer:
        return cls("client", str(port), str(cert), str(key), str(nbytes), str(every))

    def poll(self) -> TLSPeer:
        """Parse what it has written so far."""
        self._out.seek(0)
        self.keyshares = []
        for line in self._out.read().splitlines():
            word, _, rest = line.partition(" ")
            if word == "PORT":
                self.port = int(rest)
            elif word == "KEYSHARES":
                self.keyshares.append([int(g, 16) for g in rest.split(",") if g])
            elif word == "GROUP":
                self.group, self.version, self.cipher = rest.split()
            elif word == "DONE":
                self.done = {
                    k: int(v) if v.isdigit() else v for k, v in re.findall(r"(\w+)=(\S+)", rest)
                }
        return self

    def wait_done(self, timeout: float) -> dict[str, int | str]:
        """Its DONE report, once it exited 0; else RuntimeError with its stderr."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"tlspeer still running after {timeout}s") from None
        self.poll()
        if rc != 0 or self.done is None:
            raise RuntimeError(f"tlspeer exited {rc}: {self.stderr()}")
        return self.done

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_TIMEOUT)
        self._out.close()
        self._err.close()

    def __enter__(self) -> TLSPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    print(build())
