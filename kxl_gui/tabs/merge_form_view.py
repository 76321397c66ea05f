"""The Merge form's widgets (layout only): preset, models and weights, block weights, embedding revert, LoKr bake,
output. The tab (tabs/merge.py) binds them to a `MergeForm`; `show_form(form)` shows the controls that apply
to the form's operation and number of models, and nothing here decides what a change means.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from trainer_core.merge.recipe import DTYPES
from trainer_core.models.sdxl_layout import EMBEDDING_KEYS

from ..kit.card import Card
from ..kit.path_row import PathRow
from ..state.merge_form import PRESET_CUSTOM, PRESET_KXL, MergeForm
from ..widgets.merge_model_picker import HashQueue, ModelPicker
from ..widgets.merge_weights import BlockWeightsPanel, WeightSlider

PRESET_LABELS = {PRESET_KXL: "kohaku-xl-delta  (0.5 gamma + 0.5 beta, embeddings from SDXL base)",
                 PRESET_CUSTOM: "custom"}  # fmt: skip
OPERATIONS = {
    "weighted_sum": "Weighted sum  (w₁·A + w₂·B + …)",
    "add_difference": "Add difference  (A + M·(B − C))",
    "copy": "A only  (bake a LoKr / revert embeddings)",
}
REVERT_LABELS = {
    "te1_token": "TE1 token embedding",
    "te1_position": "TE1 position embedding",
    "te2_token": "TE2 token embedding",
    "te2_position": "TE2 position embedding",
}
MISSING_LABELS = {"error": "Stop when key sets differ", "take_a": "Take missing keys from A"}
LABEL_WIDTH = 64


class ModelRow(QWidget):
    """One merge input: picker + its weight + a remove button (weighted sums of more than two models)."""

    remove_requested = Signal(object)  # self

    def __init__(self, picker: ModelPicker, weight: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.picker = picker
        self.weight = WeightSlider(weight)
        self.weight.setFixedWidth(300)
        self.remove_button = QPushButton("✕")
        self.remove_button.setToolTip("Remove this model")
        self.remove_button.setFixedWidth(34)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(12)
        lay.addWidget(picker, 1)
        lay.addWidget(self.weight, 0, Qt.AlignmentFlag.AlignTop)
        lay.addWidget(self.remove_button, 0, Qt.AlignmentFlag.AlignTop)
        self.remove_button.clicked.connect(self.request_remove)

    def request_remove(self) -> None:
        """The ✕ button's handler (no parameters: `clicked` would pass its `checked` flag)."""
        self.remove_requested.emit(self)


def _labelled(text: str, widget: QWidget, stretch: int = 0) -> QHBoxLayout:
    row = QHBoxLayout()
    label = QLabel(text)
    label.setMinimumWidth(LABEL_WIDTH)
    row.addWidget(label)
    row.addWidget(widget, stretch)
    return row


