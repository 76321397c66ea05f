"""Per-input tensor feeds for the streaming merge: each input is read ahead on its own thread.

A feed hands out the tensors of one input in a fixed order (`get`, blocking until read) and takes them back
(`release`) once the merge has written the output tensor made from them. Two kinds:

- `SegmentFeed`, for a single-file input consumed in file order (the usual case: the merge walks tensors in the
  first input's file order, and SDXL checkpoints share a layout). Runs of neighbouring tensors are read as one
  large O_DIRECT request (direct_io.py) into a ring buffer, and tensors are handed out as views of it: no page
  cache, no copies, long sequential disk requests. When the file's SHA-256 is wanted the segments cover the whole
  file, tensors the merge does not use included, and the same reads are hashed; so hashing the "original" model,
  of which only four embeddings are used, costs one read of it, made alongside the merge.
- `ReadAheadFeed`, for everything else (diffusers folders, inputs stored in another order): one tensor at a time
  through `ModelSource.get`, one tensor ahead, hashed by `SequentialHasher` when asked.
"""

from __future__ import annotations

import hashlib
import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..direct_io import ALIGN, align_down, align_up, aligned_array, open_direct_read, read_at
from ..errors import Cancelled
from ..models.safetensors_writer import ST_ITEMSIZE
from .sources import ST_TO_TORCH, ModelSource, SingleFileSource

SEGMENT_BYTES = 16 * 2**20  # one disk request: long enough to stream, small enough to keep several in flight
SKIP_GAP = 2**20  # without hashing, unused bytes up to this long between two wanted tensors are read through


