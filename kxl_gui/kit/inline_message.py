"""An inline message: one line (or a few) of info, warning or error text shown next to what it is about.

It replaces error text written into labels meant for something else (a big count label showing "range row 2:
..."), so a reader always knows whether a line is a result or a problem. The level is a dynamic property
(`level` = info | warning | error) that resources/style/app.qss colours.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget

OBJECT_NAME = "inlineMessage"
LEVELS = ("info", "warning", "error")


class InlineMessage(QLabel):
    """Hidden while empty; `show_error` / `show_warning` / `show_info` set the text and the colour."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(OBJECT_NAME)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.PlainText)  # messages quote file names and user input verbatim
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._level = ""
        self.hide()

    @property
    def level(self) -> str:
        """The shown message's level, or "" when nothing is shown."""
        return self._level

    def show_message(self, text: str | None, level: str = "error") -> None:
        """Show `text` at `level`; an empty or None text hides the line."""
        if level not in LEVELS:
            raise ValueError(f"message level must be one of {', '.join(LEVELS)}, not {level!r}")
        if not text:
            self.clear_message()
            return
        self._level = level
        self.setText(text)
        self.setProperty("level", level)
        # A dynamic property only restyles after a re-polish.
        self.style().unpolish(self)
        self.style().polish(self)
        self.show()

    def show_error(self, text: str | None) -> None:
        self.show_message(text, "error")

    def show_warning(self, text: str | None) -> None:
        self.show_message(text, "warning")

    def show_info(self, text: str | None) -> None:
        self.show_message(text, "info")

    def clear_message(self) -> None:
        self._level = ""
        self.setText("")
        self.hide()
