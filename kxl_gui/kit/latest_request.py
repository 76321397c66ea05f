"""A background request where only the newest one counts: live counts, previews, plans that follow the inputs.

    count = LatestRequest("Count matching posts", parent=self, delay_ms=300)
    count.submit(lambda progress: estimate(...), on_result=show_counts, on_error=show_problem)

Each `submit` supersedes the one before: a request still waiting for its debounce delay is replaced, a running
one is cancelled (its `CancelToken`; it stops at its next `progress.check_cancelled()`), and whatever a
superseded job still delivers is dropped, so a slow early answer can never overwrite a later one on screen.
`cancel()` drops the pending and running requests without starting another (the inputs went invalid, or a
long job that the answer would describe is about to start). This replaces the per-tab generation counters and
single-shot debounce timers that each tab used to write out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from trainer_core.progress import Progress

from ..jobs import Job

Work = Callable[[Progress], Any]


class LatestRequest(QObject):
    """Runs the newest submitted request as a `Job`; see the module docstring."""

    settled = Signal()  # the newest request's answer (result, error or cancel) was delivered
    busy_changed = Signal(bool)  # True while a request waits for its delay or runs

    def __init__(self, name: str, parent: QObject | None = None, delay_ms: int = 0) -> None:
        super().__init__(parent)
        self.name = name
        self.delay_ms = delay_ms
        self.job: Job | None = None  # the newest request's job, while it runs
        self._pending: tuple[Work, Callable[[Any], None], Callable[[str], None] | None] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._launch)
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def submit(
        self,
        work: Work,
        on_result: Callable[[Any], None],
        on_error: Callable[[str], None] | None = None,
        delay_ms: int | None = None,
    ) -> None:
        """Run `work` in a worker after the debounce delay; `on_result` / `on_error` only if still the newest."""
        self._supersede_running()
        self._pending = (work, on_result, on_error)
        delay = self.delay_ms if delay_ms is None else delay_ms
        self._set_busy(True)
        if delay <= 0:
            self._timer.stop()
            self._launch()
        else:
            self._timer.start(delay)

    def cancel(self) -> None:
        """Forget the pending request and cancel the running one; nothing they produce is delivered."""
        self._timer.stop()
        self._pending = None
        self._supersede_running()
        self._set_busy(False)

    # ---- internals ----------------------------------------------------------------------------------------
    def _supersede_running(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job = None  # its end is now stale: _ended compares against self.job

    def _launch(self) -> None:
        if self._pending is None:
            return
        work, on_result, on_error = self._pending
        self._pending = None
        job = Job(work, name=self.name, parent=self)
        job.succeeded.connect(lambda value: self._ended(job, on_result, value))
        job.failed.connect(lambda text: self._ended(job, on_error, text))
        job.cancelled.connect(lambda: self._ended(job, None, None))
        self.job = job
        job.start()

    def _ended(self, job: Job, deliver: Callable[[Any], None] | None, payload: Any) -> None:
        if job is not self.job:
            return  # superseded or cancelled: its answer describes inputs that are gone
        self.job = None
        if self._pending is None and not self._timer.isActive():
            self._set_busy(False)
        if deliver is not None:
            deliver(payload)
        self.settled.emit()

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)
