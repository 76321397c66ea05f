"""Run a trainer_core callable off the GUI thread, with progress, cancel and results delivered as Qt signals.

    job = Job(lambda progress: init_demo(root, progress=progress), name="Create demo workspace")
    job.progress.connect(bar.on_event)      # ProgressEvent, on the GUI thread
    job.succeeded.connect(show_result)      # the callable's return value
    job.failed.connect(show_error)          # KxlError text, or a short "unexpected error" line
    job.cancelled.connect(...)              # the job raised Cancelled after job.cancel()
    job.start()

The `Job` object lives on the GUI thread; the callable runs in a daemon Python thread. The worker emits only the
private `_relay_*` signals, queued to slots of the Job itself, and those re-emit the public signals on the GUI
thread: so plain lambdas connected to the public signals (which have no thread affinity of their own) always run
on the GUI thread and may touch widgets. Daemon threads rather than QThread/QThreadPool because a
job that cannot be interrupted (hashing a 7 GB checkpoint) must never keep the app from quitting: a running
QThread aborts the process when destroyed, and the global QThreadPool waits for its threads at exit.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal

from trainer_core.errors import Cancelled, KxlError
from trainer_core.progress import CancelToken, Progress

log = logging.getLogger("kxl_gui.jobs")

CANCELLED_TEXT = "cancelled"

# Jobs keep themselves alive here while running: callers often drop their reference right after start().
_running: set[Job] = set()


def unexpected_error_text(exc: BaseException, what: str = "") -> str:
    where = f" in {what}" if what else ""
    detail = str(exc).strip().splitlines()
    first = f": {detail[0]}" if detail else ""
    return (
        f"Unexpected error{where} ({type(exc).__name__}{first}). Details are in the log file (Help > About)."
    )


class Job(QObject):
    progress = Signal(object)  # trainer_core.progress.ProgressEvent
    succeeded = Signal(object)  # the callable's return value
    failed = Signal(str)  # user-readable message
    cancelled = Signal()
    finished = Signal()  # after exactly one of succeeded / failed / cancelled

    _relay_progress = Signal(object)
    _relay_end = Signal(str, object)  # outcome ("ok" | "failed" | "cancelled"), payload

    def __init__(
        self,
        fn: Callable[[Progress], Any],
        name: str = "",
        parent: QObject | None = None,
        min_interval_s: float = 0.05,
    ) -> None:
        super().__init__(parent)
        self.fn = fn
        self.name = name
        self.token = CancelToken()
        self._min_interval_s = min_interval_s
        self._thread: threading.Thread | None = None
        queued = Qt.ConnectionType.QueuedConnection
        self._relay_progress.connect(self._deliver_progress, queued)
        self._relay_end.connect(self._deliver_end, queued)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Job:
        if self._thread is not None:
            raise RuntimeError(f"job {self.name!r} was already started")
        _running.add(self)
        self._thread = threading.Thread(target=self._run, name=f"kxl-job-{self.name or 'job'}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop at its next `progress.check_cancelled()`; `cancelled` is emitted when it does."""
        self.token.cancel()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the worker thread ends (for shutdown and scripts); True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        progress = Progress(
            callback=self._emit_progress, cancel_token=self.token, min_interval_s=self._min_interval_s
        )
        try:
            result = self.fn(progress)
        except Cancelled:
            self._emit_end("cancelled", None)
        except KxlError as exc:
            self._emit_end("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in a job must reach the user as a message, not kill the app
            log.error("job %r failed", self.name, exc_info=exc)
            self._emit_end("failed", unexpected_error_text(exc, self.name))
        else:
            self._emit_end("ok", result)

    # A job parented to a page dies with it (window closed mid-job). Its C++ half is then gone and emitting
    # raises RuntimeError: nobody is listening any more, so the job cancels itself and ends quietly.
    def _emit_progress(self, event: object) -> None:
        try:
            self._relay_progress.emit(event)
        except RuntimeError:
            self.token.cancel()

    def _emit_end(self, outcome: str, payload: object) -> None:
        try:
            self._relay_end.emit(outcome, payload)
        except RuntimeError:
            _running.discard(self)

    def _deliver_progress(self, event: object) -> None:
        self.progress.emit(event)

    def _deliver_end(self, outcome: str, payload: object) -> None:
        _running.discard(self)
        if outcome == "ok":
            self.succeeded.emit(payload)
        elif outcome == "cancelled":
            self.cancelled.emit()
        else:
            self.failed.emit(str(payload))
        self.finished.emit()


def running_jobs() -> list[Job]:
    return [job for job in _running if job.is_running]


def cancel_all(wait_s: float = 2.0) -> None:
    """Cancel every running job and give them `wait_s` in total to reach a safe point (used on quit)."""
    jobs = running_jobs()
    for job in jobs:
        job.cancel()
    per_job = wait_s / max(1, len(jobs))
    for job in jobs:
        job.wait(per_job)


# ---- the cyclic garbage collector and the GUI thread --------------------------------------------------------
# A full collection walks every tracked object while holding the GIL. Once torch, diffusers and transformers are
# imported (~2,000 modules, 0.5 M objects) one takes 0.2-0.6 s, and the GUI thread, which needs the GIL to run
# any Python slot or paint override, stands still for as long, although the work that triggered it runs in a
# worker. Jobs that build a large, long-lived object graph (first import of the generation engine, a tag
# vocabulary, a completion index) do it inside `quiet_gc()`.
_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Pause the cyclic collector while the body builds long-lived objects, then freeze them (`gc.freeze`).

    Paused, the build triggers no full collection; frozen, what it built (and everything older) is left out of
    every later full collection, so those stay as short as the objects made since. Objects are still freed by
    reference counting when dropped; only cyclic garbage that happened to exist at the freeze is never
    collected (a few thousand objects after the engine import). Nested and concurrent pauses are counted: the
    collector comes back, as it was, when the last one ends.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.freeze()
                if _gc_was_enabled:
                    gc.enable()
