"""The Merge tab's footer (layout only): the live estimate, the problem and warnings it found, the last run's
outcome, the result with its hand-offs, and Run / progress / Cancel.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from trainer_core.progress import ProgressEvent, format_duration

from ..kit.inline_message import InlineMessage
from ..kit.job_progress import JobProgress


def describe_merge(event: ProgressEvent) -> str:
    if not event.total:
        return event.message or "Merging…"
    text = f"Merging  {min(1.0, event.done / event.total) * 100:.0f}%"
    if event.rate:
        text += f"  ·  {event.rate / 1e6:,.0f} MB/s"
    if event.eta_s is not None and event.done < event.total:
        text += f"  ·  ETA {format_duration(event.eta_s)}"
    return text


def _selectable(label: QLabel) -> QLabel:
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class MergeRunPanel(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mergeFooter")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(24, 12, 24, 14)
        lay.setSpacing(8)
        problem_row = QHBoxLayout()
        self.problem_label = InlineMessage()  # what stops the recipe from running
        self.take_a_button = QPushButton("Take missing keys from A")
        problem_row.addWidget(self.problem_label, 1)
        problem_row.addWidget(self.take_a_button, 0, Qt.AlignmentFlag.AlignTop)
        lay.addLayout(problem_row)
        self.warnings_label = _selectable(QLabel())
        self.warnings_label.setObjectName("warningText")
        lay.addWidget(self.warnings_label)
        self.run_message = (
            InlineMessage()
        )  # the last Run's failure or cancel, kept until the next edit or run
        lay.addWidget(self.run_message)

        self.result_box = QFrame()
        self.result_box.setObjectName("resultBox")
        rlay = QHBoxLayout(self.result_box)
        rlay.setContentsMargins(14, 8, 14, 8)
        self.result_label = _selectable(QLabel())
        self.result_label.setObjectName("resultText")
        self.show_folder_button = QPushButton("Show folder")
        self.open_generate_button = QPushButton("Open in Generate")
        self.use_base_button = QPushButton("Use as training base")
        rlay.addWidget(self.result_label, 1)
        for b in (self.show_folder_button, self.open_generate_button, self.use_base_button):
            rlay.addWidget(b)
        self.result_box.hide()
        lay.addWidget(self.result_box)

        run_row = QHBoxLayout()
        run_row.setSpacing(12)
        self.estimate_label = _selectable(QLabel())
        self.estimate_label.setObjectName("muted")
        self.progress = JobProgress(describe_merge, show_bar_when_idle=False)
        self.progress.status_label.setMinimumWidth(330)
        self.run_button = QPushButton("Run merge")
        self.run_button.setObjectName("primaryButton")
        self.run_button.setMinimumWidth(130)
        run_row.addWidget(self.estimate_label, 1)
        run_row.addWidget(self.progress, 1)
        run_row.addWidget(self.run_button)
        lay.addLayout(run_row)

    def show_running(self, running: bool) -> None:
        self.progress.setVisible(running)
        self.estimate_label.setVisible(not running)
        self.run_button.setVisible(not running)
