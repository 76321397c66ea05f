"""A GUI-thread stall watchdog for tests: how long did the event loop go without running a timer?

    watch = StallWatch().start()         # after the first paint (qtbot.waitExposed)
    click(button) ...                    # the journey, driven by real input
    watch.stop()
    assert watch.worst_blocked_ms <= 150, watch.report()

A ~10 ms QTimer ticks on the GUI thread; the largest gap between two ticks (`worst_ms`) is the longest time the
window could not repaint or react to input. For each gap the watch also reads how the GUI thread spent it
(Linux `/proc/self/task/<tid>/schedstat`): CPU time of its own and time it was runnable but waiting for a core.
`blocked_ms` = gap minus that run-queue wait: what our process did to the GUI thread (its own work, waiting for
the GIL a worker holds, blocking I/O), without what other processes on a busy machine did to it. Tests assert
on `worst_blocked_ms`, so a shared CI box under load does not fail them, while a slot that works for 200 ms or
a worker that holds the GIL for 200 ms still does. Elsewhere than Linux the run-queue wait reads 0.

A helper thread notices a gap while it is still open and records the GUI thread's Python stack at that moment,
so a failing bound names the code that blocked (no stack: the GUI thread was waiting for the GIL or a core).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer

TICK_MS = 10
STACK_AFTER_MS = 60  # a gap still open after this long gets the GUI thread's stack recorded


@dataclass
class Stall:
    gap_ms: float  # wall-clock time between two ticks
    gui_cpu_ms: float  # CPU time the GUI thread used in the gap (its own work)
    runq_ms: float  # time the GUI thread was runnable but had no core (other processes, a loaded machine)
    at_s: float  # seconds after start() when the gap ended
    stack: str = ""  # the GUI thread's stack seen while the gap was open ("" if none was taken)
    others: dict[str, float] | None = None  # with threads=True: CPU ms of the other busy threads in the gap

    @property
    def blocked_ms(self) -> float:
        return max(0.0, self.gap_ms - self.runq_ms)


def _schedstat(tid: int) -> tuple[float, float]:
    """(on-CPU s, run-queue wait s) of a thread; (thread_time, 0) where /proc has no schedstat."""
    try:
        on_cpu, waited, _slices = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        return int(on_cpu) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
        return time.thread_time(), 0.0


def _threads_cpu() -> dict[str, float]:
    """CPU seconds of every Python thread of the process by name (who held the GIL while the GUI waited)."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.native_id is not None:
            on_cpu, _ = _schedstat(thread.native_id)
            out[f"{thread.name}#{thread.native_id}"] = on_cpu
    return out


class StallWatch(QObject):
    """Gaps between ticks of a GUI-thread timer while it runs; gaps over `keep_ms` are kept with their details.
    `threads=True` also records, per gap, which other threads ran (diagnosis: the GIL holder)."""

    def __init__(self, keep_ms: float = 50.0, threads: bool = False) -> None:
        super().__init__()
        self.keep_ms = keep_ms
        self.threads = threads
        self._last_threads: dict[str, float] = {}
        self._last_process = 0.0
        self.stalls: list[Stall] = []
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)
        self._lock = threading.Lock()
        self._last = self._start = 0.0
        self._last_cpu = self._last_runq = 0.0
        self._pending_stack = ""
        self._gui_thread = threading.get_ident()
        self._gui_tid = threading.get_native_id()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self.worst_ms = self.worst_blocked_ms = self.worst_gui_cpu_ms = 0.0

    # -- control ----------------------------------------------------------------------------------------------
    def start(self) -> StallWatch:
        self._gui_thread = threading.get_ident()
        self._gui_tid = threading.get_native_id()
        self._start = self._last = time.perf_counter()
        self._last_cpu, self._last_runq = _schedstat(self._gui_tid)
        self._last_threads = _threads_cpu() if self.threads else {}
        self._last_process = time.process_time()
        self.worst_ms = self.worst_blocked_ms = self.worst_gui_cpu_ms = 0.0
        self.stalls.clear()
        self._stop.clear()
        self._timer.start()
        self._sampler = threading.Thread(target=self._sample, name="stall-watch", daemon=True)
        self._sampler.start()
        return self

    def stop(self) -> StallWatch:
        self._tick()  # a gap still open at the end counts too
        self._timer.stop()
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(1.0)
        return self

    def __enter__(self) -> StallWatch:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- measuring --------------------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.perf_counter()
        cpu, runq = _schedstat(self._gui_tid)
        with self._lock:
            gap_ms = (now - self._last) * 1000.0
            self._last = now
            stack, self._pending_stack = self._pending_stack, ""
        cpu_ms, runq_ms = (cpu - self._last_cpu) * 1000.0, (runq - self._last_runq) * 1000.0
        self._last_cpu, self._last_runq = cpu, runq
        stall = Stall(gap_ms, cpu_ms, min(runq_ms, gap_ms), now - self._start, stack)
        if self.threads:
            cpus = _threads_cpu()
            busy = {k: (v - self._last_threads.get(k, v)) * 1000.0 for k, v in cpus.items()}
            process = time.process_time()
            # Job threads often start and end inside one gap: what no listed thread accounts for is theirs (or
            # a non-Python thread's).
            busy["threads that ended, non-Python threads"] = (process - self._last_process) * 1000.0 - sum(
                busy.values()
            )
            self._last_process = process
            stall.others = {k: ms for k, ms in busy.items() if ms >= 5.0}
            self._last_threads = cpus
        self.worst_ms = max(self.worst_ms, gap_ms)
        self.worst_blocked_ms = max(self.worst_blocked_ms, stall.blocked_ms)
        self.worst_gui_cpu_ms = max(self.worst_gui_cpu_ms, cpu_ms)
        if gap_ms > self.keep_ms:
            self.stalls.append(stall)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with self._lock:
                open_ms = (time.perf_counter() - self._last) * 1000.0
                if open_ms < STACK_AFTER_MS or self._pending_stack:
                    continue
            frame = sys._current_frames().get(self._gui_thread)
            if frame is None:
                continue
            stack = "".join(traceback.format_stack(frame, limit=25))
            with self._lock:
                if (time.perf_counter() - self._last) * 1000.0 >= STACK_AFTER_MS:
                    self._pending_stack = stack

    def report(self, limit: int = 3) -> str:
        """The worst gaps with where the GUI thread was, for an assertion message or a benchmark print."""
        worst = sorted(self.stalls, key=lambda s: -s.blocked_ms)[:limit]
        lines = [
            f"worst GUI-thread gap {self.worst_ms:.0f} ms; worst blocked by this process "
            f"{self.worst_blocked_ms:.0f} ms; most GUI-thread CPU in one gap {self.worst_gui_cpu_ms:.0f} ms"
        ]
        for s in worst:
            lines.append(
                f"--- gap {s.gap_ms:.0f} ms: blocked {s.blocked_ms:.0f} ms, GUI thread on CPU "
                f"{s.gui_cpu_ms:.0f} ms, waiting for a core {s.runq_ms:.0f} ms; ended at +{s.at_s:.2f} s"
            )
            if s.others:
                lines.append(
                    "    other threads on CPU: " + ", ".join(f"{k} {v:.0f} ms" for k, v in s.others.items())
                )
            if s.stack:
                lines.append(s.stack.rstrip())
        return "\n".join(lines)
