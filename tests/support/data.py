"""Deterministic test data: a seeded pseudo-random byte stream, generated block by block.

The same (nbytes, seed) always yields the same bytes, so the sender and an independent
checker agree without keeping the whole payload in memory.
"""

from __future__ import annotations

import hashlib
import random

BLOCK = 1 << 20
KiB = 1024
MiB = 1024 * 1024


class RandomStream:
    """`nbytes` of `random.Random(seed).randbytes` output, consumed by peek/advance so that a
    partial send keeps the unsent tail. `sha` hashes exactly the bytes advanced over."""

    def __init__(self, nbytes: int, seed: int) -> None:
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        self.total = nbytes
        self.consumed = 0
        self.sha = hashlib.sha256()
        self._rng = random.Random(seed)
        self._ungenerated = nbytes
        self._block = b""
        self._off = 0

    @property
    def done(self) -> bool:
        return self.consumed >= self.total

    def peek(self, n: int) -> memoryview:
        """Up to n next bytes (fewer at a block boundary, empty at the end)."""
        if self._off >= len(self._block):
            if self._ungenerated == 0:
                return memoryview(b"")
            size = min(BLOCK, self._ungenerated)
            self._block = self._rng.randbytes(size)
            self._ungenerated -= size
            self._off = 0
        return memoryview(self._block)[self._off : self._off + n]

    def advance(self, k: int) -> None:
        """Mark k bytes of the last peek as sent."""
        if k < 0 or self._off + k > len(self._block):
            raise ValueError("advance past the peeked bytes")
        self.sha.update(memoryview(self._block)[self._off : self._off + k])
        self._off += k
        self.consumed += k

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def stream_digest(nbytes: int, seed: int, prefix: int | None = None) -> str:
    """SHA-256 of RandomStream(nbytes, seed), or of its first `prefix` bytes, computed
    independently of any socket. (A shorter stream is not a prefix of a longer one: the
    generator's last partial word differs.)"""
    stream = RandomStream(nbytes, seed)
    left = nbytes if prefix is None else prefix
    while left > 0 and not stream.done:
        n = len(stream.peek(min(BLOCK, left)))
        stream.advance(n)
        left -= n
    return stream.hexdigest()