class MergeFormView(QWidget):
    """Everything above the Merge tab's footer. `rows` are the model rows, created by the tab."""

    def __init__(self, hashes: HashQueue, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mergeForm")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(24, 20, 24, 16)
        lay.setSpacing(14)
        lay.addLayout(self._header())
        lay.addWidget(self._models_card())
        self.block_card = Card("Block weights")
        self.block_panel = BlockWeightsPanel()
        self.block_card.body.addWidget(self.block_panel)
        self.block_card.hide()
        lay.addWidget(self.block_card)
        side = QGridLayout()
        side.setHorizontalSpacing(14)
        side.setColumnStretch(0, 1)
        side.setColumnStretch(1, 1)
        side.addWidget(self._revert_card(hashes), 0, 0)
        side.addWidget(self._lokr_card(hashes), 0, 1)
        lay.addLayout(side)
        lay.addWidget(self._output_card())
        lay.addStretch(1)

    def _header(self) -> QHBoxLayout:
        header = QHBoxLayout()
        titles = QVBoxLayout()
        titles.setSpacing(2)
        title = QLabel("Merge checkpoints")
        title.setObjectName("pageTitle")
        sub = QLabel("Streaming SDXL merge: tensors are read one at a time, so RAM stays at a few tensors.")
        sub.setObjectName("muted")
        titles.addWidget(title)
        titles.addWidget(sub)
        header.addLayout(titles, 1)
        header.addWidget(QLabel("Preset"))
        self.preset_combo = QComboBox()
        for key, label in PRESET_LABELS.items():
            self.preset_combo.addItem(label, key)
        # "custom" is what the settings are when they are no preset's: shown, never chosen.
        self.preset_combo.model().item(self.preset_combo.findData(PRESET_CUSTOM)).setEnabled(False)
        header.addWidget(self.preset_combo)
        return header

    def _models_card(self) -> Card:
        card = self.models_card = Card("Models")
        op_row = QHBoxLayout()
        op_row.addWidget(QLabel("Operation"))
        self.op_combo = QComboBox()
        for key, label in OPERATIONS.items():
            self.op_combo.addItem(label, key)
        op_row.addWidget(self.op_combo)
        op_row.addSpacing(16)
        self.link_box = QCheckBox("Link A = 1 − B")
        self.link_box.setToolTip("Keep the two weights summing to 1 (a plain interpolation between A and B)")
        op_row.addWidget(self.link_box)
        self.block_toggle = QCheckBox("Per-block weights")
        self.block_toggle.setToolTip(
            "Give each SDXL UNet block (BASE, IN00–IN08, MID, OUT00–OUT08) its own weight"
        )
        op_row.addWidget(self.block_toggle)
        op_row.addStretch(1)
        self.weights_header = QLabel("Weight")
        self.weights_header.setObjectName("muted")
        self.weights_header.setFixedWidth(346)
        op_row.addWidget(self.weights_header)
        card.body.addLayout(op_row)
        self.rows_box = QVBoxLayout()
        self.rows_box.setSpacing(10)
        card.body.addLayout(self.rows_box)
        tail = QHBoxLayout()
        self.add_button = QPushButton("+ Add model")
        tail.addWidget(self.add_button)
        self.formula = QLabel()
        self.formula.setObjectName("formula")
        tail.addWidget(self.formula, 1)
        self.multiplier_label = QLabel("Multiplier M")
        self.multiplier = WeightSlider(1.0, 0.0, 2.0, -4.0, 4.0)
        self.multiplier.setFixedWidth(300)
        tail.addWidget(self.multiplier_label)
        tail.addWidget(self.multiplier)
        card.body.addLayout(tail)
        return card

    def _revert_card(self, hashes: HashQueue) -> Card:
        card = self.revert_card = Card("Embedding revert")
        card.set_subtitle(
            "Take CLIP embeddings unchanged from the original model (the card reverts all four)"
        )
        self.original_picker = ModelPicker("Original", hashes)
        card.body.addWidget(self.original_picker)
        boxes = QGridLayout()
        self.revert_boxes: dict[str, QCheckBox] = {}
        for i, (name, label) in enumerate(REVERT_LABELS.items()):
            box = QCheckBox(label)
            box.setToolTip(EMBEDDING_KEYS[name])
            boxes.addWidget(box, i // 2, i % 2)
            self.revert_boxes[name] = box
        card.body.addLayout(boxes)
        card.body.addStretch(1)
        return card

    def _lokr_card(self, hashes: HashQueue) -> Card:
        card = self.lokr_card = Card("Bake a LoKr (optional)")
        card.set_subtitle("Add a trained LoKr's ΔW into the merged weights")
        self.lokr_box = QCheckBox("Bake this LoKr into the result")
        self.lokr_picker = ModelPicker("LoKr", hashes, expect="lokr")
        self.lokr_multiplier = WeightSlider(1.0, 0.0, 2.0, -4.0, 4.0)
        card.body.addWidget(self.lokr_box)
        card.body.addWidget(self.lokr_picker)
        card.body.addLayout(_labelled("Multiplier", self.lokr_multiplier, 1))
        card.body.addStretch(1)
        return card

    def _output_card(self) -> Card:
        card = self.out_card = Card("Output")
        self.out_row = PathRow("save_file", "Save merged checkpoint as", "Safetensors (*.safetensors)",
                               "output .safetensors", default_suffix="safetensors")  # fmt: skip
        card.body.addLayout(_labelled("File", self.out_row, 1))
        opt_row = QHBoxLayout()
        self.dtype_combo = QComboBox()
        for dtype in DTYPES:
            self.dtype_combo.addItem(dtype, dtype)
        opt_row.addLayout(_labelled("dtype", self.dtype_combo))
        opt_row.addSpacing(18)
        opt_row.addWidget(QLabel("Missing keys"))
        self.missing_combo = QComboBox()
        for key, label in MISSING_LABELS.items():
            self.missing_combo.addItem(label, key)
        opt_row.addWidget(self.missing_combo)
        opt_row.addStretch(1)
        card.body.addLayout(opt_row)
        return card

    def show_form(self, form: MergeForm, rows: list[ModelRow]) -> None:
        """Show the controls that apply to the form's operation and model count (and only those)."""
        weighted, n = form.weighted, len(form.models)
        for row in rows:
            row.weight.setVisible(weighted)
            row.remove_button.setVisible(form.can_remove_model)
            row.remove_button.setEnabled(form.can_remove_model)
        self.weights_header.setVisible(weighted)
        # With per-block weights on, the row weights only feed the block shapes; say so where the user looks.
        self.weights_header.setText("Global weight (block shapes scale it)" if form.blocks_active and weighted
                                    else "Weight")  # fmt: skip
        self.add_button.setVisible(weighted)
        self.add_button.setEnabled(form.can_add_model)
        self.link_box.setVisible(form.link_applies)
        self.multiplier_label.setVisible(form.operation == "add_difference")
        self.multiplier.setVisible(form.operation == "add_difference")
        self.block_toggle.setVisible(form.blocks_apply)
        self.block_card.setVisible(form.blocks_active)
        self.block_panel.set_caption("Weight of B per block (A gets 1 − B)" if weighted
                                     else "Multiplier M per block: A + M·(B − C)")  # fmt: skip
        self.formula.setText("  " + form.formula())
        self.models_card.set_subtitle(f"{n} model{'s' if n != 1 else ''}")
