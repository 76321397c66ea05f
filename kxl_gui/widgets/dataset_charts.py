"""Bar chart of label -> count for the Dataset wizard's summary (rating / quality / year distributions).

pyqtgraph is not imported at app start. `preload()` imports it in a worker (the export job calls it), so the
first summary does not stop the GUI thread for the ~0.3 s the import takes; a chart imports it itself otherwise.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

BAR_COLOUR = "#e0a33a"
# Tick labels must fit under a bar, or pyqtgraph silently drops them.
SHORT_LABELS = {"masterpiece": "master", "questionable": "quest.", "sensitive": "sensit."}


def preload() -> None:
    """Import pyqtgraph off the GUI thread, with the cyclic collector paused (see kxl_gui.jobs.quiet_gc)."""
    from ..jobs import quiet_gc

    with quiet_gc():
        import pyqtgraph  # noqa: F401


class CountChart(QWidget):
    def __init__(self, title: str, counts: dict[str, int], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self.counts = dict(counts)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        label = QLabel(title)
        label.setObjectName("muted")
        lay.addWidget(label)
        self.plot = pg.PlotWidget(background="#25282d")
        self.plot.setMinimumHeight(220)
        self.plot.setMouseEnabled(False, False)
        self.plot.setToolTip(", ".join(f"{k}: {v:,}" for k, v in self.counts.items()))
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        names = list(self.counts)
        xs = list(range(len(names)))
        heights = [self.counts[n] for n in names]
        if names:
            self.plot.addItem(pg.BarGraphItem(x=xs, height=heights, width=0.7, brush=BAR_COLOUR, pen=None))
            for x, h in zip(xs, heights, strict=True):
                text = pg.TextItem(f"{h:,}", color="#e6e2da", anchor=(0.5, 1.0))
                text.setPos(x, h)
                self.plot.addItem(text)
            self.plot.setYRange(0, max(heights) * 1.18)
        axis = self.plot.getAxis("bottom")
        # long labels ("normal quality") are shortened to their first word so they fit under narrow bars
        axis.setTicks([[(x, SHORT_LABELS.get(n, n.split(" ")[0])) for x, n in zip(xs, names, strict=True)]])
        self.plot.setXRange(-0.7, max(len(names), 1) - 0.3, padding=0)
        for side in ("bottom", "left"):
            self.plot.getAxis(side).setTextPen("#a9a59c")
            self.plot.getAxis(side).setPen("#41454d")
        lay.addWidget(self.plot, 1)
