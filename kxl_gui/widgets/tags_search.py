"""The Tags tab's search box: AND / OR / NOT tag expressions with autocompletion of the tag being typed.

Completion uses `TagCompleter` (the Generate tab's ranking: exact > prefix > word start > substring > fuzzy, by
popularity) over the dataset's own tags, so it only offers tags that can match. The completer index is built by
the tab in a worker thread and handed over with `set_completer`; until then the box simply has no popup.
"""

from __future__ import annotations

import re

from PySide6.QtCore import QStringListModel, Qt, QTimer, Signal
from PySide6.QtWidgets import QCompleter, QLineEdit, QWidget

COMPLETION_LIMIT = 12
# Where the tag being typed starts: after the last operator character or operator word.
_TERM_START = re.compile(r'(?:^|[,&|()!"]|(?<=\s)-|^-|\bAND\b|\bOR\b|\bNOT\b)\s*')


def current_term_span(text: str, cursor: int) -> tuple[int, int]:
    """(start, end) of the tag under the cursor (end = cursor), for completion and replacement."""
    head = text[:cursor]
    start = 0
    for match in _TERM_START.finditer(head):
        start = match.end()
    return start, cursor


class TagSearchEdit(QLineEdit):
    query_changed = Signal(str)  # debounced

    def __init__(self, parent: QWidget | None = None, debounce_ms: int = 150) -> None:
        super().__init__(parent)
        self.setPlaceholderText('Search tags: long hair, blue eyes -solo | (1boy OR 2boys)   "*" wildcard')
        self.setClearButtonEnabled(True)
        self._completer_index = None
        self._popup_model = QStringListModel(self)
        self._completions: dict[str, str] = {}
        self._qt_completer = QCompleter(self._popup_model, self)
        self._qt_completer.setWidget(self)
        self._qt_completer.setCompletionMode(QCompleter.CompletionMode.UnfilteredPopupCompletion)
        self._qt_completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self._qt_completer.activated.connect(self._insert_completion)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(debounce_ms)
        self._timer.timeout.connect(lambda: self.query_changed.emit(self.text()))
        self.textChanged.connect(lambda _text: self._timer.start())
        self.textEdited.connect(self._update_popup)

    def set_completer(self, completer: object | None) -> None:
        """A `trainer_core.tags.TagCompleter` (or None to switch completion off)."""
        self._completer_index = completer

    def completions_for(self, text: str, cursor: int | None = None) -> list[tuple[str, str]]:
        """(popup text, text to insert) for the tag under the cursor."""
        if self._completer_index is None:
            return []
        start, end = current_term_span(text, len(text) if cursor is None else cursor)
        term = text[start:end].strip()
        if not term:
            return []
        return [
            (f"{c.display}   {c.tag.count:,}", c.caption_text)
            for c in self._completer_index.complete(term, limit=COMPLETION_LIMIT)
        ]

    def _update_popup(self, text: str) -> None:
        items = self.completions_for(text, self.cursorPosition())
        self._completions = dict(items)
        self._popup_model.setStringList([shown for shown, _ in items])
        if items:
            self._qt_completer.complete()
        else:
            self._qt_completer.popup().hide()

    def _insert_completion(self, shown: str) -> None:
        insert = self._completions.get(shown)
        if insert is None:
            return
        text, cursor = self.text(), self.cursorPosition()
        start, end = current_term_span(text, cursor)
        prefix = text[:start]
        if prefix and not prefix.endswith((" ", "(", '"')):
            prefix += " "
        new = prefix + insert + text[end:]
        self.setText(new)
        self.setCursorPosition(len(prefix) + len(insert))
