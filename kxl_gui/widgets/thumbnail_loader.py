"""One thumbnail loader for the app's picture grids (the Tags grid, the Train tab's samples): pictures decoded
off the GUI thread into a bounded cache, keyed by whatever the caller names a picture by (a dataset entry's
position, a sample's path).

Why it stays smooth at 100k images:
- a thumbnail is requested only when a view asks for a visible cell's picture; requests go to a LIFO queue (the
  cells the user is looking at now are decoded first) that forgets the oldest ones beyond a cap, so a fast scroll
  through 100k rows does not leave thousands of stale decodes behind;
- decoding (PIL draft mode + thumbnail) runs in daemon worker threads and produces a QImage (which, unlike a
  QPixmap, may be built outside the GUI thread); the GUI thread only turns it into a QPixmap. The cache is an LRU
  of a few thousand pixmaps.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage, QPixmap


class ThumbnailLoader(QObject):
    """Decodes thumbnails in worker threads; `ready(key)` fires on the GUI thread once `pixmap(key)` has it (or
    `is_failed(key)` says it cannot be decoded, after `failed(key, reason)`)."""

    ready = Signal(object)
    failed = Signal(object, str)
    _decoded = Signal(int, object, object, object)  # generation, key, QImage | None, size or error text

    def __init__(
        self,
        size: int = 128,
        workers: int = 2,
        cache_size: int = 4000,
        max_pending: int = 600,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.size = size
        self.cache_size = cache_size
        self.max_pending = max_pending
        self._cache: OrderedDict[Hashable, QPixmap] = OrderedDict()
        self._failed: set[Hashable] = set()
        self._pending: deque[tuple[int, Hashable, Path]] = deque()
        self._queued: set[Hashable] = set()
        self._cond = threading.Condition()
        self._generation = 0
        self._path_of: Callable[[Hashable], Path] | None = None
        self._on_size: Callable[[Hashable, tuple[int, int]], None] | None = None
        self._stopped = False
        self.decoded_count = 0
        self._decoded.connect(self._deliver, Qt.ConnectionType.QueuedConnection)
        self._threads = [
            threading.Thread(target=self._work, name=f"kxl-thumbs-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def set_source(
        self,
        path_of: Callable[[Hashable], Path | Callable[[], Any]] | None,
        on_size: Callable[[Hashable, tuple[int, int]], None] | None = None,
    ) -> None:
        """Where the picture of a key is (`path_of(key)`), and who wants the original sizes decoding finds.
        A new source (another dataset) forgets the cache and every pending request."""
        with self._cond:
            self._generation += 1
            self._pending.clear()
            self._queued.clear()
            self._path_of = path_of
            self._on_size = on_size
        self._cache.clear()
        self._failed.clear()

    def pixmap(self, entry: Hashable) -> QPixmap | None:
        pix = self._cache.get(entry)
        if pix is not None:
            self._cache.move_to_end(entry)
        return pix

    def is_failed(self, entry: Hashable) -> bool:
        return entry in self._failed

    def request(self, entry: Hashable) -> None:
        if entry in self._cache or entry in self._failed or self._path_of is None:
            return
        with self._cond:
            if entry in self._queued:
                return
            self._queued.add(entry)
            self._pending.append((self._generation, entry, self._path_of(entry)))
            while len(self._pending) > self.max_pending:
                _, old, _ = self._pending.popleft()
                self._queued.discard(old)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                generation, entry, path = self._pending.pop()  # newest first: what is on screen now
            image, info = decode_thumbnail(path, self.size)
            try:
                self._decoded.emit(generation, entry, image, info)
            except RuntimeError:  # the loader was deleted with its page: nobody is listening any more
                return

    def _deliver(self, generation: int, entry: Hashable, image: QImage | None, info: object) -> None:
        with self._cond:
            self._queued.discard(entry)
            current = generation == self._generation
        if not current:
            return
        if image is None:
            self._failed.add(entry)
            self.failed.emit(entry, str(info))
            self.ready.emit(entry)
            return
        if self._on_size is not None and isinstance(info, tuple):
            self._on_size(entry, info)
        self._cache[entry] = QPixmap.fromImage(image)
        self.decoded_count += 1
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.ready.emit(entry)


def decode_thumbnail(
    source: Path | Callable[[], Any], size: int
) -> tuple[QImage | None, tuple[int, int] | str]:
    """(thumbnail, original size) or (None, error text). `source` is a file, or a function opening the picture
    (a referenced dataset's image lives inside a shard). Runs in worker threads: PIL + QImage only (QImage,
    unlike QPixmap, may be built outside the GUI thread)."""
    from PIL import Image

    try:
        with source() if callable(source) else Image.open(source) as img:
            original = img.size
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale directly
            img.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            rgb = img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "this image is broken", shown in the grid
        return None, f"{type(exc).__name__}: {exc}"
    data = rgb.tobytes()
    qimg = QImage(data, rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888).copy()
    return qimg, original
