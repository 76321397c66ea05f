"""The Tags tab's thumbnail grid: a virtualised model over a `DatasetIndex`, and thumbnails decoded off the GUI
thread into a bounded cache.

Why it stays smooth at 100k images:
- the model is a numpy array of entry positions (the current filter); `rowCount` and `data` are O(1) and the view
  uses uniform item sizes, so Qt lays out and paints only the visible cells;
- a thumbnail is requested only when the view asks for a visible cell's picture; requests go to a LIFO queue
  (the cells the user is looking at now are decoded first) that forgets the oldest ones beyond a cap, so a
  fast scroll through 100k rows does not leave thousands of stale decodes behind;
- decoding (PIL draft mode + thumbnail) runs in daemon worker threads and produces a QImage; the GUI thread
  only turns it into a QPixmap and repaints one cell. The cache is an LRU of a few thousand pixmaps.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from trainer_core.tags.dataset_index import DatasetIndex

ENTRY_ROLE = Qt.ItemDataRole.UserRole + 1  # the entry's position in the DatasetIndex
THUMB_SIZE = 128
CELL_SIZE = QSize(THUMB_SIZE + 16, THUMB_SIZE + 30)


class ThumbnailLoader(QObject):
    """Decodes thumbnails in worker threads; `ready(entry)` fires on the GUI thread once `pixmap(entry)` has it."""

    ready = Signal(int)
    failed = Signal(int, str)
    _decoded = Signal(int, int, object, object)  # generation, entry, QImage | None, size or error text

    def __init__(
        self,
        size: int = THUMB_SIZE,
        workers: int = 2,
        cache_size: int = 4000,
        max_pending: int = 600,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.size = size
        self.cache_size = cache_size
        self.max_pending = max_pending
        self._cache: OrderedDict[int, QPixmap] = OrderedDict()
        self._failed: set[int] = set()
        self._pending: deque[tuple[int, int, Path]] = deque()
        self._queued: set[int] = set()
        self._cond = threading.Condition()
        self._generation = 0
        self._path_of: Callable[[int], Path] | None = None
        self._on_size: Callable[[int, tuple[int, int]], None] | None = None
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
        path_of: Callable[[int], Path] | None,
        on_size: Callable[[int, tuple[int, int]], None] | None = None,
    ) -> None:
        """Switch datasets: forget the cache and every pending request."""
        with self._cond:
            self._generation += 1
            self._pending.clear()
            self._queued.clear()
            self._path_of = path_of
            self._on_size = on_size
        self._cache.clear()
        self._failed.clear()

    def pixmap(self, entry: int) -> QPixmap | None:
        pix = self._cache.get(entry)
        if pix is not None:
            self._cache.move_to_end(entry)
        return pix

    def is_failed(self, entry: int) -> bool:
        return entry in self._failed

    def request(self, entry: int) -> None:
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

    def _deliver(self, generation: int, entry: int, image: QImage | None, info: object) -> None:
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


def decode_thumbnail(path: Path, size: int) -> tuple[QImage | None, tuple[int, int] | str]:
    """(thumbnail, original size) or (None, error text). Runs in worker threads: PIL + QImage only (QImage,
    unlike QPixmap, may be built outside the GUI thread)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            original = img.size
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale directly
            img.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            rgb = img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "this image is broken", shown in the grid
        return None, f"{type(exc).__name__}: {exc}"
    data = rgb.tobytes()
    qimg = QImage(data, rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888).copy()
    return qimg, original


