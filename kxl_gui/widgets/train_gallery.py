"""Sample images made during training, one row per step (newest first), thumbnails decoded off the GUI thread.

A 1024² PNG takes tens of milliseconds to decode, so the gallery never decodes on the GUI thread: the app's one
`ThumbnailLoader` (thumbnail_loader.py) decodes and scales each sample, keyed by its path, in a worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from .thumbnail_loader import ThumbnailLoader

THUMB = 168


class _Thumb(QLabel):
    def __init__(self, sample: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = str(sample.get("path", ""))
        self.setFixedSize(THUMB + 6, THUMB + 6)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setObjectName("sampleThumb")
        self.setText("…")
        prompt = str(sample.get("prompt", ""))
        self.setToolTip(f"{prompt}\n{self.path}\n(double-click to open)")

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802 - Qt override
        QDesktopServices.openUrl(QUrl.fromLocalFile(self.path))
        super().mouseDoubleClickEvent(event)


class SampleGallery(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loader = ThumbnailLoader(size=THUMB, workers=1, parent=self)
        self.loader.set_source(Path)  # a sample's key is its path
        self.loader.ready.connect(self._on_loaded)
        self._thumbs: dict[str, _Thumb] = {}
        self._rows: dict[int, QWidget] = {}
        self._count = 0
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.empty = QLabel(
            "No samples yet. Set training.sample_every and sample_prompts, or press Sample now."
        )
        self.empty.setObjectName("muted")
        self.empty.setWordWrap(True)
        outer.addWidget(self.empty)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        body = QWidget()
        self.rows_layout = QVBoxLayout(body)
        self.rows_layout.setContentsMargins(0, 0, 0, 0)
        self.rows_layout.addStretch(1)
        self.scroll.setWidget(body)
        outer.addWidget(self.scroll, 1)

    def set_empty_hint(self, sample_every: int, has_prompts: bool) -> None:
        """What the empty gallery says, from the run's own settings (not a generic instruction)."""
        if sample_every > 0 and has_prompts:
            text = f"No samples yet: the first is drawn at step {sample_every:,}, or press Sample now."
        elif has_prompts:
            text = "No samples yet: training.sample_every is 0, so samples come only from Sample now."
        else:
            text = "No samples: this run has no training.sample_prompts to draw."
        self.empty.setText(text)

    def clear(self) -> None:
        for row in self._rows.values():
            row.deleteLater()
        self._rows.clear()
        self._thumbs.clear()
        self.loader.set_source(Path)  # a resumed run may write new pictures under the same names
        self._count = 0
        self.empty.show()

    def set_samples(self, samples: list[dict[str, Any]]) -> None:
        """Show exactly these sample events (adds new ones; rebuilds when some disappeared after a resume)."""
        paths = {str(s.get("path", "")) for s in samples}
        if any(p not in paths for p in self._thumbs):
            self.clear()
        for s in samples:
            if str(s.get("path", "")) not in self._thumbs:
                self._add(s)
        self.empty.setVisible(not self._thumbs)

    def _add(self, sample: dict[str, Any]) -> None:
        step = int(sample.get("step", 0))
        row = self._rows.get(step)
        if row is None:
            row = QWidget()
            lay = QVBoxLayout(row)
            lay.setContentsMargins(0, 4, 0, 4)
            title = QLabel(f"Step {step:,}")
            title.setObjectName("cardTitle")
            lay.addWidget(title)
            strip = QHBoxLayout()
            strip.setSpacing(6)
            strip.addStretch(1)
            lay.addLayout(strip)
            row.strip = strip  # type: ignore[attr-defined]
            index = sum(1 for s in self._rows if s > step)  # rows are kept newest first
            self.rows_layout.insertWidget(index, row)
            self._rows[step] = row
        thumb = _Thumb(sample)
        strip: QHBoxLayout = row.strip  # type: ignore[attr-defined]
        strip.insertWidget(strip.count() - 1, thumb)
        self._thumbs[thumb.path] = thumb
        self._count += 1
        if self.loader.pixmap(thumb.path) is not None:
            thumb.setPixmap(self.loader.pixmap(thumb.path))
        elif Path(thumb.path).is_file():
            self.loader.request(thumb.path)
        else:
            thumb.setText("missing")

    def _on_loaded(self, path: object) -> None:
        thumb = self._thumbs.get(str(path))
        pixmap = self.loader.pixmap(path)
        if thumb is None:
            return
        if pixmap is None:
            thumb.setText("unreadable")
        else:
            thumb.setPixmap(pixmap)

    def steps(self) -> list[int]:
        return sorted(self._rows, reverse=True)

    def sample_count(self) -> int:
        return len(self._thumbs)
