"""The runs of a workspace: state (reconciled against live processes), step, last activity; pick one to watch.

Listing reads every run's files and checks processes with psutil, so it runs in a Job, never on the GUI thread.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from trainer_core.train.runs import RunSummary, list_runs

from ..kit.latest_request import LatestRequest

STATE_COLOURS = {"running": "#9cc97a", "launching": "#f2c15e", "finished": "#a9a59c", "stopped": "#7fb2e5",
                 "failed": "#f2b59b"}  # fmt: skip
COLUMNS = ("Run", "State", "Step", "Last activity")


def format_age(t: float) -> str:
    if not t:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


class RunsList(QWidget):
    open_requested = Signal(object)  # Path of the run to watch
    mark_stopped_requested = Signal(object)  # Path
    kill_requested = Signal(object)  # Path
    refreshed = Signal(list)  # list[RunSummary]

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.root: Path | None = None
        self.runs: list[RunSummary] = []
        # A refresh supersedes the one before, so a slow old listing never overwrites a newer one.
        self._listing = LatestRequest("List training runs", parent=self)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in range(1, len(COLUMNS)):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemDoubleClicked.connect(lambda _item: self._open())
        self.table.itemSelectionChanged.connect(self._sync_buttons)
        lay.addWidget(self.table, 1)
        row = QHBoxLayout()
        self.open_button = QPushButton("Watch / inspect")
        self.open_button.setToolTip(
            "Show this run's curves, samples and checkpoints (reattaches to a live run)"
        )
        self.open_button.clicked.connect(self._open)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        self.mark_button = QPushButton("Mark stopped")
        self.mark_button.setToolTip("Record a run whose processes are unreachable as stopped")
        self.mark_button.clicked.connect(lambda: self._emit_selected(self.mark_stopped_requested))
        self.kill_button = QPushButton("Kill process group")
        self.kill_button.setToolTip("SIGKILL every process of this run (no save)")
        self.kill_button.clicked.connect(lambda: self._emit_selected(self.kill_requested))
        self.status = QLabel("")
        self.status.setObjectName("muted")
        for w in (self.open_button, self.refresh_button, self.mark_button, self.kill_button):
            row.addWidget(w)
        row.addStretch(1)
        row.addWidget(self.status)
        lay.addLayout(row)
        self._sync_buttons()

    def set_root(self, root: Path | None) -> None:
        self.root = root
        self.refresh()

    def refresh(self) -> None:
        if self.root is None:
            self._show([])
            return
        root = self.root
        self.status.setText("Checking runs…")
        self._listing.submit(lambda _p: list_runs(root), on_result=self._show, on_error=self.status.setText)

    def _show(self, runs: list[RunSummary]) -> None:
        selected = self.selected()
        self.runs = runs
        self.table.setRowCount(len(runs))
        for r, run in enumerate(runs):
            step = f"{run.step:,}" + (f" / {run.total_steps:,}" if run.total_steps else "")
            values = (run.name, run.state, step, format_age(run.updated))
            for c, text in enumerate(values):
                item = QTableWidgetItem(text)
                if c == 0:
                    item.setData(Qt.ItemDataRole.UserRole, str(run.run_dir))
                    item.setToolTip(str(run.run_dir) + (f"\n{run.message}" if run.message else ""))
                if c == 1:
                    item.setForeground(QColor(STATE_COLOURS.get(run.state, "#e6e2da")))
                self.table.setItem(r, c, item)
            if selected is not None and run.run_dir == selected:
                self.table.selectRow(r)
        self.status.setText(f"{len(runs)} run(s)" if runs else "No runs yet")
        self._sync_buttons()
        self.refreshed.emit(runs)

    def selected(self) -> Path | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return Path(item.data(Qt.ItemDataRole.UserRole)) if item else None

    def select(self, run_dir: Path) -> bool:
        for r in range(self.table.rowCount()):
            if Path(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole)) == run_dir:
                self.table.selectRow(r)
                return True
        return False

    def summary(self, run_dir: Path) -> RunSummary | None:
        return next((r for r in self.runs if r.run_dir == run_dir), None)

    def _sync_buttons(self) -> None:
        run = self.summary(self.selected()) if self.selected() else None
        self.open_button.setEnabled(run is not None)
        self.mark_button.setEnabled(run is not None and run.state in ("running", "launching"))
        self.kill_button.setEnabled(run is not None and run.state in ("running", "launching"))

    def _open(self) -> None:
        path = self.selected()
        if path is not None:
            self.open_requested.emit(path)

    def _emit_selected(self, signal) -> None:
        path = self.selected()
        if path is not None:
            signal.emit(path)
