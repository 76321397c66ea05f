"""A card: a titled section of a page, with an optional subtitle, a body layout and an inline message.

Styled by resources/style/app.qss through its object names (`card`, `cardTitle`, `cardSubtitle`).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QSizePolicy, QVBoxLayout, QWidget

from .inline_message import InlineMessage


class Card(QFrame):
    """`body` is where the caller adds its widgets; `message` is the card's own inline message line."""

    def __init__(
        self, title: str, subtitle: str = "", parent: QWidget | None = None, fill: bool = False
    ) -> None:
        """`fill`: the body takes the card's spare height (a preview that should grow with the window); by default
        the content stays at the top, so cards sharing a grid row line up."""
        super().__init__(parent)
        self.setObjectName("card")
        # Preferred (not Maximum) vertically: cards sharing a grid row grow to the same height.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(16, 12, 16, 14)
        lay.setSpacing(8)
        self.title = QLabel(title)
        self.title.setObjectName("cardTitle")
        self.subtitle = QLabel(subtitle)
        self.subtitle.setObjectName("cardSubtitle")
        self.subtitle.setWordWrap(True)
        self.subtitle.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.subtitle.setVisible(bool(subtitle))
        self.message = InlineMessage()
        self.body = QVBoxLayout()
        self.body.setSpacing(6)
        lay.addWidget(self.title)
        lay.addWidget(self.subtitle)
        lay.addLayout(self.body, 1 if fill else 0)
        lay.addWidget(self.message)
        if not fill:
            lay.addStretch(1)

    def set_subtitle(self, text: str) -> None:
        self.subtitle.setText(text)
        self.subtitle.setVisible(bool(text))
