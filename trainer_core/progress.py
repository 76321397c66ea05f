"""Progress reporting and cooperative cancellation shared by every long job.

A job takes a `Progress` (or None) and calls `progress.update(done, total, message)`; it calls
`progress.check_cancelled()` at safe points. The CLI renders a text bar from the callback, the GUI forwards it
through a Qt signal, tests collect it in a list. No threads or Qt here: the caller decides where the job runs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Cancelled


@dataclass
class ProgressEvent:
    done: float
    total: float | None
    message: str
    rate: float | None  # units per second since the job (or stage) started
    eta_s: float | None


class CancelToken:
    """Thread-safe flag. `cancel()` from any thread; the job sees it at its next `check()`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass
class Progress:
    """Callback adapter with rate/ETA bookkeeping.

    `callback` receives `ProgressEvent`s at most every `min_interval_s` seconds (the last update of a stage is
    always delivered), so a job may call `update` per item without flooding a GUI.
    """

    callback: Callable[[ProgressEvent], None] | None = None
    cancel_token: CancelToken | None = None
    min_interval_s: float = 0.1
    _stage_start: float = field(default_factory=time.monotonic)
    _last_emit: float = 0.0
    _stage: str = ""
    _last_final: tuple | None = None

    def stage(self, message: str) -> None:
        """Start a new stage: resets the rate clock and emits an indeterminate event."""
        self._stage = message
        self._stage_start = time.monotonic()
        self._last_emit = 0.0
        self._last_final = None
        self._emit(ProgressEvent(0, None, message, None, None))

    def update(self, done: float, total: float | None = None, message: str | None = None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last_emit < self.min_interval_s:
            return
        if final:
            if self._last_final == (done, total):
                return  # a job reporting its end twice draws one finished bar, not two
            self._last_final = (done, total)
        self._last_emit = now
        elapsed = max(now - self._stage_start, 1e-9)
        rate = done / elapsed if done else None
        eta = (total - done) / rate if (rate and total is not None) else None
        self._emit(ProgressEvent(done, total, message or self._stage, rate, eta))

    def check_cancelled(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.check()

    def _emit(self, event: ProgressEvent) -> None:
        if self.callback is not None:
            self.callback(event)


def ensure_progress(progress: Progress | None) -> Progress:
    return progress if progress is not None else Progress()


def text_progress(stream=None, unit: str = "it") -> Progress:
    """A Progress that prints each stage on its own line and redraws one bar line for its updates (CLI)."""
    out = stream or sys.stderr
    state = {"bar_open": False}
    interactive = hasattr(out, "isatty") and out.isatty()

    def close_bar() -> None:
        if state["bar_open"]:
            out.write("\n")
            state["bar_open"] = False

    def draw(ev: ProgressEvent) -> None:
        if ev.total is None and ev.done == 0:  # a new stage
            close_bar()
            out.write(f"{ev.message}\n")
            out.flush()
            return
        if ev.total:
            frac = min(1.0, ev.done / ev.total)
            line = f"  [{'#' * int(frac * 30):<30}] {frac * 100:5.1f}%  " + (
                f"{format_bytes(ev.done)} of {format_bytes(ev.total)}"
                if unit == "B"
                else f"{ev.done:,.0f}/{ev.total:,.0f} {unit}"
            )
        else:
            line = f"  {format_bytes(ev.done)}" if unit == "B" else f"  {ev.done:,.0f} {unit}"
        if ev.rate:
            line += f"  {format_bytes(ev.rate)}/s" if unit == "B" else f"  {ev.rate:,.1f} {unit}/s"
        if ev.eta_s is not None and ev.total and ev.done < ev.total:
            line += f"  ETA {format_duration(ev.eta_s)}"
        finished = bool(ev.total) and ev.done >= ev.total
        if interactive:
            out.write("\r" + line.ljust(90))
            state["bar_open"] = not finished
            if finished:
                out.write("\n")
        elif finished:  # logs and CI: one line per finished stage, no carriage-return noise
            out.write(line + "\n")
        out.flush()

    return Progress(callback=draw, min_interval_s=0.2)


def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; binary units, like file managers on Linux."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
