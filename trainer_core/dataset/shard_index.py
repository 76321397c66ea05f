"""Where a reference build gets each shard's settled tar headers: walked (`walk_shards`, in the caption worker
processes or on the build's threads), or from the images folder's header index, which a build leaves behind so
that the next build over the same shards (another recipe, the same build run again) reads no shard at all.

The index (`ShardIndex`) is one file per images folder under the app's cache folder: for each shard its
absolute path, size, mtime, ctime and inode, then the 7 numbers per member that tar_headers.Headers holds
(~56 bytes per member), a shard's 7 columns back to back, so that saving is one concatenation of the walked
arrays (version 1 kept each column across all shards: a stack per shard and a transpose, 0.16 s per million
members). An entry is used only while all four of the shard's numbers are unchanged: any write
to or replacement of a shard moves its ctime, which no tool can set back, so a stale entry is never used and
the shard is simply walked again. One file per folder (not per shard) because creating a file costs 0.2-0.7 ms
of kernel time on the project's VM: 3,000 small files would make a first build slower by about a second.
The file is plain data (a JSON table, then int64 columns), never pickle, written by the build's main process
to a temp file and renamed; a damaged one reads as empty, and a cache folder that cannot be written only means
no index. Each save removes the index files of images folders that no longer exist (`prune_stale`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..paths import cache_dir
from .tar_headers import COMPILED, Headers, Walk, settle, walk_settled, walk_shard

_MAGIC = b"KXLSHIX2"  # the format's version is in the last byte
_LENGTH = struct.Struct("<Q")
_COLUMNS = len(Headers._fields)


class WalkedShard(NamedTuple):
    """One shard's state when opened and its settled headers (None where the batch reader cannot decide it:
    the build's one-member-at-a-time readers take it instead)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    headers: Headers | None


