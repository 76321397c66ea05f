"""Export output files cheaply, and mark a bucket done only once its files are on disk.

Per image the export creates two files; with ~6 KB images that creation, not the copying, is the cost, so files
are written straight to their final names with plain `os` calls (no temp name, rename or fsync per file). That is
safe because a bucket's files count only once its mark exists: an interrupted bucket has no mark and is written
again, whole, on resume (a cancel stops between files, and a failed write removes its partial file).

The mark must not reach the disk before the files it vouches for. `MarkWriter` flushes the output file system
once for *all* buckets finished since its last flush (Linux `syncfs`; `os.sync` elsewhere on POSIX; per-file
fsync on Windows), then writes their marks, in a background thread, so the flush neither runs per bucket nor
stalls the export threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import sys
import threading
from pathlib import Path

from ..errors import KxlError


def write_new_file(path: str, data: bytes) -> None:
    """Write `data` to `path` (created or truncated); a partial file is removed on error."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise KxlError(f"cannot write ({exc.strerror})", path=path) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        if exc.errno == errno.ENOSPC:
            raise KxlError(
                "disk full while writing the dataset",
                path=path,
                hint="free space and run the same build again: it resumes",
            ) from None
        raise KxlError(f"cannot write ({exc.strerror})", path=path) from None
    os.close(fd)


def _syncfs_function():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


class MarkWriter:
    """Writes bucket marks (`folder/bNNN.jsonl`) after flushing the files each bucket wrote; see the module doc."""

    def __init__(self, out: Path, marks: Path) -> None:
        self.out = out
        self.marks = marks
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._syncfs = _syncfs_function()
        self._thread = threading.Thread(target=self._run, name="kxl-export-marks", daemon=True)
        self._thread.start()

    def submit(self, bucket: int, payload: bytes, files: list[str]) -> None:
        """Queue bucket `bucket`'s mark; `files` are the paths it wrote (only used where no file-system flush exists)."""
        if self._error is not None:
            raise self._error
        self._queue.put((bucket, payload, files))

    def close(self) -> None:
        """Flush and write every queued mark; re-raise a failure of the writer thread."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _flush(self, batch: list) -> None:
        if self._syncfs is not None:
            fd = os.open(self.out, os.O_RDONLY)
            try:
                if self._syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise KxlError(f"cannot flush the output to disk ({os.strerror(err)})", path=self.out)
            finally:
                os.close(fd)
        elif hasattr(os, "sync"):
            os.sync()
        else:
            for _bucket, _payload, files in batch:
                for path in files:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:  # everything finished meanwhile shares one flush
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in batch)
            batch = [item for item in batch if item is not None]
            if not batch or self._error is not None:
                continue
            try:
                self._flush(batch)
                for bucket, payload, _files in batch:
                    final = self.marks / f"b{bucket:03d}.jsonl"
                    tmp = str(final) + ".part"
                    write_new_file(tmp, payload)
                    os.replace(tmp, final)
            except BaseException as exc:  # noqa: BLE001 - handed to the export thread by submit/close
                self._error = exc
