"""Message dialogs that never block: tests and background jobs can raise them without an event-loop trap.

`QMessageBox.open()` (window-modal, returns at once) instead of `exec()`, so a dialog raised from a job's
`failed` slot does not start a nested event loop in the middle of signal delivery.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

ERROR_DIALOG_NAME = "kxlErrorDialog"

# A dialog without a parent widget has no owner on the C++ side; keep it referenced until it closes.
_orphans: set[QMessageBox] = set()


def _present(box: QMessageBox, parent: QWidget | None) -> QMessageBox:
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    if parent is None:
        _orphans.add(box)
        box.finished.connect(lambda _result: _orphans.discard(box))
    box.open()
    return box


def show_error(parent: QWidget | None, title: str, message: str, details: str | None = None) -> QMessageBox:
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName(ERROR_DIALOG_NAME)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if details:
        box.setDetailedText(details)
    return _present(box, parent)


def show_info(parent: QWidget | None, title: str, message: str) -> QMessageBox:
    box = QMessageBox(QMessageBox.Icon.Information, title, message, QMessageBox.StandardButton.Ok, parent)
    box.setTextFormat(Qt.TextFormat.RichText)
    return _present(box, parent)
