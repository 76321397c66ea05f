"""Live training curves: loss (raw + smoothed, with save / sample / resume markers), learning rate, gradient norm.

The plots read a `RunSeries` (trainer_core.train.runs) and redraw only from `refresh()`, which the Train tab calls
from a timer (at most ~8 Hz) and which returns at once when nothing changed. Curves use pyqtgraph's
clip-to-view and peak downsampling, so 100k points stay smooth; `setData` gets numpy views (no copies in Python).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from trainer_core.train.runs import RunSeries

RAW_COLOUR = (224, 163, 58, 90)
EMA_COLOUR = "#f2c15e"
LR_COLOUR = "#7fb2e5"
LR_TE_COLOUR = "#b48ee0"
GRAD_COLOUR = "#9cc97a"
MARKER_COLOURS = {"save": "#d9822b", "sample": "#5fa8d3", "resume": "#e36f6f"}
MAX_MARKERS = 120  # the newest ones; hundreds of infinite lines would cost more than the curves
DEFAULT_SMOOTHING = 0.9


def _style_plot(plot, title: str, y_label: str) -> None:
    plot.setTitle(title, color="#a9a59c", size="9pt")
    plot.showGrid(x=True, y=True, alpha=0.15)
    plot.setLabel("left", y_label)
    plot.setMenuEnabled(False)
    for side in ("bottom", "left"):
        plot.getAxis(side).setTextPen("#a9a59c")
        plot.getAxis(side).setPen("#41454d")
    item = plot.getPlotItem()
    item.setDownsampling(auto=True, mode="peak")
    item.setClipToView(True)


class TrainPlots(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self._pg = pg
        self.series: RunSeries | None = None
        self._drawn_version = -1
        self._drawn_markers: list[tuple[int, str]] = []
        self._marker_items: list = []
        self.smoothing = DEFAULT_SMOOTHING
        self._x_right = -1

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        top = QHBoxLayout()
        legend = QLabel(
            "<span style='color:#e0a33a'>━</span> raw loss &nbsp; <span style='color:#f2c15e'>━</span> smoothed"
            " &nbsp; <span style='color:#d9822b'>┊</span> save &nbsp; <span style='color:#5fa8d3'>┊</span>"
            " sample &nbsp; <span style='color:#e36f6f'>┊</span> resume"
        )
        legend.setObjectName("muted")
        top.addWidget(legend)
        top.addStretch(1)
        top.addWidget(QLabel("Smoothing"))
        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setRange(0, 99)
        self.smoothing_slider.setValue(int(DEFAULT_SMOOTHING * 100))
        self.smoothing_slider.setFixedWidth(140)
        self.smoothing_slider.setToolTip(
            "Exponential moving average of the loss (0 = raw, 0.99 = very smooth)"
        )
        self.smoothing_value = QLabel(f"{DEFAULT_SMOOTHING:.2f}")
        self.smoothing_value.setMinimumWidth(32)
        self.smoothing_slider.valueChanged.connect(self._on_smoothing)
        top.addWidget(self.smoothing_slider)
        top.addWidget(self.smoothing_value)
        lay.addLayout(top)

        self.loss_plot = pg.PlotWidget(background="#25282d")
        _style_plot(self.loss_plot, "Loss", "loss")
        self.loss_plot.setMinimumHeight(200)
        self.raw_curve = self.loss_plot.plot(pen=pg.mkPen(RAW_COLOUR, width=1))
        self.ema_curve = self.loss_plot.plot(pen=pg.mkPen(EMA_COLOUR, width=2))
        lay.addWidget(self.loss_plot, 3)

        lower = QHBoxLayout()
        self.lr_plot = pg.PlotWidget(background="#25282d")
        _style_plot(self.lr_plot, "Learning rate", "lr")
        self.lr_curve = self.lr_plot.plot(pen=pg.mkPen(LR_COLOUR, width=2), name="UNet")
        self.lr_te_curve = self.lr_plot.plot(pen=pg.mkPen(LR_TE_COLOUR, width=1), name="TE")
        self.grad_plot = pg.PlotWidget(background="#25282d")
        _style_plot(self.grad_plot, "Gradient norm", "norm")
        self.grad_curve = self.grad_plot.plot(pen=pg.mkPen(GRAD_COLOUR, width=1))
        for p in (self.loss_plot, self.lr_plot, self.grad_plot):
            p.enableAutoRange(x=False, y=True)
            p.setAutoVisible(y=True)  # y fits the points inside the visible x range
        for p in (self.lr_plot, self.grad_plot):
            p.setMinimumHeight(130)
            lower.addWidget(p)
        lay.addLayout(lower, 2)

    # ---- data ---------------------------------------------------------------------------------------------
    def set_series(self, series: RunSeries | None) -> None:
        self.series = series
        self._drawn_version = -1
        self._x_right = -1
        self.refresh()

    def _on_smoothing(self, value: int) -> None:
        self.smoothing = value / 100
        self.smoothing_value.setText(f"{self.smoothing:.2f}")
        self._drawn_version = -1
        self.refresh()

    def refresh(self) -> bool:
        """Redraw if the series changed since the last redraw; True if it did."""
        s = self.series
        if s is None:
            for curve in (self.raw_curve, self.ema_curve, self.lr_curve, self.lr_te_curve, self.grad_curve):
                curve.setData([], [])
            self._set_markers([])
            self._drawn_version = -1
            return True
        if s.version == self._drawn_version:
            return False
        self._drawn_version = s.version
        x = s.column("step")
        self._step_x_range(int(x[-1]) if len(x) else 0, s.total_steps)
        self.raw_curve.setData(x, s.column("loss"), connect="finite")
        self.ema_curve.setData(x, s.ema(self.smoothing), connect="finite")
        self.lr_curve.setData(x, s.column("lr_unet"), connect="finite")
        self.lr_te_curve.setData(x, s.column("lr_te"), connect="finite")
        self.grad_curve.setData(x, s.column("grad_norm"), connect="finite")
        # the newest markers, in blocks of MAX_MARKERS // 2 so the set changes rarely (lines are added, not rebuilt)
        first = max(0, (len(s.markers) - MAX_MARKERS // 2) // (MAX_MARKERS // 2) * (MAX_MARKERS // 2))
        self._set_markers([(m.step, m.kind) for m in s.markers[first:]])
        return True

    def _step_x_range(self, last: int, total: int | None) -> None:
        """Grow the shared x range in steps of ~1/8 of the run, not with every point: a changing range re-lays out
        every axis, which costs more than drawing the curves."""
        span = max(8, (total or max(last, 8)) // 8)
        right = (last // span + 1) * span
        if total and last <= total:
            right = min(right, total)
        if right != self._x_right:
            self._x_right = right
            for plot in (self.loss_plot, self.lr_plot, self.grad_plot):
                plot.setXRange(0, right, padding=0.01)

    def _set_markers(self, markers: list[tuple[int, str]]) -> None:
        """Add only the new marker lines; rebuild when old ones went away (a resume cut the curve back)."""
        if markers == self._drawn_markers:
            return
        pg = self._pg
        old = self._drawn_markers
        if markers[: len(old)] != old or len(markers) > MAX_MARKERS:
            for item in self._marker_items:
                self.loss_plot.removeItem(item)
            self._marker_items, old = [], []
        for step, kind in markers[len(old) :]:
            line = pg.InfiniteLine(pos=step, angle=90,
                                   pen=pg.mkPen(MARKER_COLOURS.get(kind, "#888888"), width=1,
                                                style=Qt.PenStyle.DashLine))  # fmt: skip
            line.setToolTip(f"{kind} at step {step}")
            self.loss_plot.addItem(line, ignoreBounds=True)
            self._marker_items.append(line)
        self._drawn_markers = list(markers)

    # ---- for tests and the screenshot script --------------------------------------------------------------
    def loss_points(self) -> tuple[list[float], list[float]]:
        """The raw loss curve's (x, y) as drawn (before view clipping and downsampling)."""
        x, y = self.raw_curve.getOriginalDataset()
        return ([] if x is None else [float(v) for v in x]), ([] if y is None else [float(v) for v in y])
