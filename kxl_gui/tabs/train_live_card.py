"""The Train tab's live view pieces: the Live card (run name, state badge, progress, figures, Stop / Resume /
Sample now / Save now, the failure message and log tail) and the Checkpoints page (training states to resume
from, saved LoKr files to open in Generate, and "Compare states": the run's saved LoKrs as a grid axis there). Widgets only: the tab decides what they show."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from trainer_core.progress import format_duration
from trainer_core.train.runs import RunSeries, StateInfo

from ..kit.card import Card

STATE_TEXT = {"launching": "● launching", "running": "● running", "stopping": "● stopping", "finished": "✓ finished",
              "stopped": "■ stopped", "failed": "✕ failed", "idle": "no run"}  # fmt: skip


def _repolish(widget: QWidget) -> None:
    widget.style().unpolish(widget)
    widget.style().polish(widget)


class LiveCard(Card):
    stop_clicked = Signal()
    resume_clicked = Signal()
    command_clicked = Signal(str)  # "sample" | "save"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Live", parent=parent)
        head = QHBoxLayout()
        self.run_title = QLabel("No run selected")
        self.run_title.setObjectName("bigFigure")
        self.run_title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.state_label = QLabel("")
        self.state_label.setObjectName("runState")
        head.addWidget(self.run_title, 1)
        head.addWidget(self.state_label)
        self.body.addLayout(head)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.body.addWidget(self.progress)
        self.figures = QLabel("")
        self.figures.setObjectName("figures")
        self.figures.setWordWrap(True)
        self.body.addWidget(self.figures)
        buttons = QHBoxLayout()
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip(
            "Graceful: the trainer saves and exits after its step; then SIGTERM, then SIGKILL"
        )
        self.stop_button.clicked.connect(self.stop_clicked)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setObjectName("resumeButton")
        self.resume_button.clicked.connect(self.resume_clicked)
        self.sample_button = QPushButton("Sample now")
        self.sample_button.setToolTip("Render training.sample_prompts after the current step")
        self.sample_button.clicked.connect(lambda: self.command_clicked.emit("sample"))
        self.save_now_button = QPushButton("Save now")
        self.save_now_button.setToolTip("Save the LoKr and a resumable state after the current step")
        self.save_now_button.clicked.connect(lambda: self.command_clicked.emit("save"))
        for b in (self.stop_button, self.resume_button, self.sample_button, self.save_now_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.body.addLayout(buttons)
        self.buttons_row = buttons
        self.live_message = QLabel("")
        self.live_message.setWordWrap(True)
        self.live_message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.live_message.hide()
        self.body.addWidget(self.live_message)
        self.failure_log = QPlainTextEdit()
        self.failure_log.setObjectName("logTail")
        self.failure_log.setReadOnly(True)
        self.failure_log.setFixedHeight(120)
        self.failure_log.hide()
        self.body.addWidget(self.failure_log)

    def show_run(self, run_dir: Path) -> None:
        self.run_title.setText(run_dir.name)
        self.run_title.setToolTip(str(run_dir))

    def show_state(self, state: str, detail: str, log_tail: list[str]) -> None:
        """The badge, the detail line (an error style when it explains a failure or a stuck start), and the log
        tail when it helps: a failure, or a launch that has not reported yet."""
        self.state_label.setText(STATE_TEXT.get(state, state))
        self.state_label.setProperty("state", state)
        _repolish(self.state_label)
        failed = state == "failed"
        self.live_message.setObjectName(
            "inlineError" if failed or (state == "launching" and detail) else "muted"
        )
        _repolish(self.live_message)
        self.live_message.setText(detail)
        self.live_message.setVisible(bool(detail))
        self.failure_log.setPlainText("\n".join(log_tail))
        self.failure_log.verticalScrollBar().setValue(self.failure_log.verticalScrollBar().maximum())
        self.failure_log.setVisible(bool(log_tail) and (failed or state == "launching"))

    def show_progress(self, series: RunSeries, figures: str) -> None:
        total = series.total_steps or 0
        self.progress.setMaximum(max(1, total))
        self.progress.setValue(min(series.last_step, max(1, total)))
        self.figures.setText(figures)


def figures_text(s: RunSeries, smoothing: float, active: bool) -> str:
    """One line of the run's figures: step, loss (and smoothed), speed, peak memory, data wait, skips, ETA."""
    if not s.n:
        return s.last_status or "Waiting for the first step…"
    parts = [f"step {s.last_step:,}" + (f" / {s.total_steps:,}" if s.total_steps else "")]
    loss = s.column("loss")[-1]
    parts.append(f"loss {loss:.4f} (smoothed {s.ema(smoothing)[-1]:.4f})")
    ips = s.column("images_per_s")[-1]
    if ips == ips:
        parts.append(f"{ips:.2f} img/s")
    peak = s.peak_memory_mb()
    if peak is not None:
        parts.append(f"peak {peak:,.0f} MB")
    wait = s.data_wait_fraction()
    if wait is not None:
        parts.append(f"data wait {100 * wait:.0f}%")  # high: more dataset.num_workers, or faster storage
    skipped = s.skipped_steps()
    if skipped:
        parts.append(f"⚠ {skipped} step(s) skipped (non-finite)")
    if active:
        eta = s.eta_seconds()
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA estimating…")
    return "  ·  ".join(parts)


