"""The Dataset wizard's id-range table: start, end, count as the user types them, and each range's live count.

`set_rows(rows)` shows a form's ranges; `cell_edited(row, column, text)` is emitted for the user's own edits
only. Qt emits `itemChanged` for programmatic writes too; those write the text the form already holds, so the
handler compares with what it was last shown and stays quiet (no signal blocking, no guard flag).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem, QWidget

HEADERS = ("Start id", "End id (exclusive, empty = no end)", "Count (empty = all)", "Matching / selected")
COUNT_COLUMN = 3


class RangeTable(QTableWidget):
    cell_edited = Signal(int, int, str)  # row, column (0 start, 1 end, 2 count), text

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(HEADERS), parent)
        self.setObjectName("rangeTable")
        self.setHorizontalHeaderLabels(list(HEADERS))
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.setMinimumHeight(30)  # the header row must not be cut off (issue #15)
        self.verticalHeader().setVisible(False)
        self.setMinimumHeight(140)
        self.setMaximumHeight(210)
        self._shown: list[tuple[str, str, str]] = []
        self.itemChanged.connect(self._item_changed)

    def set_rows(self, rows: list[tuple[str, str, str]]) -> None:
        """Show these (start, end, count) texts; the per-range counts are cleared when the ranges change."""
        if rows == self._shown and self.rowCount() == len(rows):
            return
        self._shown = list(rows)
        self.setRowCount(len(rows))
        for r, cells in enumerate(rows):
            for c, text in enumerate(cells):
                item = self.item(r, c)
                if item is None:
                    self.setItem(r, c, QTableWidgetItem(text))
                elif item.text() != text:
                    item.setText(text)
            if self.item(r, COUNT_COLUMN) is None:
                info = QTableWidgetItem("")
                info.setFlags(info.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.setItem(r, COUNT_COLUMN, info)
        self.clear_counts()

    def set_counts(self, counts: list[str]) -> None:
        for r, text in enumerate(counts[: self.rowCount()]):
            item = self.item(r, COUNT_COLUMN)
            if item is not None:
                item.setText(text)

    def clear_counts(self) -> None:
        """Counts from before an edit or next to an error would describe ranges that are gone."""
        self.set_counts([""] * self.rowCount())

    def selected_row(self) -> int:
        """The row the user selected, else the last one (-1 when there is none)."""
        row = self.currentRow()
        return row if row >= 0 else self.rowCount() - 1

    def _item_changed(self, item: QTableWidgetItem) -> None:
        r, c = item.row(), item.column()
        if c == COUNT_COLUMN or r >= len(self._shown):
            return
        text = item.text()
        if self._shown[r][c] == text:
            return  # our own write (set_rows), or no change
        cells = list(self._shown[r])
        cells[c] = text
        self._shown[r] = (cells[0], cells[1], cells[2])
        self.cell_edited.emit(r, c, text)
