"""The Train tab's run controller: a thin Qt adapter over the engine's trainer supervisor
(trainer_core.train.supervisor.Supervisor) that also folds the run's events.jsonl into a `RunSeries`.

Everything happens in short timer ticks on the GUI thread, none of which waits:
- events are read in slices bounded by a time budget per event-loop turn (READ_BUDGET_S); while more is waiting,
  the next slice is read on the next turn (a zero-delay timer), so a 100k-event backlog (reattach) is caught up in
  about a second of ~10 ms turns, with paints and input handled in between. The reading stays on the GUI thread on
  purpose: parsing is Python work that holds the GIL, so a worker thread would only move the same pauses around
  (and make each GUI-side Python call wait for the GIL), not remove them;
- process work is the supervisor's non-blocking steps: `ended()` (polls, and so reaps, a launcher this GUI
  started; looks a followed run's processes up once a second), `check_handshake()` (a stat of events.jsonl) and
  `tick()` (the stop escalation: stop file + SIGTERM to the ranks, SIGTERM to the group after `stop_grace_s`,
  SIGKILL after `term_grace_s` more). Each is a few milliseconds at most.
The supervisor is created without `tie_to_parent`: a run launched here survives the window closing, and the next
window reattaches to it from the runs list.
"""

from __future__ import annotations

import signal
import subprocess
import time

from PySide6.QtCore import QObject, QTimer, Signal

from trainer_core.train.events import EVENTS_FILE, read_run_info, request_command
from trainer_core.train.runs import EventTail, RunSeries, mark_run, reconcile_run, run_log_tail
from trainer_core.train.supervisor import Supervisor

ACTIVE = ("launching", "running", "stopping")
TICK_MS = 120
READ_BUDGET_S = 0.008  # per event-loop turn; a slice may run over by the time of one READ_SLICE (~2 ms)
READ_SLICE = 32 * 1024  # ~120 events
# a backlog this big (~4000 events) is a reattach: more than a live run writes between two ticks at 10k events/s
FAR_BEHIND_BYTES = 1 << 20


