"""SHA-256 of a file computed from the reads a merge makes anyway.

The merge reads tensors roughly in file order; each read is fed here with its offset. Bytes arriving in order
are hashed as they are; a gap ahead is read (and hashed) from a second handle; bytes already hashed are skipped.
So an input read in file order is hashed with no extra I/O, and `finish()` reads only what the merge never
touched (for the "original" model, all but four embedding tensors).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 8 * 2**20


class SequentialHasher:
    def __init__(self, path: Path):
        self.path = path
        self._h = hashlib.sha256()
        self._pos = 0
        self._size = path.stat().st_size
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in finish()/close()

    def _read_until(self, end: int) -> None:
        self._fh.seek(self._pos)
        while self._pos < end:
            chunk = self._fh.read(min(_CHUNK, end - self._pos))
            if not chunk:
                break
            self._h.update(chunk)
            self._pos += len(chunk)

    def feed(self, offset: int, data: memoryview | bytes) -> None:
        end = offset + len(data)
        if end <= self._pos:
            return
        if offset > self._pos:
            self._read_until(offset)
        start = self._pos - offset
        self._h.update(data[start:])
        self._pos = end

    def finish(self) -> str:
        self._read_until(self._size)
        self.close()
        return self._h.hexdigest()

    def close(self) -> None:
        self._fh.close()
