"""Worst GUI event-loop stall of the Train tab while a run streams 100k events into events.jsonl (target < 100 ms).

    python benchmarks/bench_train_tab_stall.py [--events 100000] [--seconds 10] [--runs 3]

A child process plays the trainer: it writes run.json (so the tab follows it as a live run) and appends step
events (plus a save every 1000 steps and a sample every 5000) at a steady rate, then `done`. The real Train tab
attaches to the run dir and tails it. A 5 ms QTimer measures the longest gap between its ticks, i.e. the longest
time the GUI thread was busy. Each of `--runs` rounds uses a fresh tab for both scenarios: streaming (gaps while
the writer runs, and how long the tab needed to show the last step after it finished) and reattaching to the
finished 100k-event file (the "reattach after a GUI restart" case). Printed per run: min / median / p99 / worst
gap; then, per scenario, the min / median / max over the runs of the p99 and of the worst gap. On a shared
2-core box the figures move with the load of other processes (see `uptime`): compare runs taken together.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WRITER = r"""
import math, sys, time
from trainer_core.train.events import EventWriter, write_run_info
run, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
write_run_info(run, "running")
w = EventWriter(run)
w.emit("status", 0, message="starting", world_size=2)
w.emit("status", 0, message="dataset", total_steps=n)
start = time.perf_counter()
for i in range(1, n + 1):
    w.emit("step", i, epoch=1, loss=0.1 + 0.05 * math.sin(i / 50) + 0.2 / math.sqrt(i),
           lr={"textencoder": 1e-5, "unet": 4e-5}, grad_norm=0.5 + 0.1 * math.cos(i / 30),
           images_per_s=12.5, samples_seen=8 * i, step_time_s=0.08, peak_memory_mb=20000.0, total_steps=n)
    if i % 1000 == 0:
        w.emit("save", i, path=f"{run}/checkpoints/x-step{i:08d}.safetensors", state="", final=False, reason="interval")
    if i % 5000 == 0:
        w.emit("sample", i, path=f"{run}/samples/step{i:08d}-00.png", index=0, prompt="1girl")
    ahead = i / n * seconds - (time.perf_counter() - start)
    if ahead > 0.002:
        time.sleep(ahead)
w.emit("done", n, reason="finished", final_step=n)
w.close()
write_run_info(run, "done", final_step=n)
"""


class StallMeter:
    def __init__(self, interval_ms: int = 5) -> None:
        from PySide6.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> dict[str, float]:
        """min / median / p99 / worst gap between ticks, in ms."""
        self.timer.stop()
        gaps = sorted(self.gaps) or [0.0]
        pick = lambda q: gaps[int(q * (len(gaps) - 1))] * 1000  # noqa: E731
        return {"min": gaps[0] * 1000, "median": pick(0.5), "p99": pick(0.99), "worst": gaps[-1] * 1000}


def fmt(stats: dict[str, float]) -> str:
    return " / ".join(f"{stats[k]:.1f}" for k in ("min", "median", "p99", "worst")) + " ms"


def pump_until(app, condition, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.001)
    return False


def new_tab(app, tmp: Path, name: str):
    from kxl_gui.context import AppContext
    from kxl_gui.settings import AppSettings
    from kxl_gui.tabs.train import TrainTab

    tab = TrainTab(AppContext(AppSettings(tmp / f"{name}.ini")))
    tab.resize(1280, 860)
    tab.show()
    pump_until(app, lambda: False, 0.5)
    return tab


def caught_up(tab, events: int) -> bool:
    m = tab.monitor
    return (m.series.n == events and m.series.last_step == events and not m.catching_up
            and tab.plots.drawn_version == m.series.version)  # fmt: skip


def stream(app, tmp: Path, run: Path, args) -> dict[str, float]:
    tab = new_tab(app, tmp, f"stream-{run.name}")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(args.events), str(args.seconds)],
                              cwd=REPO)  # fmt: skip
    pump_until(app, lambda: (run / "run.json").exists(), 30)
    meter = StallMeter()
    meter.start()
    tab.attach(run)
    t0 = time.perf_counter()
    pump_until(app, lambda: writer.poll() is not None, args.seconds * 5 + 60)
    t_written = time.perf_counter()
    shown = pump_until(app, lambda: caught_up(tab, args.events) and tab.monitor.state == "finished", 60)
    t_shown = time.perf_counter()
    stats = meter.stop()
    print(f"  streaming {args.events:,} events over {t_written - t0:.1f} s: gaps min/median/p99/worst "
          f"{fmt(stats)}; last step on screen {t_shown - t_written:.2f} s after the writer finished"
          + ("" if shown else " (NOT reached)") + f"; points plotted {len(tab.plots.loss_points()[0]):,}, "
          f"markers {len(tab.monitor.series.markers)}")  # fmt: skip
    tab.close()
    tab.deleteLater()
    return stats


def reattach(app, tmp: Path, run: Path, args) -> dict[str, float]:
    tab = new_tab(app, tmp, f"reattach-{run.name}")
    meter = StallMeter()
    meter.start()
    t0 = time.perf_counter()
    tab.attach(run)
    done = pump_until(app, lambda: caught_up(tab, args.events), 60)
    t1 = time.perf_counter()
    stats = meter.stop()
    print(f"  reattach to the finished {args.events:,}-event run: caught up in {t1 - t0:.2f} s"
          + ("" if done else " (NOT reached)") + f"; gaps min/median/p99/worst {fmt(stats)}")  # fmt: skip
    tab.close()
    tab.deleteLater()
    return stats


def summary(name: str, runs: list[dict[str, float]]) -> None:
    for key in ("p99", "worst"):
        values = sorted(r[key] for r in runs)
        print(
            f"{name:>9} {key:>5} over {len(runs)} runs: min {values[0]:.1f}  median "
            f"{statistics.median(values):.1f}  max {values[-1]:.1f} ms (target: worst < 100 ms)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the writer takes to write them")
    parser.add_argument("--runs", type=int, default=3, help="rounds of both scenarios")
    args = parser.parse_args()
    os.environ.setdefault("KXL_DATA_DIR", tempfile.mkdtemp(prefix="kxl-bench-data-"))

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="kxl-bench-train-"))
    streamed, reattached = [], []
    for i in range(1, args.runs + 1):
        print(f"run {i}/{args.runs} (load average {os.getloadavg()[0]:.2f})")
        run = tmp / "runs" / f"fake-run-{i}"
        run.mkdir(parents=True)
        streamed.append(stream(app, tmp, run, args))
        reattached.append(reattach(app, tmp, run, args))
        pump_until(app, lambda: False, 0.3)
    summary("streaming", streamed)
    summary("reattach", reattached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
