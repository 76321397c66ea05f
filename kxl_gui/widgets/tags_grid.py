"""The Tags tab's thumbnail grid: a virtualised model over a `DatasetIndex` and its cell painter; thumbnails come
from the app's one `ThumbnailLoader` (thumbnail_loader.py).

Why it stays smooth at 100k images:
- the model is a numpy array of entry positions (the current filter); `rowCount` and `data` are O(1) and the view
  uses uniform item sizes, so Qt lays out and paints only the visible cells;
- a thumbnail is requested only when the view asks for a visible cell's picture, and decoded in the loader's
  workers; the GUI thread repaints one cell when it arrives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
)
from PySide6.QtGui import QColor, QFont, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from trainer_core.tags.dataset_index import DatasetIndex

from .thumbnail_loader import ThumbnailLoader

ENTRY_ROLE = Qt.ItemDataRole.UserRole + 1  # the entry's position in the DatasetIndex
THUMB_SIZE = 128
CELL_SIZE = QSize(THUMB_SIZE + 16, THUMB_SIZE + 30)
__all__ = ["CELL_SIZE", "DatasetGridModel", "ThumbnailDelegate", "ThumbnailLoader"]


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
            self.loader.set_source(_picture_source(index), _size_setter(index))
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


def _picture_source(index: DatasetIndex):
    """Where an entry's picture comes from: its file, or its shard for a referenced dataset."""
    return lambda i: (lambda: index.open_image(i)) if i in index.refs else index.image_path(i)


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