def walk_shards(paths: list[str], check: Callable[[], None] | None = None) -> list[WalkedShard | None]:
    """Open, walk and settle `paths` (tar_headers: `walk_settled` where compiled, else `walk_shard`, then one
    `settle` for all). Picklable in and out, so a reference build can run it in its caption worker processes (the
    numpy walk) as well as on threads (the compiled walk releases the GIL). None for a shard that does not open
    (the caller's fallback reports it as a copy build does). `check` runs before each shard (cancel)."""
    stats: list[os.stat_result | None] = []
    walks: list[Walk] = []
    walked_at: list[int] = []
    headers: list[Headers | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        if check is not None:
            check()
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError:
            stats.append(None)
            continue
        walk = None
        try:
            st = os.fstat(fd)
            if COMPILED:
                headers[i] = walk_settled(fd, st.st_size)
            else:
                walk = walk_shard(fd, st.st_size)
        except OSError:
            # a shard that fails to read: left to the fallback readers, which report it as a copy build does
            st, walk = None, None
        finally:
            os.close(fd)
        stats.append(st)
        if walk is not None:
            walks.append(walk)
            walked_at.append(i)
    for i, settled in zip(walked_at, settle(walks), strict=True):
        headers[i] = settled
    return [
        None if st is None else WalkedShard(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, h)
        for st, h in zip(stats, headers, strict=True)
    ]


def index_root() -> Path:
    return cache_dir() / "shard-headers"


class ShardIndex:
    """The header index of one images folder: `lookup` what it holds, `add` what was walked, `save` once."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self._entries: dict[str, tuple[int, int, int, int, int, int]] = {}  # path -> key (4), start, count
        self._body = np.zeros(0, dtype=np.int64)  # each entry's 7 columns from 7 * start on
        self._added: dict[str, WalkedShard] = {}

    @classmethod
    def open(cls, images: Path, enabled: bool = True) -> ShardIndex:
        """The index of the folder `images` (empty where there is none, it is damaged, or `enabled` is False:
        then nothing is saved either)."""
        if not enabled:
            return cls(None)
        name = hashlib.sha256(os.path.abspath(images).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        index = cls(index_root() / f"{name}.bin")
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            index._read()
        return index

    def _read(self) -> None:
        assert self.file is not None
        data = self.file.read_bytes()
        if data[:8] != _MAGIC or len(data) < 8 + _LENGTH.size:
            return
        (n_json,) = _LENGTH.unpack_from(data, 8)
        start = 8 + _LENGTH.size + n_json
        start += -start % 8
        table = json.loads(data[8 + _LENGTH.size : 8 + _LENGTH.size + n_json])
        total = sum(int(row[5]) for row in table)
        if len(data) != start + 8 * _COLUMNS * total:
            return
        body = np.frombuffer(data, dtype="<i8", offset=start)
        entries, at = {}, 0
        for path, size, mtime_ns, ctime_ns, inode, n in table:
            entries[str(path)] = (int(size), int(mtime_ns), int(ctime_ns), int(inode), at, int(n))
            at += int(n)
        self._entries, self._body = entries, body

    def _columns(self, start: int, n: int) -> np.ndarray:
        return self._body[_COLUMNS * start : _COLUMNS * (start + n)].reshape(_COLUMNS, n)

    def lookup(self, path: Path) -> WalkedShard | None:
        """The shard's headers as indexed, when the shard is unchanged since (else None: walk it)."""
        if not self._entries:
            return None  # a first build: no path to make absolute
        key = os.path.abspath(path)
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        size, mtime_ns, ctime_ns, inode, start, n = entry
        if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != (size, mtime_ns, ctime_ns, inode):
            return None
        cols = self._columns(start, n)
        return WalkedShard(size, mtime_ns, ctime_ns, inode, Headers(*(cols[i] for i in range(_COLUMNS))))

    def add(self, path: Path, walked: WalkedShard | None) -> None:
        """Remember a shard walked by this build (one the batch reader settled) for `save`."""
        if walked is not None and walked.headers is not None and self.file is not None:
            self._added[os.path.abspath(path)] = walked

    def save(self) -> None:
        """Write the index again if this build walked any shard: the entries it had, those shards replaced.
        Best effort: a folder that cannot be written only means no index next time."""
        if not self._added or self.file is None:
            return
        table, parts = [], []
        for path, (size, mtime_ns, ctime_ns, inode, start, n) in self._entries.items():
            if path not in self._added:
                table.append([path, size, mtime_ns, ctime_ns, inode, n])
                parts.append(self._body[_COLUMNS * start : _COLUMNS * (start + n)])
        for path, w in self._added.items():
            assert w.headers is not None
            table.append([path, w.size, w.mtime_ns, w.ctime_ns, w.inode, len(w.headers.ids)])
            parts.extend(w.headers)
        head = json.dumps(table).encode("utf-8", "surrogateescape")
        blob = _MAGIC + _LENGTH.pack(len(head)) + head
        blob += bytes(-len(blob) % 8)
        body = np.concatenate(parts).astype("<i8", copy=False) if parts else np.zeros(0, "<i8")
        tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.tmp")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.write(memoryview(body))
            os.replace(tmp, self.file)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        prune_stale(self.file.parent, keep=self.file)


def _shard_folders(file: Path) -> set[str] | None:
    """The folders of the shards an index file lists (None: not an index file this build can read)."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(8 + _LENGTH.size)
            if head[:8] != _MAGIC or len(head) < 8 + _LENGTH.size:
                return None
            (n_json,) = _LENGTH.unpack_from(head, 8)
            table = json.loads(fh.read(n_json))
        return {os.path.dirname(str(row[0])) for row in table}
    except (OSError, ValueError, TypeError, IndexError, KeyError):
        return None


def prune_stale(folder: Path, keep: Path | None = None) -> list[Path]:
    """Remove the index files of images folders that no longer exist: one file per folder ever built from would
    otherwise pile up in the cache. A file that cannot be read is left alone."""
    removed = []
    try:
        files = sorted(folder.glob("*.bin"))
    except OSError:
        return removed
    for file in files:
        if keep is not None and file == keep:
            continue
        folders = _shard_folders(file)
        if folders and not any(os.path.isdir(f) for f in folders):
            with contextlib.suppress(OSError):
                file.unlink()
                removed.append(file)
    return removed


__all__ = ["ShardIndex", "WalkedShard", "index_root", "prune_stale", "walk_shards"]