class DatasetGridModel(QAbstractListModel):
    """Rows are the entries that pass the current filter, in dataset order."""

    def __init__(self, loader: ThumbnailLoader, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.loader = loader
        self.index_: DatasetIndex | None = None
        self.rows = np.zeros(0, dtype=np.int64)
        self._row_of = np.zeros(0, dtype=np.int64)
        loader.ready.connect(self._thumbnail_ready)

    def set_dataset(self, index: DatasetIndex | None) -> None:
        self.beginResetModel()
        self.index_ = index
        self.rows = np.arange(len(index), dtype=np.int64) if index is not None else np.zeros(0, np.int64)
        self._row_of = np.arange(len(self.rows), dtype=np.int64)
        if index is None:
            self.loader.set_source(None)
        else:
            self.loader.set_source(index.image_path, _size_setter(index))
        self.endResetModel()

    def set_rows(self, rows: np.ndarray) -> None:
        """Show only these entry positions (the filter result)."""
        self.beginResetModel()
        self.rows = np.asarray(rows, dtype=np.int64)
        n = len(self.index_) if self.index_ is not None else 0
        self._row_of = np.full(n, -1, dtype=np.int64)
        self._row_of[self.rows] = np.arange(len(self.rows), dtype=np.int64)
        self.endResetModel()

    def entry_at(self, row: int) -> int:
        return int(self.rows[row])

    def row_of(self, entry: int) -> int:
        return int(self._row_of[entry]) if 0 <= entry < len(self._row_of) else -1

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if not index.isValid() or self.index_ is None:
            return None
        entry = int(self.rows[index.row()])
        if role == Qt.ItemDataRole.DisplayRole:
            return self.index_.entries[entry].id
        if role == Qt.ItemDataRole.DecorationRole:
            pix = self.loader.pixmap(entry)
            if pix is None:
                self.loader.request(entry)
            return pix
        if role == ENTRY_ROLE:
            return entry
        if role == Qt.ItemDataRole.ToolTipRole:
            e = self.index_.entries[entry]
            return f"{e.image}\n{e.caption or '(no caption)'}"
        return None

    def _thumbnail_ready(self, entry: int) -> None:
        row = self.row_of(entry)
        if row >= 0:
            idx = self.index(row)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])


def _size_setter(index: DatasetIndex) -> Callable[[int, tuple[int, int]], None]:
    def set_size(entry: int, size: tuple[int, int]) -> None:
        e = index.entries[entry]
        if e.width <= 0 or e.height <= 0:
            e.width, e.height = size

    return set_size


class ThumbnailDelegate(QStyledItemDelegate):
    """A dark cell: the thumbnail centred, the id below, an amber frame when selected, a red X when broken."""

    def __init__(self, loader: ThumbnailLoader, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.loader = loader
        self._font = QFont()
        self._font.setPointSizeF(8.5)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        return CELL_SIZE

    def paint(
        self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        rect: QRect = option.rect.adjusted(3, 3, -3, -3)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setPen(QPen(QColor("#e0a33a"), 2) if selected else QPen(QColor("#30343a"), 1))
        painter.setBrush(QColor("#3b2f17") if selected else QColor("#25282d"))
        painter.drawRoundedRect(rect, 6, 6)
        pix = index.data(Qt.ItemDataRole.DecorationRole)
        box = QRect(rect.left() + 5, rect.top() + 5, rect.width() - 10, THUMB_SIZE)
        if isinstance(pix, QPixmap) and not pix.isNull():
            x = box.left() + (box.width() - pix.width()) // 2
            y = box.top() + (box.height() - pix.height()) // 2
            painter.drawPixmap(x, y, pix)
        else:
            entry = index.data(ENTRY_ROLE)
            broken = entry is not None and self.loader.is_failed(int(entry))
            painter.setPen(QColor("#e8845c") if broken else QColor("#4a4e55"))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, "✕ unreadable" if broken else "…")
        painter.setFont(self._font)
        painter.setPen(QColor("#f2c15e") if selected else QColor("#a9a59c"))
        text_rect = QRect(rect.left(), box.bottom() + 2, rect.width(), rect.bottom() - box.bottom() - 2)
        painter.drawText(
            text_rect, Qt.AlignmentFlag.AlignCenter, str(index.data(Qt.ItemDataRole.DisplayRole))
        )
        painter.restore()
