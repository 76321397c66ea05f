"""The Log sub-tab: the watched run's own output, followed as it grows.

Source: `<run>/logs/launcher.log` (every rank's stdout and stderr, written when the GUI launched the run), else
`<run>/logs/trainer.log` (rank 0's log, written for a run started anywhere); the view switches to the launcher log
when one appears (a CLI run resumed from the GUI).

Reading never holds the GUI thread for long, whatever the log's size: the first look reads only the last
`INITIAL_TAIL_BYTES` of the file, each tick then reads only the bytes appended since (at most `READ_SLICE_BYTES`
per tick), a backlog bigger than `INITIAL_TAIL_BYTES` (the view was hidden while a chatty run went on) is skipped
with a note, and the view keeps its last `MAX_LINES` lines. Ticks run only while the view is on screen.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QPlainTextEdit, QWidget

from trainer_core.train.runs import LAUNCHER_LOG, TRAINER_LOG

TICK_MS = 300
INITIAL_TAIL_BYTES = 256 * 1024
READ_SLICE_BYTES = 256 * 1024
MAX_LINES = 5000


def terminal_line(raw: str) -> str:
    """What a terminal shows for a line that redraws itself with carriage returns (progress bars)."""
    raw = raw.rstrip("\r")
    return raw.rsplit("\r", 1)[-1]


def run_log_path(run_dir: Path) -> Path:
    """The log to show for a run: the launcher's if there is one, else the trainer's (which may not exist yet)."""
    launcher = run_dir / LAUNCHER_LOG
    return launcher if launcher.is_file() else run_dir / TRAINER_LOG


class LogFollower:
    """Incremental reader of a growing text file: new complete lines since the last call, by byte offset."""

    def __init__(self, path: Path, initial_tail_bytes: int = INITIAL_TAIL_BYTES) -> None:
        self.path = path
        self.initial_tail_bytes = initial_tail_bytes
        self.offset: int | None = None  # None: not opened yet
        self.bytes_read = 0
        self.restarted = False  # the file shrank or was replaced since the last read
        self._inode: int | None = None
        self._partial = b""

    def read(self, max_bytes: int = READ_SLICE_BYTES) -> list[str]:
        """New complete lines; a jump over unread output (the start of a big file, or a backlog too long to be
        worth showing) appears as one "… N KiB skipped" line."""
        self.restarted = False
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if self.offset is not None and (st.st_ino != self._inode or st.st_size < self.offset):
            self.offset, self._partial, self.restarted = None, b"", True
        self._inode = st.st_ino
        out: list[str] = []
        start = self.offset if self.offset is not None else 0
        if st.st_size - start > self.initial_tail_bytes:
            skipped = st.st_size - self.initial_tail_bytes - start
            start = st.st_size - self.initial_tail_bytes
            out.append(f"… {skipped / 1024:,.0f} KiB of earlier output skipped (full log: {self.path})")
            self._partial = b""
            cut_first_line = True
        else:
            cut_first_line = False
        if st.st_size <= start:
            self.offset = start
            return out
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read(min(max_bytes, st.st_size - start))
        self.offset = start + len(data)
        self.bytes_read += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if cut_first_line and lines:
            lines = lines[1:]  # begins mid-line
        out += [terminal_line(line.decode("utf-8", errors="replace")) for line in lines]
        return out


class RunLogView(QPlainTextEdit):
    """Read-only view of a run's log; `follow(run_dir)` switches runs, `follow(None)` shows nothing."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("logTail")
        self.setReadOnly(True)
        self.setMaximumBlockCount(MAX_LINES)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.setPlaceholderText(
            "The watched run's output (logs/launcher.log or logs/trainer.log) shows here."
        )
        self.run_dir: Path | None = None
        self.follower: LogFollower | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.poll)

    def follow(self, run_dir: Path | None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.follower = None
        self.clear()
        if self.run_dir is None:
            self.timer.stop()
            return
        self.timer.start()
        if self.isVisible():
            self.poll()

    def poll(self) -> None:
        """Append what the log gained since the last call (only while on screen: hidden, it waits)."""
        if self.run_dir is None or not self.isVisible():
            return
        path = run_log_path(self.run_dir)
        if self.follower is None or self.follower.path != path:
            if self.follower is not None:
                self.clear()  # the launcher log appeared: it holds everything the trainer log has, and more
            self.follower = LogFollower(path)
        lines = self.follower.read()
        if self.follower.restarted:
            self.clear()
        if lines:
            self.appendPlainText("\n".join(lines))  # keeps the view at the bottom if it was there

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.poll()  # catch up at once when the user opens the Log tab
