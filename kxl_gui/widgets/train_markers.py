"""Save / sample / resume markers on the loss plot: dashed vertical lines across the visible y range, in ONE item.

One pyqtgraph InfiniteLine per marker cost ~0.6 ms to create and add (scene bookkeeping, signal connections) and
every line reacted to every view change on its own; re-laying 60-120 of them took 40-60 ms of the GUI thread.
This item keeps the markers' steps in arrays and draws the ones in view with one `drawLines` per kind, so a new
marker costs nothing but a repaint and a long run can keep all of its markers.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QLineF, QRectF, Qt

HOVER_PX = 4  # how close (in pixels) the mouse must be to a line for its tooltip
DEFAULT_COLOUR = "#888888"


class MarkerLines(pg.GraphicsObject):
    def __init__(self, colours: dict[str, str]) -> None:
        super().__init__()
        self._colours = colours
        self._pens: dict[str, object] = {}
        self._markers: list[tuple[int, str]] = []
        self._steps: dict[str, np.ndarray] = {}
        self._rect: QRectF | None = None

    def set_markers(self, markers: list[tuple[int, str]]) -> None:
        """(step, kind) pairs to show, replacing the previous ones."""
        self._markers = list(markers)
        by_kind: dict[str, list[int]] = {}
        for step, kind in self._markers:
            by_kind.setdefault(kind, []).append(step)
        self._steps = {kind: np.asarray(steps, dtype=np.float64) for kind, steps in by_kind.items()}
        self.update()

    def markers(self) -> list[tuple[int, str]]:
        return list(self._markers)

    def _pen(self, kind: str):
        if kind not in self._pens:
            self._pens[kind] = pg.mkPen(self._colours.get(kind, DEFAULT_COLOUR), width=1,
                                        style=Qt.PenStyle.DashLine)  # fmt: skip
        return self._pens[kind]

    # ---- QGraphicsItem: the item spans the view, so it follows every range change ------------------------------
    def viewTransformChanged(self) -> None:  # noqa: N802 - pyqtgraph hook
        super().viewTransformChanged()
        self.prepareGeometryChange()
        self._rect = None

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt override
        if self._rect is None:
            view = self.viewRect()
            self._rect = QRectF() if view is None else QRectF(view)
        return self._rect

    def paint(self, painter, *args) -> None:
        view = self.viewRect()
        if view is None:
            return
        top, bottom, left, right = view.top(), view.bottom(), view.left(), view.right()
        for kind, steps in self._steps.items():
            shown = steps[(steps >= left) & (steps <= right)]
            if len(shown):
                painter.setPen(self._pen(kind))
                painter.drawLines([QLineF(x, top, x, bottom) for x in shown.tolist()])

    def hoverEvent(self, ev) -> None:  # noqa: N802 - pyqtgraph hook
        """Tooltip naming the markers under the mouse ("save at step 1,000")."""
        if ev.isExit():
            self.setToolTip("")
            return
        x, px = ev.pos().x(), self.pixelWidth() or 0.0
        near = [f"{kind} at step {step:,}" for step, kind in self._markers if abs(step - x) <= HOVER_PX * px]
        self.setToolTip("\n".join(near))
