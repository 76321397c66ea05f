"""Weight controls of the Merge tab: a slider paired with a spin box, and the 20-slider SDXL block-weight panel.

The slider covers the usual range (0..1 for a weight) while the spin box accepts more (negative or > 1 weights
are legitimate in add-difference style merges), so the spin box is the source of truth and the slider clamps.
Each side writes the other only when the other does not already show its value, so the pair settles without a
guard flag, and a slider held at its end by a spin value beyond it never drags that value back.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from trainer_core.merge.blocks import BLOCKS

from ..state.merge_form import BLOCK_SHAPES

SLIDER_STEPS = 1000


class WeightSlider(QWidget):
    """A weight: slider over [minimum, maximum] + spin box over [spin_min, spin_max]. Emits `value_changed` on
    every change (the user's and `set_value`'s: listeners compare with their form and ignore an echo)."""

    value_changed = Signal(float)

    def __init__(
        self,
        value: float = 0.5,
        minimum: float = 0.0,
        maximum: float = 1.0,
        spin_min: float = -2.0,
        spin_max: float = 2.0,
        decimals: int = 3,
        vertical: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._min, self._max = minimum, maximum
        orientation = Qt.Orientation.Vertical if vertical else Qt.Orientation.Horizontal
        self.slider = QSlider(orientation)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setPageStep(SLIDER_STEPS // 20)
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(decimals)
        self.spin.setRange(spin_min, spin_max)
        self.spin.setSingleStep(0.05)
        self.spin.setKeyboardTracking(False)
        self.spin.setAlignment(Qt.AlignmentFlag.AlignRight)
        if vertical:
            # 20 of these share one row: a narrow spin box keeps each column ~50 px wide.
            self.spin.setObjectName("blockSpin")
            self.spin.setDecimals(2)
            self.spin.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            self.spin.setFixedWidth(50)
            self.slider.setMinimumHeight(120)
            lay = QVBoxLayout(self)
            lay.addWidget(self.slider, 1, Qt.AlignmentFlag.AlignHCenter)
            lay.addWidget(self.spin, 0, Qt.AlignmentFlag.AlignHCenter)
        else:
            self.spin.setFixedWidth(70)
            self.slider.setMinimumWidth(140)
            lay = QHBoxLayout(self)
            lay.addWidget(self.slider, 1)
            lay.addWidget(self.spin)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        self.slider.valueChanged.connect(self._from_slider)
        self.spin.valueChanged.connect(self._from_spin)
        self.spin.setValue(value)
        self.slider.setValue(self._to_steps(self.spin.value()))  # also when `value` was the spin's default

    def value(self) -> float:
        return round(self.spin.value(), self.spin.decimals())

    def set_value(self, value: float) -> None:
        self.spin.setValue(value)

    def _to_steps(self, value: float) -> int:
        frac = (value - self._min) / (self._max - self._min)
        return round(min(1.0, max(0.0, frac)) * SLIDER_STEPS)

    def _from_slider(self, steps: int) -> None:
        if steps != self._to_steps(self.spin.value()):  # the user moved the slider
            self.spin.setValue(self._min + (self._max - self._min) * steps / SLIDER_STEPS)

    def _from_spin(self, value: float) -> None:
        steps = self._to_steps(value)
        if self.slider.value() != steps:
            self.slider.setValue(steps)
        self.value_changed.emit(self.value())


class BlockWeightsPanel(QWidget):
    """20 vertical sliders, BASE, IN00–IN08, MID, OUT00–OUT08, each the weight that block gets."""

    changed = Signal()  # a slider moved (the user's change or set_values)
    shape_requested = Signal(str)  # Apply: the shape name (the form computes the weights, BLOCK_SHAPES)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sliders: dict[str, WeightSlider] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(8)
        top = QHBoxLayout()
        self.caption = QLabel("Weight of B per block (A gets 1 − B)")
        self.caption.setObjectName("muted")
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(BLOCK_SHAPES))
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Set every block from the chosen shape and the global weight")
        top.addWidget(self.caption, 1)
        top.addWidget(QLabel("Shape"))
        top.addWidget(self.preset_combo)
        top.addWidget(self.apply_button)
        outer.addLayout(top)

        grid = QGridLayout()
        grid.setHorizontalSpacing(2)
        grid.setVerticalSpacing(2)
        col = 0
        for name in BLOCKS:
            if name in ("IN00", "MID", "OUT00"):
                grid.addWidget(_separator(), 0, col, 2, 1)
                col += 1
            slider = WeightSlider(0.5, vertical=True)
            slider.setToolTip(f"{name}: weight of B in this block")
            slider.value_changed.connect(lambda _v: self.changed.emit())
            label = QLabel(name)
            label.setObjectName("muted")
            label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            grid.addWidget(slider, 0, col, Qt.AlignmentFlag.AlignHCenter)
            grid.addWidget(label, 1, col, Qt.AlignmentFlag.AlignHCenter)
            self.sliders[name] = slider
            col += 1
        outer.addLayout(grid)
        self.apply_button.clicked.connect(self.request_shape)

    def set_caption(self, text: str) -> None:
        self.caption.setText(text)

    def values(self) -> dict[str, float]:
        return {name: s.value() for name, s in self.sliders.items()}

    def set_values(self, values: dict[str, float]) -> None:
        for name, v in values.items():
            if self.sliders[name].value() != v:
                self.sliders[name].set_value(v)

    def request_shape(self) -> None:
        """The Apply button's handler (no parameters: `clicked` would pass its `checked` flag)."""
        self.shape_requested.emit(self.preset_combo.currentText())


def _separator() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.VLine)
    line.setObjectName("blockSeparator")  # coloured by resources/style/app.qss
    return line
