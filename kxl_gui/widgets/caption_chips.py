"""Caption chips: one coloured pill per tag, by category, with a popularity dot, wrapped like text.

Colours come from the app's one palette (kxl_gui/kit/palette.py), so a tag has the same colour here, in the
Dataset wizard's caption preview and in the Generate tag builder.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QLabel, QLayout, QLayoutItem, QSizePolicy, QWidget

from trainer_core.tags.caption_categories import CaptionTagKind, classify_caption_tag
from trainer_core.tags.popularity import popularity_guidance
from trainer_core.tags.vocabulary import TagVocabulary

from ..kit.palette import KIND_COLORS, LEVEL_COLORS


class FlowLayout(QLayout):
    """Lays children out left to right and wraps them, like words in a paragraph."""

    def __init__(self, parent: QWidget | None = None, spacing: int = 5) -> None:
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self._spacing = spacing
        self.setContentsMargins(0, 0, 0, 0)

    def addItem(self, item: QLayoutItem) -> None:
        self._items.append(item)

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, i: int) -> QLayoutItem | None:
        return self._items[i] if 0 <= i < len(self._items) else None

    def takeAt(self, i: int) -> QLayoutItem | None:
        return self._items.pop(i) if 0 <= i < len(self._items) else None

    def expandingDirections(self) -> Qt.Orientation:
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return self._arrange(QRect(0, 0, width, 0), move=False)

    def setGeometry(self, rect: QRect) -> None:
        super().setGeometry(rect)
        self._arrange(rect, move=True)

    def sizeHint(self) -> QSize:
        return self.minimumSize()

    def minimumSize(self) -> QSize:
        size = QSize()
        for item in self._items:
            size = size.expandedTo(item.minimumSize())
        return size

    def _arrange(self, rect: QRect, move: bool) -> int:
        x, y, line_height = rect.x(), rect.y(), 0
        for item in self._items:
            hint = item.sizeHint()
            if x + hint.width() > rect.right() + 1 and line_height > 0:
                x, y = rect.x(), y + line_height + self._spacing
                line_height = 0
            if move:
                item.setGeometry(QRect(QPoint(x, y), hint))
            x += hint.width() + self._spacing
            line_height = max(line_height, hint.height())
        return y + line_height - rect.y()


class TagChip(QLabel):
    clicked = Signal(str)

    def __init__(self, text: str, kind: CaptionTagKind, post_count: int | None, part: str) -> None:
        self.tag_text = text
        self.kind = kind
        self.part = part  # "fixed" | "flex" | "suffix"
        self.post_count = post_count
        color = KIND_COLORS[kind]
        dot = ""
        tip = f"{text}\ncategory: {kind.value}\n{'fixed (never shuffled or dropped)' if part != 'flex' else 'flexible (shuffled, may be dropped)'}"
        if post_count is not None:
            guidance = popularity_guidance(post_count)
            dot = f' <span style="color:{LEVEL_COLORS[guidance.level]}">●</span>'
            tip += f"\n{post_count:,} posts: {guidance.label}"
        super().__init__(f"{_escape(text)}{dot}")
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setToolTip(tip + "\nclick: add to the search")
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        border = "dashed" if part == "flex" else "solid"
        self.setStyleSheet(
            f"QLabel {{ color: {color}; background: {_rgba(color, 0.14)}; border: 1px {border} {_rgba(color, 0.6)};"
            " border-radius: 9px; padding: 2px 8px; }"
        )

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.tag_text)
        super().mousePressEvent(event)


class ChipView(QWidget):
    """The caption of one image as chips: fixed head, a `|||` marker, flexible tags, optional fixed suffix."""

    tag_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = FlowLayout(self)
        self.chips: list[TagChip] = []
        sp = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        sp.setHeightForWidth(True)
        self.setSizePolicy(sp)

    def set_caption(
        self,
        fixed: list[str],
        flex: list[str],
        suffix: list[str],
        has_separator: bool,
        vocabulary: TagVocabulary | None,
    ) -> None:
        while (item := self._layout.takeAt(0)) is not None:
            if item.widget() is not None:
                item.widget().deleteLater()
        self.chips = []
        for part, tags in (("fixed", fixed), ("flex", flex), ("suffix", suffix)):
            if part == "flex" and has_separator:
                self._add_marker()
            if part == "suffix" and suffix:
                self._add_marker()
            for text in tags:
                tag = vocabulary.get(text) if vocabulary is not None else None
                chip = TagChip(text, classify_caption_tag(text, vocabulary), tag.count if tag else None, part)
                chip.clicked.connect(self.tag_clicked)
                self.chips.append(chip)
                self._layout.addWidget(chip)
        self.updateGeometry()

    def _add_marker(self) -> None:
        marker = QLabel("|||")
        marker.setObjectName("captionSplit")
        marker.setToolTip(
            "keep-tokens separator: tags before it stay fixed in front; tags after it are shuffled"
        )
        marker.setStyleSheet("QLabel { color: #f2c15e; font-weight: 700; padding: 2px 4px; }")
        self._layout.addWidget(marker)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return self._layout.heightForWidth(width)

    def sizeHint(self) -> QSize:
        width = max(self.width(), 300)
        return QSize(width, self._layout.heightForWidth(width))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _rgba(hex_color: str, alpha: float) -> str:
    # Qt style sheets read 8-digit hex as #AARRGGBB (not CSS's #RRGGBBAA), so spell the alpha out.
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {int(alpha * 255)})"
