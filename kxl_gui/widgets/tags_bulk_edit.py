"""The Tags tab's "Bulk edit" panel: add / remove / replace one tag over the selected images, the current
filter or the whole dataset, with a live preview (how many captions change, a before/after sample) and Undo.

The panel only collects input and shows results; the tab computes the preview (`preview_bulk_edit`, instant
from the index) and runs the edit and the undo in `Job`s, so no file is touched on the GUI thread.
"""

from __future__ import annotations

import re

from PySide6.QtCore import QStringListModel, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCompleter,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from trainer_core.errors import KxlError
from trainer_core.tags.bulk_edit import EditPreview, TagEdit, tag_key
from trainer_core.tags.edit_journal import JournalInfo

COMPLETION_LIMIT = 12
SCOPES = ("selected", "filter", "all")
SCOPE_LABELS = {"selected": "Selected images", "filter": "Current filter", "all": "Whole dataset"}
# The app style sheet has no radio buttons; these follow the Merge tab's check boxes (amber when on).
RADIO_STYLE = """
QRadioButton { background: transparent; spacing: 7px; }
QRadioButton::indicator { width: 12px; height: 12px; border: 1px solid #6b6f77; border-radius: 7px;
                          background: #1d1f23; }
QRadioButton::indicator:checked { background: #e0a33a; border-color: #e0a33a; }
QRadioButton::indicator:hover { border-color: #e0a33a; }
"""
_CAPTION_PIECES = re.compile(r"(\|\|\||,)")


