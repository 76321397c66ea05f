"""Generated-image gallery with history: newest first, one thumbnail per image, its infotext kept with it."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QListView, QListWidget, QListWidgetItem

THUMB = 132
HISTORY_LIMIT = 500  # beyond this the oldest thumbnails are dropped (the files stay on disk)
PATH_ROLE = Qt.ItemDataRole.UserRole
INFOTEXT_ROLE = Qt.ItemDataRole.UserRole + 1
IMAGE_ROLE = Qt.ItemDataRole.UserRole + 2


def pil_to_qimage(image) -> QImage:
    """A PIL image as a QImage that owns its pixels (safe after the PIL image is gone)."""
    rgb = image.convert("RGB")
    data = rgb.tobytes()
    qimg = QImage(data, rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888)
    return qimg.copy()


class GalleryView(QListWidget):
    """Thumbnails of generated images. `image_selected(path, infotext, QImage)` fires on selection."""

    image_selected = Signal(object, str, object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setGridSize(QSize(THUMB + 14, THUMB + 26))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setWordWrap(False)
        self.setSpacing(4)
        self.currentItemChanged.connect(self._on_current)

    def add_image(self, qimage: QImage, path: Path | None, infotext: str, label: str) -> QListWidgetItem:
        thumb = QPixmap.fromImage(qimage).scaled(
            THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
        item = QListWidgetItem(QIcon(thumb), label)
        item.setData(PATH_ROLE, str(path) if path else "")
        item.setData(INFOTEXT_ROLE, infotext)
        item.setToolTip(str(path) if path else label)
        item.setData(IMAGE_ROLE, qimage)
        self.insertItem(0, item)
        while self.count() > HISTORY_LIMIT:
            self.takeItem(self.count() - 1)
        return item

    def full_image(self, item: QListWidgetItem) -> QImage | None:
        image = item.data(IMAGE_ROLE)
        return image if isinstance(image, QImage) else None

    def _on_current(self, item: QListWidgetItem | None, _previous) -> None:
        if item is None:
            return
        path = item.data(PATH_ROLE)
        self.image_selected.emit(
            Path(path) if path else None, item.data(INFOTEXT_ROLE), self.full_image(item)
        )
