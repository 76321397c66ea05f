"""Live training curves: loss (raw + smoothed, with save / sample / resume markers), learning rate, gradient norm.

The plots read a `RunSeries` (trainer_core.train.runs) and redraw only from `refresh(plot)`, which the Train tab
calls from a timer for one plot per tick (each plot ~6 times a second) and which returns at once when nothing
changed; each plot also moves its own x range, so the three repaints land in three event-loop turns. Curves use
pyqtgraph's clip-to-view and peak downsampling, so 100k points stay smooth; `setData` gets numpy views (no copies
in Python). Markers are one item (train_markers.MarkerLines), not one InfiniteLine each.

What a redraw costs was measured (benchmarks/bench_train_tab_stall.py, 100k points, 860 px wide): repainting the
three plots took ~30 ms, two thirds of it replaying the axes' pictures (tick labels + grid, which span the whole
plot, so every curve change repaints them) and drawing ~5 downsampled points per pixel. Axes are therefore cached
as pixmaps (redrawn only when their range changes) and curves keep one min/max pair per pixel column, which is
the same envelope on screen: ~5 ms per redraw.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGraphicsItem, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from trainer_core.train.runs import RunSeries

from .train_markers import MarkerLines

RAW_COLOUR = (224, 163, 58, 90)
EMA_COLOUR = "#f2c15e"
LR_COLOUR = "#7fb2e5"
LR_TE_COLOUR = "#b48ee0"
GRAD_COLOUR = "#9cc97a"
MARKER_COLOURS = {"save": "#d9822b", "sample": "#5fa8d3", "resume": "#e36f6f"}
DEFAULT_SMOOTHING = 0.9
PLOTS = ("loss", "lr", "grad")
# points per pixel column kept by the auto downsampling: "peak" keeps each bin's min and max, so one bin per pixel
# draws the exact envelope (pyqtgraph's default of 5 draws five times the segments for no visible difference)
DOWNSAMPLE_FACTOR = 1.0


def _style_plot(plot, title: str, y_label: str) -> None:
    plot.setTitle(title, color="#a9a59c", size="9pt")
    plot.showGrid(x=True, y=True, alpha=0.15)
    plot.setLabel("left", y_label)
    plot.setMenuEnabled(False)
    for side in ("bottom", "left"):
        axis = plot.getAxis(side)
        axis.setTextPen("#a9a59c")
        axis.setPen("#41454d")
        # a pixmap cache: a curve update repaints the plot area, and with it the axis (its grid lines cover the
        # area); replaying the axis' text and lines each time was the largest part of a redraw
        axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
    item = plot.getPlotItem()
    item.setDownsampling(auto=True, mode="peak")
    item.setClipToView(True)


class TrainPlots(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self._pg = pg
        self.series: RunSeries | None = None
        self._drawn = dict.fromkeys(PLOTS, -2)  # series version each plot shows (-2: none yet)
        self._drawn_markers: list[tuple[int, str]] = []
        self.smoothing = DEFAULT_SMOOTHING
        self._x_right: dict[str, int] = {}  # right end of each plot's x range

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
        self.marker_lines = MarkerLines(MARKER_COLOURS)
        self.loss_plot.addItem(self.marker_lines, ignoreBounds=True)
        lay.addWidget(self.loss_plot, 3)

        lower = QHBoxLayout()
        self.lr_plot = pg.PlotWidget(background="#25282d")
        _style_plot(self.lr_plot, "Learning rate", "lr")
        # two curves (UNet and text encoders, whose rates differ by the card's 4x): name them on the plot
        self.lr_plot.addLegend(offset=(-6, 6), labelTextColor="#c8c4bc", labelTextSize="8pt")
        self.lr_curve = self.lr_plot.plot(pen=pg.mkPen(LR_COLOUR, width=2), name="UNet")
        self.lr_te_curve = self.lr_plot.plot(pen=pg.mkPen(LR_TE_COLOUR, width=1), name="TE")
        self.grad_plot = pg.PlotWidget(background="#25282d")
        _style_plot(self.grad_plot, "Gradient norm", "norm")
        self.grad_curve = self.grad_plot.plot(pen=pg.mkPen(GRAD_COLOUR, width=1))
        self._plot_widgets = {"loss": self.loss_plot, "lr": self.lr_plot, "grad": self.grad_plot}
        self._curves = (self.raw_curve, self.ema_curve, self.lr_curve, self.lr_te_curve, self.grad_curve)
        for curve in self._curves:
            curve.opts["autoDownsampleFactor"] = DOWNSAMPLE_FACTOR  # no setter in pyqtgraph; read per redraw
        for p in (self.loss_plot, self.lr_plot, self.grad_plot):
            p.enableAutoRange(x=False, y=True)
            p.setAutoVisible(y=True)  # y fits the points inside the visible x range
        for p in (self.lr_plot, self.grad_plot):
            p.setMinimumHeight(130)
            lower.addWidget(p)
        lay.addLayout(lower, 2)

    # ---- data ---------------------------------------------------------------------------------------------
    @property
    def drawn_version(self) -> int:
        """The series version all three plots show (-1 while one of them is behind)."""
        versions = set(self._drawn.values())
        return versions.pop() if len(versions) == 1 else -1

    def stale_plots(self) -> list[str]:
        """Names (PLOTS) of the plots that do not show the series' current version yet."""
        version = -1 if self.series is None else self.series.version
        return [name for name in PLOTS if self._drawn[name] != version]

    def set_series(self, series: RunSeries | None) -> None:
        self.series = series
        self._drawn = dict.fromkeys(PLOTS, -2)
        self._x_right = {}
        self.refresh()

    def _on_smoothing(self, value: int) -> None:
        self.smoothing = value / 100
        self.smoothing_value.setText(f"{self.smoothing:.2f}")
        self._drawn["loss"] = -2
        self.refresh("loss")

    def refresh(self, plot: str | None = None) -> bool:
        """Redraw the plots (or just `plot`, one of PLOTS) that are behind the series; True if one was redrawn.

        The Train tab redraws one plot per timer tick: a plot's repaint is a paint event of its own, so spreading
        the three over three event-loop turns keeps each turn short (see the module docstring)."""
        s = self.series
        names = PLOTS if plot is None else (plot,)
        version = -1 if s is None else s.version
        stale = [name for name in names if self._drawn[name] != version]
        if not stale:
            return False
        x = s.column("step") if s is not None else np.zeros(0)
        for name in stale:
            self._drawn[name] = version
            if s is not None:
                self._step_x_range(name, int(x[-1]) if len(x) else 0, s.total_steps)
            if name == "loss":
                self.raw_curve.setData(x, s.column("loss") if s else x, connect="finite")
                self.ema_curve.setData(x, s.ema(self.smoothing) if s else x, connect="finite")
                self._set_markers([(m.step, m.kind) for m in s.markers] if s else [])
            elif name == "lr":
                self.lr_curve.setData(x, s.column("lr_unet") if s else x, connect="finite")
                self.lr_te_curve.setData(x, s.column("lr_te") if s else x, connect="finite")
            else:
                self.grad_curve.setData(x, s.column("grad_norm") if s else x, connect="finite")
        return True

    def _step_x_range(self, name: str, last: int, total: int | None) -> None:
        """Grow a plot's x range in steps of ~1/8 of the run, not with every point: a changing range re-lays out
        the axes, which costs more than drawing the curves. Each plot moves in its own redraw, so the three
        re-layouts land in three event-loop turns."""
        span = max(8, (total or max(last, 8)) // 8)
        right = (last // span + 1) * span
        if total and last <= total:
            right = min(right, total)
        if right != self._x_right.get(name):
            self._x_right[name] = right
            self._plot_widgets[name].setXRange(0, right, padding=0.01)

    def _set_markers(self, markers: list[tuple[int, str]]) -> None:
        if markers != self._drawn_markers:
            self.marker_lines.set_markers(markers)
            self._drawn_markers = markers

    # ---- for tests and the screenshot script --------------------------------------------------------------
    def loss_points(self) -> tuple[list[float], list[float]]:
        """The raw loss curve's (x, y) as drawn (before view clipping and downsampling)."""
        x, y = self.raw_curve.getOriginalDataset()
        return ([] if x is None else [float(v) for v in x]), ([] if y is None else [float(v) for v in y])
