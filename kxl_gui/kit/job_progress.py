"""Progress of one running `Job`: a bar, a status line and a Cancel button, bound with `bind(job)`.

The bar is busy (indeterminate) until the first event with a total arrives. The line shows what the caller's
`describe(event)` makes of each event (default: the message, done / total with the unit, rate and ETA). Cancel
asks the job to stop and says so; the caller reacts to the job's own `cancelled` / `finished` signals.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from trainer_core.progress import ProgressEvent, format_duration

from ..jobs import Job

BAR_STEPS = 1000


def describe_event(event: ProgressEvent, unit: str = "") -> str:
    """`message · done / total unit · rate unit/s · ETA` from the parts the event has."""
    if not event.total:
        return event.message
    suffix = f" {unit}" if unit else ""
    parts = [event.message] if event.message else []
    parts.append(f"{event.done:,.0f} / {event.total:,.0f}{suffix}")
    if event.rate:
        parts.append(f"{event.rate:,.1f}{suffix}/s")
    if event.eta_s is not None and event.done < event.total:
        parts.append(f"ETA {format_duration(event.eta_s)}")
    return "  ·  ".join(parts)


class JobProgress(QWidget):
    """`progress_bar`, `status_label` and `cancel_button` in one row; idle until `bind(job)`."""

    def __init__(
        self,
        describe: Callable[[ProgressEvent], str] | None = None,
        show_bar_when_idle: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.describe = describe or describe_event
        self._show_bar_when_idle = show_bar_when_idle
        self.job: Job | None = None
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(12)
        self.status_label = QLabel("")
        self.status_label.setObjectName("jobStatus")
        self.status_label.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, BAR_STEPS)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)  # the status line says done / total, rate and ETA
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        lay.addWidget(self.status_label, 2)
        lay.addWidget(self.progress_bar, 3)
        lay.addWidget(self.cancel_button)
        self._idle()

    @property
    def running(self) -> bool:
        return self.job is not None

    def bind(self, job: Job, text: str = "Starting…") -> None:
        """Follow `job` until it finishes: call before `job.start()`."""
        self.job = job
        job.progress.connect(self._on_progress)
        job.finished.connect(self._on_finished)
        self.progress_bar.setRange(0, 0)  # busy until the first total arrives
        self.progress_bar.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.cancel_button.setVisible(True)
        self.status_label.setText(text)

    def set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def set_done(self, text: str) -> None:
        """Show a finished job: a full bar and `text`."""
        self.progress_bar.setRange(0, BAR_STEPS)
        self.progress_bar.setValue(BAR_STEPS)
        self.status_label.setText(text)

    def cancel(self) -> None:
        """The Cancel button's handler (no parameters: `clicked` would pass its `checked` flag)."""
        if self.job is not None:
            self.job.cancel()
            self.cancel_button.setEnabled(False)
            self.status_label.setText("Cancelling…")

    def _on_progress(self, event: ProgressEvent) -> None:
        if self.job is None or self.job.token.cancelled:
            return  # keep "Cancelling…" on screen
        if event.total:
            self.progress_bar.setRange(0, BAR_STEPS)
            self.progress_bar.setValue(int(BAR_STEPS * min(1.0, event.done / event.total)))
        self.status_label.setText(self.describe(event))

    def _on_finished(self) -> None:
        self.job = None
        self._idle()

    def _idle(self) -> None:
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, BAR_STEPS)
        self.progress_bar.setVisible(self._show_bar_when_idle)
        self.cancel_button.setEnabled(False)
        self.cancel_button.setVisible(self._show_bar_when_idle)
