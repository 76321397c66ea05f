"""Merge tab: build a MergeRecipe with pickers and sliders, see what it will cost, run it off the GUI thread.

Everything the engine can check before writing a byte (`plan_merge`: key sets, shapes, output path, RAM and disk)
runs in a worker a moment after any input changes, so problems show up while the user is still choosing, and Run
is only offered for a recipe that planned cleanly. The merge itself is `run_merge` in a `Job`, the same call the
CLI makes, so the GUI and `kxl merge` write the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from trainer_core.atomic import free_bytes
from trainer_core.errors import KxlError
from trainer_core.merge.engine import MergePlan, MergeResult, plan_merge, run_merge
from trainer_core.merge.recipe import DTYPES, MergeRecipe, kohaku_xl_delta_recipe
from trainer_core.models.sdxl_layout import EMBEDDING_KEYS
from trainer_core.progress import ProgressEvent, format_duration
from trainer_core.workspace import Workspace
from trainer_core.workspace_summary import format_bytes

from ..context import AppContext
from ..jobs import Job
from ..pages.workspace_page import Card
from ..widgets.merge_model_picker import HashQueue, ModelPicker
from ..widgets.merge_weights import BlockWeightsPanel, WeightSlider

TAB_TITLE = "Merge"
TAB_ORDER = 30

PRESET_KXL = "kohaku-xl-delta"
PRESET_CUSTOM = "custom"
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
MAX_MODELS = 6
PLAN_DELAY_MS = 250
PRESET_OUTPUT_NAME = "kohaku-xl-delta-base"

LOCAL_STYLE = """
QLabel#pickerRole { font-weight: 600; color: #e6e2da; }
QLabel#pickerInfo { color: #8f8b83; font-family: monospace; font-size: 9pt; }
QLabel#pickerInfo[state="problem"] { color: #f2b59b; }
QLabel#warningText { color: #f2c15e; }
QLabel#resultText { color: #b9d98a; }
QLabel#formula { color: #a9a59c; font-family: monospace; }
QFrame#resultBox { background: #23291d; border: 1px solid #4a5a33; border-radius: 8px; }
QLineEdit, QComboBox {
    background: #1d1f23; border: 1px solid #41454d; border-radius: 5px; padding: 4px 6px;
}
QDoubleSpinBox { background: #1d1f23; border: 1px solid #41454d; border-radius: 5px; padding: 3px 4px; }
/* The slider is the coarse control, so the spin boxes hide their arrows (wheel and keys still step). Styled to
   zero width rather than NoButtons: with a styled frame, NoButtons leaves the text unpainted (Qt 6.12). */
QDoubleSpinBox::up-button, QDoubleSpinBox::down-button { width: 0px; border: none; }
QLineEdit:focus, QComboBox:focus, QDoubleSpinBox:focus { border-color: #e0a33a; }
QDoubleSpinBox#blockSpin { padding: 2px 1px; font-size: 9pt; }
QCheckBox { background: transparent; spacing: 7px; }
QCheckBox::indicator { width: 14px; height: 14px; border: 1px solid #55595f; border-radius: 3px; background: #1d1f23; }
QCheckBox::indicator:checked { background: #e0a33a; border-color: #e0a33a; }
QCheckBox::indicator:disabled { border-color: #3a3e45; }
QSlider { background: transparent; }
QSlider::groove:horizontal { height: 4px; background: #41454d; border-radius: 2px; }
QSlider::groove:vertical { width: 4px; background: #41454d; border-radius: 2px; }
QSlider::handle { background: #e0a33a; border-radius: 7px; width: 14px; height: 14px; }
QSlider::handle:horizontal { margin: -5px 0; }
QSlider::handle:vertical { margin: 0 -5px; }
QSlider::handle:disabled { background: #6b5a36; }
QSlider::sub-page:horizontal { background: #8a6a2c; border-radius: 2px; }
QSlider::add-page:vertical { background: #8a6a2c; border-radius: 2px; }
"""


@dataclass
class PlanOutcome:
    """What the background check found for one recipe."""

    plan: MergePlan | None
    error: str | None
    fixable_missing: int | None  # keys "take missing keys from A" would copy, when that fixes the error
    free_bytes: int | None
    available_ram: int | None


def estimate(recipe: MergeRecipe, out: Path | None) -> PlanOutcome:
    """Worker side of the estimate: plan_merge opens every input's header, so it never runs on the GUI thread."""
    import psutil

    ram = psutil.virtual_memory().available
    free = free_bytes(out.parent) if out is not None else None
    try:
        plan = plan_merge(recipe, out)
    except KxlError as exc:
        fixable = None
        if recipe.missing == "error":
            # Is this the key-set difference the "take missing keys from A" policy resolves? Ask the engine.
            try:
                fixable = len(plan_merge(replace(recipe, missing="take_a"), out).taken_from_a)
            except KxlError:
                fixable = None
        return PlanOutcome(None, str(exc), fixable, free, ram)
    return PlanOutcome(plan, None, None, free, ram)


class ModelRow(QWidget):
    """One merge input: picker + its weight + a remove button (weighted sums of more than two models)."""

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


class MergeTab(QWidget):
    plan_updated = Signal(object)  # PlanOutcome, after the estimate area was redrawn
    merge_finished = Signal(object)  # MergeResult
    merge_failed = Signal(str)
    merge_cancelled = Signal()

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.setStyleSheet(LOCAL_STYLE)
        self.hashes = HashQueue(self)
        self.rows: list[ModelRow] = []
        self.outcome: PlanOutcome | None = None
        self.result: MergeResult | None = None
        self._applying = False  # programmatic changes must not flip the preset to "custom"
        self._out_auto = True  # the output path follows the inputs until the user types one
        self._applied_root: Path | None = None
        self._plan_gen = 0
        self._plan_job: Job | None = None
        self._merge_job: Job | None = None
        self._plan_timer = QTimer(self)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.setInterval(PLAN_DELAY_MS)
        self._plan_timer.timeout.connect(self._start_plan)
        self._build()
        context.workspace_changed.connect(self._on_workspace)
        self._apply_preset(PRESET_KXL)
        if context.workspace is not None:
            self._on_workspace(context.workspace)
        else:
            self._refresh_state()

    # ---- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        outer.addWidget(scroll, 1)
        content = QWidget()
        content.setObjectName("pageContent")
        scroll.setWidget(content)
        lay = QVBoxLayout(content)
        lay.setContentsMargins(24, 20, 24, 16)
        lay.setSpacing(14)
        self.inputs_area = content

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
        self.preset_combo.activated.connect(lambda _i: self._apply_preset(self.preset_combo.currentData()))
        header.addWidget(self.preset_combo)
        lay.addLayout(header)

        # Models
        self.models_card = Card("Models")
        self.models_card.set_subtitle("")
        op_row = QHBoxLayout()
        op_row.addWidget(QLabel("Operation"))
        self.op_combo = QComboBox()
        for key, label in OPERATIONS.items():
            self.op_combo.addItem(label, key)
        self.op_combo.activated.connect(lambda _i: self._on_operation(user=True))
        op_row.addWidget(self.op_combo)
        op_row.addSpacing(16)
        self.link_box = QCheckBox("Link A = 1 − B")
        self.link_box.setChecked(True)
        self.link_box.setToolTip("Keep the two weights summing to 1 (a plain interpolation between A and B)")
        self.link_box.toggled.connect(self._on_link_toggled)
        op_row.addWidget(self.link_box)
        self.block_toggle = QCheckBox("Per-block weights")
        self.block_toggle.setToolTip(
            "Give each SDXL UNet block (BASE, IN00–IN08, MID, OUT00–OUT08) its own weight"
        )
        self.block_toggle.toggled.connect(self._on_block_toggled)
        op_row.addWidget(self.block_toggle)
        op_row.addStretch(1)
        self.weights_header = QLabel("Weight")
        self.weights_header.setObjectName("muted")
        self.weights_header.setFixedWidth(346)
        op_row.addWidget(self.weights_header)
        self.models_card.body.addLayout(op_row)
        self.rows_box = QVBoxLayout()
        self.rows_box.setSpacing(10)
        self.models_card.body.addLayout(self.rows_box)
        tail = QHBoxLayout()
        self.add_button = QPushButton("+ Add model")
        self.add_button.clicked.connect(lambda: self._add_row(user=True))
        tail.addWidget(self.add_button)
        self.formula = QLabel()
        self.formula.setObjectName("formula")
        tail.addWidget(self.formula, 1)
        self.multiplier_label = QLabel("Multiplier M")
        self.multiplier = WeightSlider(1.0, 0.0, 2.0, -4.0, 4.0)
        self.multiplier.setFixedWidth(300)
        self.multiplier.value_changed.connect(self._on_weight_changed)
        tail.addWidget(self.multiplier_label)
        tail.addWidget(self.multiplier)
        self.models_card.body.addLayout(tail)
        lay.addWidget(self.models_card)

        # Block weights (hidden until asked for)
        self.block_card = Card("Block weights")
        self.block_card.set_subtitle("")
        self.block_panel = BlockWeightsPanel()
        self.block_panel.changed.connect(self._on_input_changed)
        self.block_card.body.addWidget(self.block_panel)
        self.block_card.hide()
        lay.addWidget(self.block_card)

        # Revert + LoKr side by side
        side = QGridLayout()
        side.setHorizontalSpacing(14)
        side.setColumnStretch(0, 1)
        side.setColumnStretch(1, 1)
        self.revert_card = Card("Embedding revert")
        self.revert_card.set_subtitle(
            "Take CLIP embeddings unchanged from the original model (the card reverts all four)"
        )
        self.original_picker = ModelPicker("Original", self.hashes)
        self.original_picker.changed.connect(self._on_input_changed)
        self.revert_card.body.addWidget(self.original_picker)
        boxes = QGridLayout()
        self.revert_boxes: dict[str, QCheckBox] = {}
        for i, (name, label) in enumerate(REVERT_LABELS.items()):
            box = QCheckBox(label)
            box.setToolTip(EMBEDDING_KEYS[name])
            box.toggled.connect(self._on_input_changed)
            boxes.addWidget(box, i // 2, i % 2)
            self.revert_boxes[name] = box
        self.revert_card.body.addLayout(boxes)
        side.addWidget(self.revert_card, 0, 0)

        self.lokr_card = Card("Bake a LoKr (optional)")
        self.lokr_card.set_subtitle("Add a trained LoKr's ΔW into the merged weights")
        self.lokr_box = QCheckBox("Bake this LoKr into the result")
        self.lokr_box.toggled.connect(self._on_input_changed)
        self.lokr_picker = ModelPicker("LoKr", self.hashes, expect="lokr")
        self.lokr_picker.changed.connect(self._on_lokr_chosen)
        mult_row = QHBoxLayout()
        mult_label = QLabel("Multiplier")
        mult_label.setMinimumWidth(64)
        mult_row.addWidget(mult_label)
        self.lokr_multiplier = WeightSlider(1.0, 0.0, 2.0, -4.0, 4.0)
        self.lokr_multiplier.value_changed.connect(self._on_input_changed)
        mult_row.addWidget(self.lokr_multiplier, 1)
        self.lokr_card.body.addWidget(self.lokr_box)
        self.lokr_card.body.addWidget(self.lokr_picker)
        self.lokr_card.body.addLayout(mult_row)
        side.addWidget(self.lokr_card, 0, 1)
        lay.addLayout(side)

        # Output
        self.out_card = Card("Output")
        self.out_card.set_subtitle("")
        out_row = QHBoxLayout()
        out_label = QLabel("File")
        out_label.setMinimumWidth(64)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("output .safetensors")
        self.out_edit.textEdited.connect(self._on_out_edited)
        out_browse = QPushButton("Browse…")
        out_browse.clicked.connect(self.choose_output)
        out_row.addWidget(out_label)
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(out_browse)
        self.out_card.body.addLayout(out_row)
        opt_row = QHBoxLayout()
        dtype_label = QLabel("dtype")
        dtype_label.setMinimumWidth(64)
        opt_row.addWidget(dtype_label)
        self.dtype_combo = QComboBox()
        self.dtype_combo.addItems(list(DTYPES))
        self.dtype_combo.activated.connect(self._on_input_changed)
        opt_row.addWidget(self.dtype_combo)
        opt_row.addSpacing(18)
        opt_row.addWidget(QLabel("Missing keys"))
        self.missing_combo = QComboBox()
        for key, label in MISSING_LABELS.items():
            self.missing_combo.addItem(label, key)
        self.missing_combo.activated.connect(self._on_input_changed)
        opt_row.addWidget(self.missing_combo)
        opt_row.addStretch(1)
        self.out_card.body.addLayout(opt_row)
        lay.addWidget(self.out_card)
        lay.addStretch(1)

        outer.addWidget(self._build_footer())

    def _build_footer(self) -> QWidget:
        footer = QFrame()
        footer.setObjectName("card")
        footer.setStyleSheet("QFrame#card { border-radius: 0; border-left: none; border-right: none; "
                             "border-bottom: none; }")  # fmt: skip
        lay = QVBoxLayout(footer)
        lay.setContentsMargins(24, 12, 24, 14)
        lay.setSpacing(8)
        self.estimate_label = QLabel()
        self.estimate_label.setObjectName("muted")
        self.estimate_label.setWordWrap(True)
        problem_row = QHBoxLayout()
        self.problem_label = QLabel()
        self.problem_label.setObjectName("inlineError")
        self.problem_label.setWordWrap(True)
        self.problem_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.take_a_button = QPushButton("Take missing keys from A")
        self.take_a_button.clicked.connect(self.take_missing_from_a)
        problem_row.addWidget(self.problem_label, 1)
        problem_row.addWidget(self.take_a_button, 0, Qt.AlignmentFlag.AlignTop)
        lay.addLayout(problem_row)
        self.warnings_label = QLabel()
        self.warnings_label.setObjectName("warningText")
        self.warnings_label.setWordWrap(True)
        lay.addWidget(self.warnings_label)
        # The outcome of the last Run (failure or cancel), kept until the next edit or run.
        self.run_message = QLabel()
        self.run_message.setWordWrap(True)
        self.run_message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.run_message.hide()
        lay.addWidget(self.run_message)

        self.result_box = QFrame()
        self.result_box.setObjectName("resultBox")
        rlay = QHBoxLayout(self.result_box)
        rlay.setContentsMargins(14, 8, 14, 8)
        self.result_label = QLabel()
        self.result_label.setObjectName("resultText")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.use_base_button = QPushButton("Use as training base")
        self.use_base_button.clicked.connect(self.use_as_training_base)
        self.open_generate_button = QPushButton("Open in Generate")
        self.open_generate_button.clicked.connect(self.open_in_generate)
        self.show_folder_button = QPushButton("Show folder")
        self.show_folder_button.clicked.connect(self.show_folder)
        rlay.addWidget(self.result_label, 1)
        for b in (self.show_folder_button, self.open_generate_button, self.use_base_button):
            rlay.addWidget(b)
        self.result_box.hide()
        lay.addWidget(self.result_box)

        run_row = QHBoxLayout()
        run_row.setSpacing(12)
        self.progress_label = QLabel()
        self.progress_label.setMinimumWidth(330)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setRange(0, 1000)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_merge)
        self.run_button = QPushButton("Run merge")
        self.run_button.setObjectName("primaryButton")
        self.run_button.setMinimumWidth(130)
        self.run_button.clicked.connect(self.start_merge)
        run_row.addWidget(self.estimate_label, 1)
        run_row.addWidget(self.progress_label)
        run_row.addWidget(self.progress_bar, 1)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(self.run_button)
        lay.addLayout(run_row)
        self._show_progress(False)
        return footer

    # ---- model rows ---------------------------------------------------------------------------------------
    def _role_name(self, i: int) -> str:
        return chr(ord("A") + i)

    def _add_row(self, path: Path | None = None, weight: float = 0.5, user: bool = False) -> ModelRow:
        i = len(self.rows)
        picker = ModelPicker(self._role_name(i), self.hashes)
        row = ModelRow(picker, weight)
        picker.changed.connect(self._on_model_chosen)
        row.weight.value_changed.connect(lambda _v, r=row: self._on_weight_changed(source=r))
        row.remove_button.clicked.connect(lambda _c=False, r=row: self._remove_row(r))
        self.rows.append(row)
        self.rows_box.addWidget(row)
        if path is not None:
            picker.set_path(path)
        if user:
            self._mark_custom()
            self._refresh_rows()
            self._on_input_changed()
        return row

    def _remove_row(self, row: ModelRow) -> None:
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        for i, r in enumerate(self.rows):
            r.picker.role = self._role_name(i)
            r.picker.role_label.setText(r.picker.role)
        self._mark_custom()
        self._refresh_rows()
        self._on_input_changed()

    def _set_row_count(self, n: int) -> None:
        while len(self.rows) < n:
            self._add_row()
        while len(self.rows) > n:
            row = self.rows.pop()
            row.setParent(None)
            row.deleteLater()

    @property
    def operation(self) -> str:
        return self.op_combo.currentData()

    def _refresh_rows(self) -> None:
        """Show the controls that apply to the chosen operation (and only those)."""
        op, n = self.operation, len(self.rows)
        weighted = op == "weighted_sum"
        for row in self.rows:
            row.weight.setVisible(weighted)
            row.remove_button.setVisible(weighted and n > 2)
            row.remove_button.setEnabled(weighted and n > 2)
        self.weights_header.setVisible(weighted)
        # With per-block weights on, the row weights only feed the block shapes; say so where the user looks.
        blocks_on = self.block_toggle.isChecked() and weighted and n == 2
        self.weights_header.setText("Global weight (block shapes scale it)" if blocks_on else "Weight")
        self.add_button.setVisible(weighted)
        self.add_button.setEnabled(n < MAX_MODELS)
        self.link_box.setVisible(weighted and n == 2)
        self.multiplier_label.setVisible(op == "add_difference")
        self.multiplier.setVisible(op == "add_difference")
        blocks_ok = (weighted and n == 2) or op == "add_difference"
        self.block_toggle.setVisible(blocks_ok)
        self.block_card.setVisible(blocks_ok and self.block_toggle.isChecked())
        self.block_panel.set_caption(
            "Weight of B per block (A gets 1 − B)" if weighted else "Multiplier M per block: A + M·(B − C)"
        )
        self.block_panel.set_global_weight(self._global_weight())
        if weighted:
            terms = [f"{r.weight.value():g}·{r.picker.role}" for r in self.rows]
            self.formula.setText("  " + " + ".join(terms))
        elif op == "add_difference":
            self.formula.setText(f"  A + {self.multiplier.value():g}·(B − C)")
        else:
            self.formula.setText("  A (plus the LoKr and reverted embeddings below)")

    def _global_weight(self) -> float:
        if self.operation == "add_difference":
            return self.multiplier.value()
        return self.rows[1].weight.value() if len(self.rows) > 1 else 0.5

    # ---- presets and workspace defaults -------------------------------------------------------------------
    def _apply_preset(self, key: str) -> None:
        self._applying = True
        try:
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(key))
            if key == PRESET_KXL:
                self.op_combo.setCurrentIndex(self.op_combo.findData("weighted_sum"))
                self._set_row_count(2)
                for row in self.rows:
                    row.weight.set_value(0.5)
                self.link_box.setChecked(True)
                self.block_toggle.setChecked(False)
                for box in self.revert_boxes.values():
                    box.setChecked(True)
                self.dtype_combo.setCurrentText("fp16")
                self.missing_combo.setCurrentIndex(self.missing_combo.findData("error"))
                self._fill_from_workspace(only_empty=True)
        finally:
            self._applying = False
        self._refresh_rows()
        self._on_input_changed()

    def _mark_custom(self) -> None:
        if not self._applying:
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(PRESET_CUSTOM))

    def _on_workspace(self, ws: Workspace) -> None:
        # The tab re-emits the workspace after a merge (to refresh other pages): keep the user's choices then.
        if self._applied_root == ws.root:
            return
        self._applied_root = ws.root
        self._applying = True
        try:
            self._fill_from_workspace(only_empty=False)
        finally:
            self._applying = False
        self._out_auto = True
        self._update_default_output()
        self._refresh_rows()
        self._on_input_changed()

    def _fill_from_workspace(self, only_empty: bool) -> None:
        """gamma -> A, beta -> B, original -> Original: the card's recipe with the demo's stand-ins."""
        ws = self.context.workspace
        if ws is None:
            return
        targets = []
        if len(self.rows) > 0:
            targets.append((self.rows[0].picker, "gamma"))
        if len(self.rows) > 1:
            targets.append((self.rows[1].picker, "beta"))
        targets.append((self.original_picker, "original"))
        for picker, role in targets:
            path = ws.checkpoint_path(role)
            if path is not None and (not only_empty or picker.path is None):
                picker.set_path(path)

    # ---- change handlers ----------------------------------------------------------------------------------
    def _on_operation(self, user: bool) -> None:
        op = self.operation
        if op == "add_difference":
            self._set_row_count(3)
        elif op == "copy":
            self._set_row_count(1)
        elif len(self.rows) < 2:
            self._set_row_count(2)
        if user:
            self._mark_custom()
        self._refresh_rows()
        self._on_input_changed()

    def _on_weight_changed(self, _value: float | None = None, source: ModelRow | None = None) -> None:
        if (
            source is not None
            and self.link_box.isChecked()
            and self.operation == "weighted_sum"
            and len(self.rows) == 2
        ):
            other = self.rows[0] if source is self.rows[1] else self.rows[1]
            other.weight.set_value(round(1.0 - source.weight.value(), 3))
        self._mark_custom()
        self._refresh_rows()
        self._on_input_changed()

    def _on_link_toggled(self, on: bool) -> None:
        if on and len(self.rows) == 2:
            self.rows[0].weight.set_value(round(1.0 - self.rows[1].weight.value(), 3))
        self._mark_custom()
        self._refresh_rows()
        self._on_input_changed()

    def _on_block_toggled(self, on: bool) -> None:
        if on:
            # Start from the current global weight so opening the panel does not change the result.
            self.block_panel.set_global_weight(self._global_weight())
            self.block_panel.apply_preset("Flat (global weight)")
        self._mark_custom()
        self._refresh_rows()
        self._on_input_changed()

    def _on_model_chosen(self) -> None:
        self._update_default_output()
        self._on_input_changed()

    def _on_lokr_chosen(self) -> None:
        if self.lokr_picker.path is not None and not self._applying:
            self.lokr_box.setChecked(True)
        self._update_default_output()
        self._on_input_changed()

    def _on_out_edited(self, _text: str) -> None:
        self._out_auto = False
        self._on_input_changed()

    def _on_input_changed(self, *_args) -> None:
        # dtype, missing-key policy and a LoKr combine with the preset (as on the CLI); other reverts do not.
        if self.sender() in self.revert_boxes.values():
            self._mark_custom()
        self._set_run_message(None)
        self._plan_gen += 1  # any plan in flight now describes an outdated recipe
        self.outcome = None
        self._refresh_state()
        if self._merge_job is None:
            self._plan_timer.start()

    def choose_output(self) -> None:
        start = self.out_edit.text() or (
            str(self.context.workspace.models_path) if self.context.workspace else ""
        )
        name, _ = QFileDialog.getSaveFileName(
            self, "Save merged checkpoint as", start, "Safetensors (*.safetensors)"
        )
        if name:
            if not name.endswith(".safetensors"):
                name += ".safetensors"
            self.set_output(Path(name))

    def set_output(self, path: Path | str) -> None:
        """Choose the output file explicitly (it no longer follows the inputs)."""
        self._out_auto = False
        self.out_edit.setText(str(path))
        self._on_input_changed()

    def take_missing_from_a(self) -> None:
        self.missing_combo.setCurrentIndex(self.missing_combo.findData("take_a"))
        self._mark_custom()
        self._on_input_changed()

    def _update_default_output(self) -> None:
        if not self._out_auto:
            return
        ws = self.context.workspace
        folder = ws.models_path if ws is not None else (self.rows[0].picker.path.parent
                                                         if self.rows and self.rows[0].picker.path else None)  # fmt: skip
        if folder is None:
            return
        self.out_edit.setText(str(_unique(folder, self._default_name())))

    def _default_name(self) -> str:
        if self.preset_combo.currentData() == PRESET_KXL:
            return PRESET_OUTPUT_NAME
        stems = [r.picker.path.stem for r in self.rows if r.picker.path is not None][:3]
        if self.operation == "copy" and self.lokr_picker.path is not None and stems:
            return f"{stems[0]}+{self.lokr_picker.path.stem}"
        return "merge-" + "-".join(stems) if stems else "merge"

    # ---- recipe -------------------------------------------------------------------------------------------
    @property
    def output_path(self) -> Path | None:
        text = self.out_edit.text().strip()
        return Path(text).expanduser() if text else None

    def build_recipe(self) -> MergeRecipe:
        """The recipe the widgets describe. Raises KxlError naming what still needs choosing."""
        for row in self.rows:
            if row.picker.path is None:
                raise KxlError(f"choose model {row.picker.role}")
            if row.picker.problem:
                raise KxlError(row.picker.problem)
        op = self.operation
        inputs = [str(r.picker.path) for r in self.rows]
        if op == "weighted_sum":
            weights = [r.weight.value() for r in self.rows]
        elif op == "add_difference":
            weights = [self.multiplier.value()]
        else:
            weights = []
        blocks: dict[str, list[float]] = {}
        if self.block_toggle.isChecked() and (
            (op == "weighted_sum" and len(inputs) == 2) or op == "add_difference"
        ):
            for name, v in self.block_panel.values().items():
                blocks[name] = [round(1.0 - v, 6), v] if op == "weighted_sum" else [v]
        revert = [name for name, box in self.revert_boxes.items() if box.isChecked()]
        original = None
        if revert:
            if self.original_picker.path is None:
                raise KxlError(
                    "choose the original model to revert the embeddings to (or untick the reverts)"
                )
            if self.original_picker.problem:
                raise KxlError(self.original_picker.problem)
            original = str(self.original_picker.path)
        lokr: list[tuple[str, float]] = []
        if self.lokr_box.isChecked():
            if self.lokr_picker.path is None:
                raise KxlError("choose the LoKr file to bake (or untick 'Bake this LoKr')")
            if self.lokr_picker.problem:
                raise KxlError(self.lokr_picker.problem)
            lokr = [(str(self.lokr_picker.path), self.lokr_multiplier.value())]
        if self.preset_combo.currentData() == PRESET_KXL and len(inputs) == 2 and original:
            recipe = kohaku_xl_delta_recipe(inputs[0], inputs[1], original)  # the CLI's preset, exactly
        else:
            recipe = MergeRecipe(
                operation=op, inputs=inputs, weights=weights, revert=revert, original=original
            )
        recipe.block_weights = blocks
        recipe.lokr = lokr
        recipe.dtype = self.dtype_combo.currentText()
        recipe.missing = self.missing_combo.currentData()
        recipe.validate()
        return recipe

    # ---- estimate -----------------------------------------------------------------------------------------
    def _start_plan(self) -> None:
        if self._merge_job is not None:
            return
        gen = self._plan_gen
        try:
            recipe = self.build_recipe()
        except KxlError as exc:
            self._show_outcome(gen, PlanOutcome(None, str(exc), None, None, None))
            return
        out = self.output_path
        if out is None:
            self._show_outcome(gen, PlanOutcome(None, "choose an output file", None, None, None))
            return
        job = Job(lambda _p: estimate(recipe, out), name="merge estimate", parent=self)
        job.succeeded.connect(lambda outcome: self._show_outcome(gen, outcome))
        job.failed.connect(lambda msg: self._show_outcome(gen, PlanOutcome(None, msg, None, None, None)))
        self._plan_job = job
        self.estimate_label.setText("Checking inputs…")
        job.start()

    def _show_outcome(self, gen: int, outcome: PlanOutcome) -> None:
        if gen != self._plan_gen:
            return
        self.outcome = outcome
        self._refresh_state()
        self.plan_updated.emit(outcome)

    def _refresh_state(self) -> None:
        o = self.outcome
        running = self._merge_job is not None
        self.take_a_button.setVisible(bool(o and o.error and o.fixable_missing))
        if o is not None and o.fixable_missing:
            self.take_a_button.setToolTip(
                f"Copy the {o.fixable_missing:,} missing tensor(s) from A unchanged"
            )
        if o is None:
            self.estimate_label.setText("Checking inputs…")
            self.problem_label.hide()
            self.warnings_label.hide()
        elif o.error:
            self.estimate_label.setText("Fix the problem above to run the merge.")
            self.problem_label.setText(o.error)
            self.problem_label.show()
            self.warnings_label.hide()
        else:
            self.problem_label.hide()
            self.estimate_label.setText(self._estimate_text(o))
            warnings = list(o.plan.warnings)
            if o.plan.taken_from_a:
                warnings.append(
                    f"{len(o.plan.taken_from_a):,} tensor(s) missing from other inputs are copied from A"
                )
            if self.output_path is not None and self.output_path.exists():
                own = self.result is not None and _same_file(self.result.path, self.output_path)
                warnings.append(
                    f"{self.output_path.name} holds the merge just made; running again replaces it"
                    if own
                    else f"{self.output_path.name} exists and will be replaced"
                )
            self.warnings_label.setText("\n".join(f"⚠ {w}" for w in warnings))
            self.warnings_label.setVisible(bool(warnings))
        self.run_button.setEnabled(not running and o is not None and o.error is None)
        self.inputs_area.setEnabled(not running)
        self.run_button.setVisible(not running)
        self.cancel_button.setVisible(running)

    def _estimate_text(self, o: PlanOutcome) -> str:
        plan = o.plan
        assert plan is not None
        disk = f"Disk: {format_bytes(plan.out_bytes)}"
        if o.free_bytes is not None:
            disk += f" (free: {format_bytes(o.free_bytes)})"
        ram = f"peak RAM ≈ {format_bytes(plan.peak_ram_bytes)}"
        if o.available_ram is not None:
            ram += f" (available: {format_bytes(o.available_ram)})"
        parts = [f"{len(plan.keys):,} tensors ({plan.arch}, {plan.recipe.dtype})", disk, ram]
        if plan.reverted:
            parts.append(f"{len(plan.reverted)} embedding(s) reverted")
        for lf in plan.lokr_files:
            parts.append(f"LoKr {lf.name}: {len(lf.modules):,} modules")
        text = "  ·  ".join(parts)
        if o.free_bytes is not None and o.free_bytes < plan.out_bytes:
            text += "  —  not enough free disk space"
        return text

    # ---- run ----------------------------------------------------------------------------------------------
    def start_merge(self) -> Job | None:
        """Run the merge in a worker. The engine re-checks everything, so a stale estimate cannot slip through."""
        if self._merge_job is not None:
            return None
        try:
            recipe = self.build_recipe()
        except KxlError as exc:
            self._merge_error(str(exc))
            return None
        out = self.output_path
        if out is None:
            self._merge_error("choose an output file")
            return None
        self._set_run_message(None)
        self._plan_timer.stop()
        self._plan_gen += 1
        self.result = None
        self.result_box.hide()
        job = Job(lambda p: run_merge(recipe, out, progress=p), name="merge", parent=self)
        job.progress.connect(self._on_progress)
        job.succeeded.connect(self._on_merged)
        job.failed.connect(self._merge_error)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_merge_finished)
        self._merge_job = job
        self._show_progress(True, "Starting…")
        self._refresh_state()
        self.context.show_status(f"Merging into {out} …")
        return job.start()

    def cancel_merge(self) -> None:
        if self._merge_job is not None:
            self._merge_job.cancel()
            self.cancel_button.setEnabled(False)
            self.progress_label.setText("Cancelling…")

    def _show_progress(self, on: bool, text: str = "") -> None:
        self.progress_label.setVisible(on)
        self.progress_bar.setVisible(on)
        self.estimate_label.setVisible(not on)
        self.progress_label.setText(text)
        # Busy (indeterminate) until the first byte count arrives.
        self.progress_bar.setRange(0, 0 if on else 1000)
        self.cancel_button.setEnabled(on)

    def _on_progress(self, ev: ProgressEvent) -> None:
        if self._merge_job is None or self._merge_job.token.cancelled:
            return
        text = ev.message or "Merging…"
        if ev.total:
            frac = min(1.0, ev.done / ev.total)
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * frac))
            text = f"Merging  {frac * 100:.0f}%"
            if ev.rate:
                text += f"  ·  {ev.rate / 1e6:,.0f} MB/s"
            if ev.eta_s is not None and ev.done < ev.total:
                text += f"  ·  ETA {format_duration(ev.eta_s)}"
        else:
            self.progress_bar.setRange(0, 0)
        self.progress_label.setText(text)

    def _on_merged(self, result: MergeResult) -> None:
        self.result = result
        plan = result.plan
        lines = [f"Wrote {result.path.name}  ({len(plan.keys):,} tensors, {format_bytes(plan.out_bytes)}, "
                 f"{plan.recipe.dtype}) in {result.seconds:.1f} s"]  # fmt: skip
        if plan.reverted:
            lines.append(
                f"Reverted from {Path(plan.recipe.original or '').name}: {', '.join(plan.recipe.revert)}"
            )
        if plan.taken_from_a:
            lines.append(f"{len(plan.taken_from_a):,} tensor(s) copied from A")
        for lf in plan.lokr_files:
            lines.append(f"Baked {lf.name}: {len(lf.modules):,} modules")
        self.result_label.setText("\n".join(lines))
        self.result_label.setToolTip(str(result.path))
        self.result_box.show()
        self.context.show_status(f"Merged into {result.path}")
        if self.context.workspace is not None:
            self.context.set_workspace(self.context.workspace)  # lets other pages pick up the new file
        self.merge_finished.emit(result)

    def _set_run_message(self, text: str | None, error: bool = True) -> None:
        self.run_message.setText(text or "")
        self.run_message.setObjectName("inlineError" if error else "muted")
        self.run_message.style().unpolish(self.run_message)
        self.run_message.style().polish(self.run_message)
        self.run_message.setVisible(bool(text))

    def _merge_error(self, message: str) -> None:
        self._set_run_message(f"Merge failed, nothing was written: {message}")
        self.context.show_status("Merge failed")
        self.merge_failed.emit(message)

    def _on_cancelled(self) -> None:
        self._set_run_message("Merge cancelled; nothing was written.", error=False)
        self.context.show_status("Merge cancelled; nothing was written")
        self.merge_cancelled.emit()

    def _on_merge_finished(self) -> None:
        self._merge_job = None
        self._show_progress(False)
        message = self.run_message.text() if self.run_message.isVisible() else None
        error = self.run_message.objectName() == "inlineError"
        self._update_default_output()  # the next run must not overwrite the file just written
        self._on_input_changed()  # re-plan: the output now exists, or the disk has filled up
        self._set_run_message(message, error)  # ...but keep the run's own outcome on screen

    # ---- hand-offs ----------------------------------------------------------------------------------------
    def use_as_training_base(self) -> None:
        if self.result is not None:
            self.context.request("train.set_base", self.result.path, switch_to="Train")

    def open_in_generate(self) -> None:
        if self.result is not None:
            self.context.request("generate.set_model", self.result.path, switch_to="Generate")

    def show_folder(self) -> None:
        if self.result is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.result.path.parent)))


def _unique(folder: Path, stem: str) -> Path:
    path = folder / f"{stem}.safetensors"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.safetensors"
        n += 1
    return path


def create_tab(context: AppContext) -> QWidget:
    return MergeTab(context)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