class CheckpointsPage(QWidget):
    """Training states (Resume continues from the selected one) and saved LoKr files (Open in Generate, Compare
    states)."""

    selection_changed = Signal()
    open_in_generate = Signal(object)  # Path of the selected LoKr
    compare_states = Signal()  # compare every saved LoKr of the run shown, on an X/Y/Z grid in Generate

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 6, 0, 0)
        states = QVBoxLayout()
        states.addWidget(QLabel("Training states (Resume, next to Stop, continues from the selected one)"))
        self.states_list = QListWidget()
        states.addWidget(self.states_list, 1)
        lokrs = QVBoxLayout()
        lokrs.addWidget(QLabel("Saved LoKr files"))
        self.lokr_list = QListWidget()
        lokrs.addWidget(self.lokr_list, 1)
        self.open_generate_button = QPushButton("Open in Generate")
        self.open_generate_button.clicked.connect(self._open_selected)
        self.compare_button = QPushButton("Compare states")
        self.compare_button.setToolTip(
            "Open Generate with a grid of this run's saved LoKrs (in step order) over two seeds, using the run's "
            "base and first sample prompt"
        )
        self.compare_button.clicked.connect(self.compare_states)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_generate_button)
        buttons.addWidget(self.compare_button)
        lokrs.addLayout(buttons)
        lay.addLayout(states, 1)
        lay.addLayout(lokrs, 1)
        self.states_list.itemSelectionChanged.connect(self.selection_changed)
        self.lokr_list.itemSelectionChanged.connect(self.selection_changed)

    def show_files(self, states: list[StateInfo], lokrs: list[Path]) -> None:
        """Newest state first (and selected); the LoKr files as listed, the first selected."""
        self.states_list.clear()
        self.lokr_list.clear()
        for st in reversed(states):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.saved)) if st.saved else "?"
            item = QListWidgetItem(f"step {st.step:,}  —  {when}")
            item.setData(Qt.ItemDataRole.UserRole, str(st.path))
            self.states_list.addItem(item)
        if self.states_list.count():
            self.states_list.setCurrentRow(0)
        for path in lokrs:
            item = QListWidgetItem(path.name)
            item.setData(Qt.ItemDataRole.UserRole, str(path))
            item.setToolTip(str(path))
            self.lokr_list.addItem(item)
        if self.lokr_list.count():
            self.lokr_list.setCurrentRow(0)

    def selected_state(self) -> Path | None:
        item = self.states_list.currentItem()
        return Path(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def selected_state_text(self) -> str:
        item = self.states_list.currentItem()
        return item.text() if item is not None else "newest"

    def selected_lokr(self) -> Path | None:
        item = self.lokr_list.currentItem()
        return Path(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def _open_selected(self) -> None:
        path = self.selected_lokr()
        if path is not None:
            self.open_in_generate.emit(path)