class Feed(ABC):
    """Tensors of one input in a fixed order, read by a thread of its own; see the module docstring.

    Subclasses implement `_read_all` (the thread's work) and call `_start(name)` at the end of `__init__`.
    """

    def _start(self, name: str) -> None:
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._read_all()
        except BaseException as exc:  # noqa: BLE001 - re-raised by get() in the merge thread
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    @abstractmethod
    def _read_all(self) -> None:
        """Read (and hash) everything in order; returns early once `self._stop` is set."""

    def _wait(self, done) -> None:
        """Block until `done()` holds (called under the lock); raise the reader's error, or Cancelled if closed."""
        with self._cond:
            while not done() and self._error is None and not self._stop:
                self._cond.wait()
            if done():
                return
            if self._error is not None:
                raise self._error
            raise Cancelled("merge stopped")

    def close(self) -> None:
        """Stop the reader thread and release the file."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()

    @abstractmethod
    def get(self, key: str) -> Any:
        """The next tensor (must be `key`, the next in the feed's order); a view valid until `release(key)`."""

    @abstractmethod
    def release(self, key: str) -> None:
        """The merge is done with `key`'s tensor: its buffer may be reused."""

    @abstractmethod
    def finish_hash(self) -> str | None:
        """The input's full-file SHA-256 once every tensor was consumed, if the feed was asked to hash."""


@dataclass
class _Segment:
    start: int  # file bytes [start, end) this segment is responsible for (hashing and tensors)
    end: int
    keys: list[str] = field(default_factory=list)
    pos: int = -1  # ring offset of align_down(start)
    refs: int = 0
    ready: bool = False
    hashed: bool = False

    @property
    def read_start(self) -> int:
        return align_down(self.start)

    @property
    def read_len(self) -> int:
        return align_up(self.end) - self.read_start


def plan_segments(
    spans: list[tuple[str, int, int]], file_size: int, whole_file: bool, segment_bytes: int | None = None
) -> list[_Segment] | None:
    """Group `(key, start, end)` spans (consumption order) into disk requests; None if not in file order.

    `whole_file`: segments cover every byte of the file (for hashing), in order and without overlap.
    """
    segment_bytes = segment_bytes or SEGMENT_BYTES
    for (_, _, end0), (_, start1, _) in zip(spans, spans[1:], strict=False):
        if start1 < end0:
            return None
    pieces: list[tuple[str | None, int, int]] = []  # (key or None for a hash-only gap, start, end)
    pos = 0
    for key, start, end in spans:
        if whole_file and start > pos:
            pieces += [(None, s, min(start, s + segment_bytes)) for s in range(pos, start, segment_bytes)]
        pieces.append((key, start, end))
        pos = end
    if whole_file and pos < file_size:
        pieces += [(None, s, min(file_size, s + segment_bytes)) for s in range(pos, file_size, segment_bytes)]
    segments: list[_Segment] = []
    for key, start, end in pieces:
        seg = segments[-1] if segments else None
        joins = (
            seg is not None
            and end - seg.start <= segment_bytes
            and (whole_file or start - seg.end <= SKIP_GAP)
        )
        if not joins:
            seg = _Segment(start, end)
            segments.append(seg)
        assert seg is not None
        seg.end = end
        if key is not None:
            seg.keys.append(key)
    return segments


class SegmentFeed(Feed):
    """O_DIRECT segment reads into a ring buffer, tensors handed out as views; optional whole-file SHA-256."""

    def __init__(
        self, source: SingleFileSource, segments: list[_Segment], hash_file: bool, fd: int | None = None
    ):
        """`segments`: `plan_segments` of the keys to serve (with `whole_file=hash_file`)."""
        import torch

        self.source = source
        self.path = source.path
        entries = source.header.tensors
        self._segments = segments
        self._of_key = {k: seg for seg in segments for k in seg.keys}
        for seg in segments:
            seg.refs = len(seg.keys)
        self._entries = entries
        self._hasher = hashlib.sha256() if hash_file else None
        biggest = max((s.read_len for s in segments), default=ALIGN)
        self._capacity = biggest + 2 * SEGMENT_BYTES  # the biggest request plus two ordinary ones in flight
        self._ring = aligned_array(self._capacity)
        self._ring_t = torch.from_numpy(self._ring)
        self._live: deque[_Segment] = deque()
        self._fd = fd if fd is not None else os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._start(f"merge-read-{self.path.name}")

    # -- ring bookkeeping (under self._cond) --------------------------------------------------------------------
    def _place(self, length: int) -> int | None:
        if not self._live:
            return 0
        oldest, newest = self._live[0], self._live[-1]
        head = newest.pos + newest.read_len
        if newest.pos >= oldest.pos:  # not wrapped: free space after head, then before the oldest
            if head + length <= self._capacity:
                return head
            return 0 if length <= oldest.pos else None
        return head if head + length <= oldest.pos else None

    def _drop_finished(self) -> None:
        while self._live:
            seg = self._live[0]
            if not seg.ready or seg.refs or (self._hasher is not None and not seg.hashed):
                return
            self._live.popleft()

    # -- reader thread ------------------------------------------------------------------------------------------
    def _read_all(self) -> None:
        view = memoryview(self._ring)
        for seg in self._segments:
            with self._cond:
                while not self._stop and (pos := self._place(seg.read_len)) is None:
                    self._cond.wait()
                if self._stop:
                    return
                seg.pos = pos
                self._live.append(seg)
            read_at(
                self._fd, view[pos : pos + seg.read_len], seg.read_start, seg.end - seg.read_start, self.path
            )
            with self._cond:
                seg.ready = True
                self._cond.notify_all()
            if self._hasher is not None:
                skip = seg.start - seg.read_start
                self._hasher.update(view[pos + skip : pos + skip + seg.end - seg.start])
                with self._cond:
                    seg.hashed = True
                    self._drop_finished()
                    self._cond.notify_all()

    # -- merge thread --------------------------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        import torch

        seg = self._of_key[key]
        self._wait(lambda: seg.ready)
        entry = self._entries[key]
        dtype = getattr(torch, ST_TO_TORCH[entry.dtype])
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=dtype)
        at = seg.pos + entry.start - seg.read_start
        raw = self._ring_t[at : at + entry.nbytes]
        if at % ST_ITEMSIZE[entry.dtype]:
            raw = raw.clone()  # stored at an offset its dtype cannot be viewed at (writers that do not align)
        return raw.view(dtype).reshape(entry.shape)

    def release(self, key: str) -> None:
        seg = self._of_key[key]
        with self._cond:
            seg.refs -= 1
            self._drop_finished()
            self._cond.notify_all()

    def finish_hash(self) -> str | None:
        if self._hasher is None:
            return None
        self._thread.join()
        with self._cond:
            if self._error is not None:
                raise self._error
        return self._hasher.hexdigest()

    def close(self) -> None:
        super().close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ReadAheadFeed(Feed):
    """Any source, any order: a thread reads the next tensor into a second buffer while the current one is used."""

    def __init__(self, source: ModelSource, keys: list[str], hash_file: bool):
        import torch

        self.source = source
        self._keys = keys
        if hash_file and isinstance(source, SingleFileSource):
            source.hash_while_reading()
        biggest = max((source.tensors[k].nbytes for k in keys), default=0)
        self._slots = [torch.empty(biggest, dtype=torch.uint8) for _ in range(2)]
        self._free = [0, 1]
        self._ready: dict[str, tuple[int, Any]] = {}
        self._start(f"merge-read-{source.name}")

    def _read_all(self) -> None:
        for key in self._keys:
            with self._cond:
                while not self._free and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                slot = self._free.pop()
            tensor = self.source.get(key, self._slots[slot])
            with self._cond:
                self._ready[key] = (slot, tensor)
                self._cond.notify_all()

    def get(self, key: str) -> Any:
        self._wait(lambda: key in self._ready)
        return self._ready[key][1]

    def release(self, key: str) -> None:
        with self._cond:
            slot, _ = self._ready.pop(key)
            self._free.append(slot)
            self._cond.notify_all()

    def finish_hash(self) -> str | None:
        return self.source.finish_hash()


def open_feed(source: ModelSource, keys: list[str], hash_file: bool) -> Feed:
    """The fastest feed that can serve `keys` of `source` in this order."""
    if isinstance(source, SingleFileSource):
        entries = source.header.tensors
        spans = [(k, entries[k].start, entries[k].end) for k in keys]
        segments = plan_segments(spans, source.path.stat().st_size, hash_file)
        if segments is not None:
            return SegmentFeed(source, segments, hash_file, fd=open_direct_read(source.path))
    return ReadAheadFeed(source, keys, hash_file)
