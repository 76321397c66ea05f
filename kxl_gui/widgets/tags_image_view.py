"""The selected image with its training crop drawn on it: the bucket window in amber, what the trainer cuts away
dimmed. The preview pixmap may be smaller than the original; the crop is given in original pixels."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget


class CropImageView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pixmap: QPixmap | None = None
        self._original: tuple[int, int] | None = None
        self._crop: tuple[float, float, float, float] | None = None
        self._message = "Select an image"
        self.setMinimumHeight(220)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(420, 320)

    def set_image(
        self,
        pixmap: QPixmap | None,
        original_size: tuple[int, int] | None,
        crop: tuple[float, float, float, float] | None,
        message: str = "",
    ) -> None:
        self._pixmap = pixmap
        self._original = original_size
        self._crop = crop
        self._message = message
        self.update()

    @property
    def crop(self) -> tuple[float, float, float, float] | None:
        return self._crop

    def image_rect(self) -> QRectF | None:
        """Where the picture is drawn (fit inside the widget, centred)."""
        if self._pixmap is None or self._pixmap.isNull():
            return None
        pw, ph = self._pixmap.width(), self._pixmap.height()
        scale = min((self.width() - 8) / pw, (self.height() - 8) / ph)
        w, h = pw * scale, ph * scale
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#181a1d"))
        target = self.image_rect()
        if target is None:
            painter.setPen(QColor("#8f8b83"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self._message)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        painter.drawPixmap(target, self._pixmap, QRectF(self._pixmap.rect()))
        if self._crop is None or self._original is None:
            return
        sx = target.width() / self._original[0]
        sy = target.height() / self._original[1]
        left, top, right, bottom = self._crop
        window = QRectF(
            target.left() + left * sx, target.top() + top * sy, (right - left) * sx, (bottom - top) * sy
        )
        shade = QColor(0, 0, 0, 150)
        # Dim the four strips outside the crop window: that is what the trainer never sees.
        painter.fillRect(
            QRectF(target.left(), target.top(), target.width(), window.top() - target.top()), shade
        )
        painter.fillRect(
            QRectF(target.left(), window.bottom(), target.width(), target.bottom() - window.bottom()), shade
        )
        painter.fillRect(
            QRectF(target.left(), window.top(), window.left() - target.left(), window.height()), shade
        )
        painter.fillRect(
            QRectF(window.right(), window.top(), target.right() - window.right(), window.height()), shade
        )
        painter.setPen(QPen(QColor("#e0a33a"), 2, Qt.PenStyle.DashLine))
        painter.drawRect(window)
