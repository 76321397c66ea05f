"""Real user input for GUI tests: clicks on visible, enabled widgets, typing, the wheel, and modal dialogs.

GUI tests press buttons the way a user does, through Qt's event path, so what Qt passes to a slot (the `checked`
flag of `clicked`) and what the user can actually reach (hidden or disabled buttons) are part of what is tested.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QPoint, QPointF, Qt, QTimer, QUrl, Slot
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractButton, QApplication, QFileDialog, QLineEdit, QMessageBox, QWidget


def click(button: QAbstractButton) -> None:
    """Left-click the centre of `button`; fails if a user could not click it (hidden or disabled)."""
    assert button.isVisible(), f"button {button.text()!r} is not visible"
    assert button.isEnabled(), f"button {button.text()!r} is disabled"
    QTest.mouseClick(
        button, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, button.rect().center()
    )


def type_into(edit: QLineEdit, text: str) -> None:
    """Select all, then type `text` key by key, as a user replacing a field's content."""
    assert edit.isVisible() and edit.isEnabled(), "line edit is not reachable"
    edit.setFocus()
    QTest.keyClick(edit, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClicks(edit, text)


def roll_wheel(widget: QWidget, notches: int = 3) -> None:
    """Roll the mouse wheel over the centre of `widget` (positive: away from the user)."""
    pos = QPointF(widget.rect().center())
    glob = QPointF(widget.mapToGlobal(widget.rect().center()))
    event = QWheelEvent(pos, glob, QPoint(0, 0), QPoint(0, 120 * notches), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)  # fmt: skip
    QApplication.sendEvent(widget, event)


def answer_next_dialog(button_text: str, seen: list[str] | None = None, timeout_ms: int = 10_000) -> None:
    """Arrange for the next modal message box to be answered by clicking its `button_text` button.

    Modal dialogs run their own event loop, so the answer is scheduled before the click that opens one. The
    dialog's text is appended to `seen` so the test can assert what the user was asked.
    """
    waited = [0]

    def poll() -> None:
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox) and box.isVisible():
            if seen is not None:
                seen.append(box.text())
            matches = [b for b in box.buttons() if b.text().replace("&", "") == button_text]
            assert matches, f"dialog has no {button_text!r} button: {[b.text() for b in box.buttons()]}"
            click(matches[0])
            return
        waited[0] += 20
        if waited[0] < timeout_ms:
            QTimer.singleShot(20, poll)

    QTimer.singleShot(20, poll)


def file_dialog_of(qtbot, owner: QWidget) -> QFileDialog:
    """The file dialog `owner` just opened, focused as a window manager would focus a new dialog (offscreen
    there is none; without focus the dialog overwrites a typed path with the file its list selects)."""
    qtbot.waitUntil(lambda: any(d.isVisible() for d in owner.findChildren(QFileDialog)), timeout=5_000)
    dialog = next(d for d in owner.findChildren(QFileDialog) if d.isVisible())
    dialog.activateWindow()
    return dialog


def paste_into(edit: QLineEdit, text: str) -> None:
    """Replace the field's text by pasting `text` (Ctrl+A, Ctrl+V), as a user enters a long path. Typed key by
    key in one burst, 80 characters would each re-run the file dialog's completion before the next paints."""
    QApplication.clipboard().setText(text)
    QTest.keyClick(edit, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClick(edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert edit.text() == text


def answer_file_dialog(qtbot, owner: QWidget, path: Path) -> None:
    """Paste `path` into the file dialog `owner` just opened and press Enter, as a user would."""
    dialog = file_dialog_of(qtbot, owner)
    edit = dialog.findChild(QLineEdit, "fileNameEdit")
    edit.setFocus()
    qtbot.waitUntil(edit.hasFocus, timeout=5_000)
    paste_into(edit, str(path))
    QTest.keyClick(edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=5_000)


class OpenedUrls(QObject):
    """Receives what the app asks the desktop to open (instead of starting a file manager in a test)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[QUrl] = []

    @Slot(QUrl)
    def open(self, url: QUrl) -> None:
        self.urls.append(url)