class RunMonitor(QObject):
    updated = Signal()  # new events were folded into `series`
    state_changed = Signal(str, str)  # state, detail
    ended = Signal(str)  # final state: finished | stopped | failed

    def __init__(self, supervisor: Supervisor, parent: QObject | None = None) -> None:
        """Watch `supervisor`'s run: one it just started (`start()` called), or one it follows."""
        super().__init__(parent)
        self.supervisor = supervisor
        self.run_dir = supervisor.run_dir
        self.series = RunSeries()
        self.tail = EventTail(self.run_dir / EVENTS_FILE)
        self.state = "launching" if supervisor.proc is not None else "running"
        self.detail = ""
        self.exit_code: int | None = None
        self.log_tail: list[str] = []
        self._exit_seen = False
        self._verdict_due = False  # the launcher is gone; the outcome is decided once the backlog is read
        self._resets_seen = 0
        self.timer = QTimer(self)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.poll)
        self._more = QTimer(self)  # the next read slice, on the next event-loop turn
        self._more.setSingleShot(True)
        self._more.setInterval(0)
        self._more.timeout.connect(self._read_more)
        if supervisor.proc is None:
            summary = reconcile_run(self.run_dir)
            self.exit_code = summary.exit_code
            if summary.state in ("finished", "stopped", "failed"):
                self.state = summary.state
                self.detail = summary.message
                self.log_tail = summary.log_tail
                self._exit_seen = True
        self.timer.start()

    # ---- state --------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def proc(self) -> subprocess.Popen | None:
        """The launcher this window started (None for a followed run or after detach)."""
        return self.supervisor.proc

    @property
    def owns_process(self) -> bool:
        return self.supervisor.owns_process

    @property
    def handshake(self) -> bool:
        """The trainer has reported since the launch (before that, only a signal can stop it)."""
        return self.supervisor.handshake

    @property
    def catching_up(self) -> bool:
        """Events are waiting to be read."""
        return self.tail.pending

    @property
    def far_behind(self) -> bool:
        """Reading a long backlog (a reattach), not just the last moments of a live run: intermediate redraws
        are not worth their paint then."""
        return self.tail.backlog() > FAR_BEHIND_BYTES

    def _set_state(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            self.state, self.detail = state, detail
            self.state_changed.emit(state, detail)

    # ---- the tick -----------------------------------------------------------------------------------------
    def poll(self) -> None:
        self._read_events()
        if self._exit_seen:
            self._conclude()
            if not self.tail.pending and not self._verdict_due and self.timer.isActive():
                self.timer.stop()
            return
        sup = self.supervisor
        now = time.monotonic()
        late = sup.check_handshake(now)
        if sup.handshake and self.state == "launching":
            self._set_state("running", "")
        if sup.ended(now):
            self._on_exit(sup.exit_code)
            return
        if late:
            self.log_tail = run_log_tail(self.run_dir)
            self._set_state("launching", f"No event from the trainer after {sup.handshake_s:.0f} s; "
                            "it is still starting or stuck. Last log lines are shown below.")  # fmt: skip
        note = sup.tick(now)
        if note:
            self._set_state("stopping", note)

    def _read_more(self) -> None:
        self._read_events()
        self._conclude()

    def _read_events(self) -> None:
        if self._more.isActive():
            self._more.stop()  # this call reads the slice the pending turn would have read
        end = time.perf_counter() + READ_BUDGET_S
        got = False
        while True:  # at least one slice per turn, so any budget makes progress
            events = self.tail.read(READ_SLICE)
            if self.tail.resets != self._resets_seen:  # the file was replaced: start the series over
                self._resets_seen = self.tail.resets
                self.series = RunSeries()
            if not events:
                break
            self.series.add(events)
            got = True
            if time.perf_counter() >= end:
                self._more.start()  # more may be waiting: read it on the next turn, after paints and input
                break
        if got:
            self.updated.emit()

    def _on_exit(self, code: int | None) -> None:
        """The launcher (or the followed trainer) is gone: clean up now, decide the outcome once the events that
        are left (they matter for the verdict) are read, in budgeted slices like any others."""
        self._exit_seen = True
        self._verdict_due = True
        self.exit_code = code
        self.supervisor.reap_stragglers()  # a dead launcher cannot clean up its ranks any more
        self._read_events()
        self._conclude()

    def _conclude(self) -> None:
        if not self._verdict_due or self.tail.pending:
            return
        self._verdict_due = False
        code = self.exit_code
        done, error = self.series.done, self.series.error
        info = read_run_info(self.run_dir) or {}
        if code is None:
            code = info.get("exit_code")
            self.exit_code = code
        if done is not None and (code in (0, None)):
            state = "stopped" if done.get("reason") == "stopped" else "finished"
            self._finish(state, f"{state.capitalize()} at step {done.get('step', self.series.last_step)}.")
            return
        self.log_tail = run_log_tail(self.run_dir)
        parts = []
        if code is not None:
            parts.append(
                f"exit code {code}" + (f" (signal {signal.Signals(-code).name})" if code < 0 else "")
            )
        if error is not None:
            parts.append(str(error.get("message", "")))
        if not self.handshake:
            parts.append("the trainer exited before reporting anything")
        elif error is None and done is None:
            parts.append(f"no 'done' event; last step {self.series.last_step}")
        message = "Training failed: " + "; ".join(p for p in parts if p)
        if info.get("state") in (None, "running"):
            mark_run(self.run_dir, "failed", exit_code=code, message=message, log_tail=self.log_tail)
        self._finish("failed", message)

    def _finish(self, state: str, detail: str) -> None:
        self._set_state(state, detail)
        self.ended.emit(state)

    # ---- commands -----------------------------------------------------------------------------------------
    def request(self, name: str) -> None:
        """ "sample" or "save" now (served by the trainer after its current step)."""
        if self.active:
            request_command(self.run_dir, name)

    def stop(self) -> None:
        """Stop button: the supervisor asks the trainer to save and end (or signals it before its handshake) and
        escalates from the timer if it does not."""
        if not self.active or self.state == "stopping":
            return
        self._set_state("stopping", self.supervisor.request_stop())

    def kill(self) -> None:
        """Immediate SIGKILL of the whole group (the runs list's "kill process group")."""
        note = self.supervisor.kill()
        if note:
            self._set_state(self.state, note)

    def detach(self) -> None:
        """Stop watching without touching the processes (the run goes on; reattach later from the runs list)."""
        self.timer.stop()
        self._more.stop()
        self.supervisor.proc = None
