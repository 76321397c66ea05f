"""One run under watch: tails its events.jsonl, owns the launcher process when this GUI started it, and stops it.

Everything happens in short timer ticks on the GUI thread, none of which waits:
- events are read in slices bounded by a time budget per event-loop turn (READ_BUDGET_S); while more is waiting,
  the next slice is read on the next turn (a zero-delay timer), so a 100k-event backlog (reattach) is caught up in
  about a second of ~10 ms turns, with paints and input handled in between. The reading stays on the GUI thread on
  purpose: parsing is Python work that holds the GIL, so a worker thread would only move the same pauses around
  (and make each GUI-side Python call wait for the GIL), not remove them;
- the launcher (started in its own session by `trainer_core.train.runs.start_trainer`) is `poll()`ed, which also
  reaps it, so no zombie is left;
- a run this GUI did not start (CLI, an earlier GUI) is followed through its files, and its processes are checked
  (pid + start time) once a second.
Handshake: after a launch, the first new event must arrive within `handshake_timeout_s`; if the launcher dies
before that, or the time passes, the state says why with the exit code and the log's tail.
Stop escalates: command file (the trainer saves and exits at the end of its step) -> SIGTERM to the whole process
group after `stop_grace_s` -> SIGKILL after `term_grace_s` more.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from trainer_core.errors import KxlError
from trainer_core.train.events import EVENTS_FILE, read_run_info, request_command
from trainer_core.train.runs import (
    EventTail,
    RunSeries,
    group_members,
    mark_run,
    reconcile_run,
    run_log_tail,
    run_process_group,
    signal_group,
    trainer_alive,
)

ACTIVE = ("launching", "running", "stopping")
TICK_MS = 120
READ_BUDGET_S = 0.008  # per event-loop turn; a slice may run over by the time of one READ_SLICE (~2 ms)
READ_SLICE = 32 * 1024  # ~120 events
# a backlog this big (~4000 events) is a reattach: more than a live run writes between two ticks at 10k events/s
FAR_BEHIND_BYTES = 1 << 20
PROCESS_CHECK_S = 1.0


class RunMonitor(QObject):
    updated = Signal()  # new events were folded into `series`
    state_changed = Signal(str, str)  # state, detail
    ended = Signal(str)  # final state: finished | stopped | failed

    def __init__(self, run_dir: str | Path, proc: subprocess.Popen | None = None, *,
                 handshake_timeout_s: float = 120.0, stop_grace_s: float = 90.0, term_grace_s: float = 20.0,
                 parent: QObject | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.run_dir = Path(run_dir)
        self.proc = proc
        self.handshake_timeout_s = handshake_timeout_s
        self.stop_grace_s = stop_grace_s
        self.term_grace_s = term_grace_s
        self.series = RunSeries()
        self.tail = EventTail(self.run_dir / EVENTS_FILE)
        self.state = "launching" if proc is not None else "running"
        self.detail = ""
        self.exit_code: int | None = None
        self.log_tail: list[str] = []
        self.pgid: int | None = proc.pid if proc is not None else None
        self.started = time.monotonic()
        self.launch_offset = self.tail.size() if proc is not None else 0
        self.handshake = proc is None
        self.handshake_late = False
        self._stop_phase = 0
        self._stop_deadline = 0.0
        self._last_process_check = 0.0
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
        if proc is None:
            summary = reconcile_run(self.run_dir)
            self.exit_code = summary.exit_code
            if summary.state in ("finished", "stopped", "failed"):
                self.state = summary.state
                self.detail = summary.message
                self.log_tail = summary.log_tail
                self._exit_seen = True
            else:
                self.pgid = run_process_group(self.run_dir)
        self.timer.start()

    # ---- state --------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def owns_process(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
        now = time.monotonic()
        if not self.handshake and self.tail.offset > self.launch_offset:
            self.handshake = True
            if self.state == "launching":
                self._set_state("running", "")
        if self.proc is not None:
            code = self.proc.poll()
            if code is not None:
                self._on_exit(code)
                return
        elif now - self._last_process_check >= PROCESS_CHECK_S:
            self._last_process_check = now
            if not trainer_alive(self.run_dir):
                self._on_exit(None)
                return
        if not self.handshake and not self.handshake_late and now - self.started > self.handshake_timeout_s:
            self.handshake_late = True
            self.log_tail = run_log_tail(self.run_dir)
            self._set_state("launching", f"No event from the trainer after {self.handshake_timeout_s:.0f} s; "
                            "it is still starting or stuck. Last log lines are shown below.")  # fmt: skip
        self._escalate_stop(now)

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
        stragglers = group_members(self.pgid) if self.pgid else []
        if stragglers:  # a dead launcher cannot clean up its ranks any more
            try:
                signal_group(self.pgid, signal.SIGKILL)
            except KxlError:
                pass
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
        self._stop_phase = 0
        self._set_state(state, detail)
        self.ended.emit(state)

    # ---- commands -----------------------------------------------------------------------------------------
    def request(self, name: str) -> None:
        """ "sample" or "save" now (served by the trainer after its current step)."""
        if self.active:
            request_command(self.run_dir, name)

    def stop(self) -> None:
        if not self.active or self._stop_phase:
            return
        now = time.monotonic()
        if not self.handshake:
            # The trainer clears old command files when it starts, so before its first event only a signal works.
            self._terminate(now)
            return
        request_command(self.run_dir, "stop")
        self._stop_phase = 1
        self._stop_deadline = now + self.stop_grace_s
        self._set_state("stopping", "Asked the trainer to save and stop at the end of its current step…")

    def _terminate(self, now: float) -> None:
        self._stop_phase = 2
        self._stop_deadline = now + self.term_grace_s
        try:
            sent = signal_group(self.pgid, signal.SIGTERM)
        except KxlError as exc:
            self._set_state("stopping", str(exc))
            return
        self._set_state("stopping", f"SIGTERM sent to process group {self.pgid}…" if sent
                        else "SIGTERM: the process group is already gone")  # fmt: skip

    def _escalate_stop(self, now: float) -> None:
        if not self._stop_phase or now < self._stop_deadline:
            return
        if self._stop_phase == 1:
            self._terminate(now)
        elif self._stop_phase == 2:
            self._stop_phase = 3
            try:
                signal_group(self.pgid, signal.SIGKILL)
            except KxlError as exc:
                self._set_state("stopping", str(exc))
                return
            self._set_state("stopping", f"No exit after SIGTERM: SIGKILL sent to process group {self.pgid}")

    def kill(self) -> None:
        """Immediate SIGKILL of the whole group (the runs list's "kill process group")."""
        if self.pgid:
            try:
                signal_group(self.pgid, signal.SIGKILL)
            except KxlError as exc:
                self._set_state(self.state, str(exc))
                return
            self._stop_phase = 3

    def detach(self) -> None:
        """Stop watching without touching the processes (the run goes on; reattach later from the runs list)."""
        self.timer.stop()
        self._more.stop()
        self.proc = None