class TagLineEdit(QLineEdit):
    """One tag, completed as a whole from the dataset's tags (a search box splits at operators; this does not,
    so `rice shower (umamusume)` completes as one tag)."""

    def __init__(self, placeholder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setPlaceholderText(placeholder)
        self.setClearButtonEnabled(True)
        self._index = None
        self._model = QStringListModel(self)
        self._inserts: dict[str, str] = {}
        self._popup = QCompleter(self._model, self)
        self._popup.setWidget(self)
        self._popup.setCompletionMode(QCompleter.CompletionMode.UnfilteredPopupCompletion)
        self._popup.activated.connect(self._insert)
        self.textEdited.connect(self._update_popup)

    def set_completer(self, completer: object | None) -> None:
        """A `trainer_core.tags.TagCompleter` (None: no popup)."""
        self._index = completer

    def completions_for(self, text: str) -> list[tuple[str, str]]:
        """(popup text, caption text to insert) for what was typed."""
        if self._index is None or not text.strip():
            return []
        return [
            (f"{c.display}   {c.tag.count:,}", c.caption_text)
            for c in self._index.complete(text, limit=COMPLETION_LIMIT)
        ]

    def _update_popup(self, text: str) -> None:
        items = self.completions_for(text)
        self._inserts = dict(items)
        self._model.setStringList([shown for shown, _ in items])
        if items:
            self._popup.complete()
        else:
            self._popup.popup().hide()

    def _insert(self, shown: str) -> None:
        if shown in self._inserts:
            self.setText(self._inserts[shown])


def _radio_row(
    group: QButtonGroup, names: list[tuple[str, str]], vertical: bool = False
) -> tuple[QHBoxLayout | QVBoxLayout, dict[str, QRadioButton]]:
    row = QVBoxLayout() if vertical else QHBoxLayout()
    row.setSpacing(4 if vertical else 16)
    buttons: dict[str, QRadioButton] = {}
    for key, label in names:
        button = QRadioButton(label)
        button.setObjectName(f"{key}Radio")
        group.addButton(button)
        row.addWidget(button)
        buttons[key] = button
    row.addStretch(1)
    return row, buttons


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def marked_caption(caption: str, marked: set[str], style: str) -> str:
    """The caption as rich text with the tags whose key is in `marked` styled, so a long caption's one change
    stands out in the before/after sample."""
    if not caption:
        return "<i>(empty)</i>"
    out: list[str] = []
    for piece in _CAPTION_PIECES.split(caption):
        if piece in (",", "|||") or not piece.strip() or tag_key(piece) not in marked:
            out.append(_esc(piece))
        else:
            lead = piece[: len(piece) - len(piece.lstrip())]
            out.append(f'{lead}<span style="{style}">{_esc(piece.strip())}</span>')
    return "".join(out)


def _keys(caption: str) -> set[str]:
    return {tag_key(p) for p in _CAPTION_PIECES.split(caption) if p not in (",", "|||") and p.strip()}


class BulkEditPanel(QScrollArea):
    inputs_changed = Signal()  # debounced: the tab recomputes the preview
    apply_requested = Signal()
    cancel_requested = Signal()
    undo_requested = Signal()

    def __init__(self, parent: QWidget | None = None, debounce_ms: int = 120) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setStyleSheet(RADIO_STYLE)
        content = QWidget()
        content.setObjectName("pageContent")
        self.setWidget(content)
        lay = QVBoxLayout(content)
        lay.setContentsMargins(12, 10, 12, 10)
        lay.setSpacing(8)

        card = QFrame()
        card.setObjectName("card")
        form = QGridLayout(card)
        form.setContentsMargins(14, 12, 14, 12)
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(9)
        title = QLabel("Bulk edit captions")
        title.setObjectName("cardTitle")
        form.addWidget(title, 0, 0, 1, 2)

        self._op_group = QButtonGroup(self)
        op_row, self.op_buttons = _radio_row(
            self._op_group, [("add", "Add"), ("remove", "Remove"), ("replace", "Replace")]
        )
        form.addWidget(self._label("Operation"), 1, 0)
        form.addLayout(op_row, 1, 1)

        self.tag_edit = TagLineEdit("tag, e.g. long hair (spaces or underscores)")
        self.tag_edit.setObjectName("bulkTagEdit")
        self.tag_label = self._label("Tag")
        form.addWidget(self.tag_label, 2, 0)
        form.addWidget(self.tag_edit, 2, 1)
        self.new_tag_edit = TagLineEdit("new tag")
        self.new_tag_edit.setObjectName("bulkNewTagEdit")
        self.new_tag_label = self._label("Replace with")
        form.addWidget(self.new_tag_label, 3, 0)
        form.addWidget(self.new_tag_edit, 3, 1)

        self._place_group = QButtonGroup(self)
        place_row, self.place_buttons = _radio_row(
            self._place_group, [("flex", "End of the shuffled part"), ("head", "Fixed head (before |||)")]
        )
        self.place_label = self._label("Put it at")
        form.addWidget(self.place_label, 4, 0)
        form.addLayout(place_row, 4, 1)

        self._scope_group = QButtonGroup(self)
        scope_row, self.scope_buttons = _radio_row(
            self._scope_group, [(s, SCOPE_LABELS[s]) for s in SCOPES], vertical=True
        )
        form.addWidget(self._label("Apply to"), 5, 0, Qt.AlignmentFlag.AlignTop)
        form.addLayout(scope_row, 5, 1)
        form.setColumnStretch(1, 1)
        lay.addWidget(card)

        self.preview_label = QLabel("")
        self.preview_label.setObjectName("bulkPreviewCount")
        self.preview_label.setStyleSheet("QLabel { font-weight: 600; color: #f4efe6; }")
        self.samples_label = QLabel("")
        self.samples_label.setTextFormat(Qt.TextFormat.RichText)
        self.samples_label.setWordWrap(True)
        self.samples_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label = QLabel("")
        self.error_label.setObjectName("inlineError")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        lay.addWidget(self.preview_label)
        lay.addWidget(self.samples_label)
        lay.addWidget(self.error_label)

        buttons = QHBoxLayout()
        self.apply_button = QPushButton("Apply")
        self.apply_button.setObjectName("primaryButton")
        self.apply_button.clicked.connect(self.apply_requested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.cancel_button.hide()
        self.undo_button = QPushButton("Undo last edit")
        self.undo_button.setToolTip("Ctrl+Z")
        self.undo_button.clicked.connect(self.undo_requested)
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        buttons.addWidget(self.undo_button)
        lay.addLayout(buttons)
        self.undo_label = QLabel("")
        self.undo_label.setObjectName("muted")
        self.undo_label.setWordWrap(True)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        note = QLabel(
            "Tags match as you type them: spaces or underscores, any case, \\( escapes. Each caption file is "
            "replaced atomically and manifest.jsonl follows it. The previous bytes are kept in the dataset's "
            ".kxl-undo folder, so Undo also works after a restart; it is refused for a file changed since."
        )
        note.setObjectName("muted")
        note.setWordWrap(True)
        lay.addWidget(self.result_label)
        lay.addWidget(self.undo_label)
        lay.addWidget(note)
        lay.addStretch(1)

        self.op_buttons["remove"].setChecked(True)
        self.place_buttons["flex"].setChecked(True)
        self.scope_buttons["selected"].setChecked(True)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(debounce_ms)
        self._timer.timeout.connect(self.inputs_changed)
        for edit in (self.tag_edit, self.new_tag_edit):
            edit.textChanged.connect(lambda _t: self._timer.start())
        for group in (self._op_group, self._place_group, self._scope_group):
            group.buttonToggled.connect(self._toggled)
        self._update_visibility()
        self.set_undo(None)
        self.show_preview(None)

    @staticmethod
    def _label(text: str) -> QLabel:
        label = QLabel(text)
        label.setObjectName("muted")
        return label

    # -- input -----------------------------------------------------------------------------------------------
    def operation(self) -> str:
        return next(k for k, b in self.op_buttons.items() if b.isChecked())

    def scope(self) -> str:
        return next(k for k, b in self.scope_buttons.items() if b.isChecked())

    def set_operation(self, operation: str) -> None:
        self.op_buttons[operation].setChecked(True)

    def set_scope(self, scope: str) -> None:
        self.scope_buttons[scope].setChecked(True)

    def set_head(self, head: bool) -> None:
        self.place_buttons["head" if head else "flex"].setChecked(True)

    def edit(self) -> TagEdit | None:
        """The edit described by the form; None while the tag field is empty. Raises KxlError for a bad tag."""
        op = self.operation()
        if not self.tag_edit.text().strip() or (op == "replace" and not self.new_tag_edit.text().strip()):
            return None
        return TagEdit(
            op,
            self.tag_edit.text(),
            self.new_tag_edit.text() if op == "replace" else "",
            head=op == "add" and self.place_buttons["head"].isChecked(),
        )

    def set_completer(self, completer: object | None) -> None:
        self.tag_edit.set_completer(completer)
        self.new_tag_edit.set_completer(completer)

    def set_scope_counts(self, selected: int, filtered: int, total: int) -> None:
        for scope, n in (("selected", selected), ("filter", filtered), ("all", total)):
            self.scope_buttons[scope].setText(f"{SCOPE_LABELS[scope]} ({n:,})")

    def _toggled(self, _button: QRadioButton, checked: bool) -> None:
        if checked:
            self._update_visibility()
            self._timer.start()

    def _update_visibility(self) -> None:
        op = self.operation()
        for w in (self.new_tag_label, self.new_tag_edit):
            w.setVisible(op == "replace")
        for w in (self.place_label, *self.place_buttons.values()):
            w.setVisible(op == "add")

    # -- output ----------------------------------------------------------------------------------------------
    def show_preview(self, preview: EditPreview | None, error: str = "") -> None:
        self.error_label.setText(error)
        self.error_label.setVisible(bool(error))
        if preview is None:
            self.preview_label.setText("" if error else "Type a tag to see what would change.")
            self.samples_label.setText("")
            self.samples_label.hide()
            self.apply_button.setEnabled(False)
            return
        self.preview_label.setText(preview.describe())
        rows = []
        for image, before, after in preview.samples:
            gone, new = _keys(before) - _keys(after), _keys(after) - _keys(before)
            rows.append(
                f'<p style="margin:0 0 8px 0"><span style="color:#8f8b83">{_esc(image)}</span><br>'
                '<span style="color:#e8845c">−</span> '
                + marked_caption(before, gone, "color:#f2a07f; text-decoration:line-through")
                + '<br><span style="color:#8fc46a">+</span> '
                + marked_caption(after, new, "color:#a6e07f; font-weight:600")
                + "</p>"
            )
        self.samples_label.setText("".join(rows))
        self.samples_label.setVisible(bool(rows))
        self.apply_button.setEnabled(preview.changed > 0 and not self.cancel_button.isVisible())

    def set_busy(self, busy: bool, what: str = "") -> None:
        self.cancel_button.setVisible(busy)
        self.apply_button.setEnabled(not busy)
        self.undo_button.setEnabled(not busy and self._undo is not None)
        if busy:
            self.result_label.setText(what)

    def show_result(self, text: str) -> None:
        self.result_label.setText(text)

    @property
    def undo_info(self) -> JournalInfo | None:
        """The edit Undo would revert (as last read from the dataset's journal), or None."""
        return self._undo

    def set_undo(self, info: JournalInfo | None) -> None:
        self._undo = info
        self.undo_button.setEnabled(info is not None and not self.cancel_button.isVisible())
        if info is None:
            self.undo_label.setText("Nothing to undo for this dataset.")
            return
        # a referenced dataset keeps every caption in one manifest: count captions, not files
        what = f"{info.captions:,} caption(s)" if info.captions is not None else f"{info.files:,} file(s)"
        self.undo_label.setText(f"Undo would revert: {info.description} ({what}, {info.created})")

    def bad_input(self, exc: KxlError) -> None:
        self.show_preview(None, str(exc))
