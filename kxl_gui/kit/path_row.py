"""A path field with a Browse button: choose a file to open, a file to save, or a folder.

The dialog is opened with `QFileDialog.open()` (window-modal, returns at once), not the blocking static
helpers: the app's event loop keeps running while it is up, and a test can answer it with real typing. It is the
platform's native dialog where there is one.

`path_changed(Path | None)` is emitted for the user's own changes only (typing, Browse); `set_path` does not
emit it, so a form binding can push a value into the row without hearing it back. An optional validation hook
turns a path into a problem text, shown under the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

from .inline_message import InlineMessage

MODES = ("open_file", "save_file", "folder")
DIALOG_NAME = "kxlPathDialog"


def path_of(text: str) -> Path | None:
    """A typed path: surrounding spaces stripped, `~` expanded; None for an empty field."""
    text = text.strip()
    return Path(text).expanduser() if text else None


def open_path_dialog(
    parent: QWidget,
    mode: str,
    caption: str,
    start: str,
    on_chosen: Callable[[str], None],
    name_filter: str = "",
    default_suffix: str = "",
) -> QFileDialog:
    """Open a non-blocking file dialog; `on_chosen(path)` runs when the user accepts it."""
    if mode not in MODES:
        raise ValueError(f"path dialog mode must be one of {', '.join(MODES)}, not {mode!r}")
    dialog = QFileDialog(parent, caption, start, name_filter)
    dialog.setObjectName(DIALOG_NAME)
    if mode == "folder":
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
    elif mode == "save_file":
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setFileMode(QFileDialog.FileMode.AnyFile)
        if default_suffix:
            dialog.setDefaultSuffix(default_suffix)
    else:
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
    dialog.fileSelected.connect(on_chosen)
    dialog.finished.connect(dialog.deleteLater)
    dialog.open()
    return dialog


class PathRow(QWidget):
    """Line edit + "Browse…"; `mode` is open_file, save_file or folder."""

    path_changed = Signal(object)  # Path | None, after a user edit or a Browse choice

    def __init__(
        self,
        mode: str = "open_file",
        caption: str = "Choose",
        name_filter: str = "",
        placeholder: str = "",
        default_suffix: str = "",
        validate: Callable[[Path | None], str | None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if mode not in MODES:
            raise ValueError(f"path row mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.caption = caption
        self.name_filter = name_filter
        self.default_suffix = default_suffix
        self._validate = validate
        self.start_folder: Callable[[], str] | None = None  # where Browse opens when the field is empty
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(3)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.textEdited.connect(self._typed)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self.browse)
        row.addWidget(self.edit, 1)
        row.addWidget(self.browse_button)
        outer.addLayout(row)
        self.message = InlineMessage()
        outer.addWidget(self.message)

    # ---- value --------------------------------------------------------------------------------------------
    def path(self) -> Path | None:
        return path_of(self.edit.text())

    def text(self) -> str:
        return self.edit.text()

    def set_path(self, path: Path | str | None) -> None:
        """Show `path` (programmatic: `path_changed` is not emitted); re-runs the validation hook."""
        text = "" if path is None else str(path)
        if self.edit.text() != text:
            self.edit.setText(text)
        self.revalidate()

    def set_validator(self, validate: Callable[[Path | None], str | None] | None) -> None:
        self._validate = validate
        self.revalidate()

    def revalidate(self) -> str | None:
        """Run the validation hook on the current path; show and return its problem (None = fine)."""
        problem = self._validate(self.path()) if self._validate is not None else None
        self.message.show_error(problem)
        return problem

    # ---- user input ---------------------------------------------------------------------------------------
    def _typed(self, _text: str) -> None:
        self.revalidate()
        self.path_changed.emit(self.path())

    def browse(self) -> None:
        """The Browse button's handler (no parameters: `clicked` would pass its `checked` flag)."""
        current = self.path()
        if current is not None:
            start = str(current if self.mode == "folder" or current.is_dir() else current.parent)
        else:
            start = self.start_folder() if self.start_folder is not None else ""
        open_path_dialog(
            self, self.mode, self.caption, start, self._chosen, self.name_filter, self.default_suffix
        )

    def _chosen(self, path: str) -> None:
        if self.mode == "save_file" and self.default_suffix and not path.endswith("." + self.default_suffix):
            path += "." + self.default_suffix
        self.edit.setText(path)
        self.revalidate()
        self.path_changed.emit(self.path())
