"""The Generate tab's middle column: Generate / Cancel with progress, the model panel (base checkpoint, LoKrs and
their strengths), sampling settings and the hires fix, each widget bound to a field of the tab's
`GenerationForm` (ranges from its `LIMITS`).

Derived displays follow the fields without feeding back: the size preset shows the bucket the width and height
make ("custom" otherwise) and applies one only when the user picks it (`activated`); the LoKr table is drawn from
`form.lokrs`.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from trainer_core.generate.pipeline import UPSCALERS
from trainer_core.generate.prompt import EMPHASIS_MODES
from trainer_core.generate.samplers import SAMPLERS, SCHEDULES

from ..kit.card import Card
from ..kit.form_binding import FormBinding
from ..kit.inline_message import InlineMessage
from ..state.generate_form import DECIMALS, LIMITS, size_presets

PATH_ROLE = Qt.ItemDataRole.UserRole


def _spin(name: str, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    low, high = LIMITS[name]
    box.setRange(int(low), int(high))
    box.setSingleStep(step)
    return box


def _dspin(name: str, step: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(DECIMALS.get(name, 0))
    box.setRange(*LIMITS[name])
    box.setSingleStep(step)
    return box


class SettingsPanel(QWidget):
    def __init__(self, binding: FormBinding, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.binding = binding
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 0, 6, 0)
        lay.addLayout(self._build_run_row())
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress_label = QLabel("")
        self.progress_label.setObjectName("muted")
        lay.addWidget(self.progress)
        lay.addWidget(self.progress_label)
        self.error_label = InlineMessage()
        lay.addWidget(self.error_label)
        lay.addWidget(self._build_model_card())
        lay.addWidget(self._build_sampling_card())
        lay.addWidget(self._build_hires_group())
        lay.addStretch(1)
        self._bind()

    # ---- layout -------------------------------------------------------------------------------------------
    def _build_run_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("primaryButton")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.generate_button, 1)
        row.addWidget(self.cancel_button)
        return row

    def _build_model_card(self) -> Card:
        card = Card("Model")
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.model_combo.lineEdit().setPlaceholderText("base checkpoint (.safetensors or diffusers folder)")
        row.addWidget(self.model_combo, 1)
        self.browse_model_button = QPushButton("…")
        self.browse_model_button.setToolTip("choose a checkpoint file")
        row.addWidget(self.browse_model_button)
        card.body.addLayout(row)
        self.model_note = QLabel("")
        self.model_note.setObjectName("muted")
        self.model_note.setWordWrap(True)
        self.model_note.hide()
        card.body.addWidget(self.model_note)
        self.lokr_table = QTableWidget(0, 2)
        self.lokr_table.setHorizontalHeaderLabels(["LoKr", "Strength"])
        self.lokr_table.verticalHeader().hide()
        self.lokr_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.lokr_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.lokr_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.lokr_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.lokr_table.setFixedHeight(96)
        card.body.addWidget(self.lokr_table)
        buttons = QHBoxLayout()
        self.add_lokr_button = QPushButton("Add LoKr…")
        self.remove_lokr_button = QPushButton("Remove")
        self.remove_lokr_button.clicked.connect(self._remove_lokrs)
        buttons.addWidget(self.add_lokr_button)
        buttons.addWidget(self.remove_lokr_button)
        buttons.addStretch(1)
        card.body.addLayout(buttons)
        return card

    def _build_sampling_card(self) -> Card:
        card = Card("Sampling")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.sampler = QComboBox()
        self.sampler.addItems(list(SAMPLERS))
        self.schedule = QComboBox()
        self.schedule.addItems(list(SCHEDULES))
        self.steps = _spin("steps")
        self.cfg = _dspin("cfg", 0.5)
        form.addRow("Sampler", self.sampler)
        form.addRow("Schedule", self.schedule)
        steps_row = QHBoxLayout()
        steps_row.addWidget(self.steps)
        steps_row.addWidget(QLabel("CFG"))
        steps_row.addWidget(self.cfg)
        form.addRow("Steps", steps_row)
        seed_row = QHBoxLayout()
        # QSpinBox is 32-bit signed; A1111 seeds go up to 2**32 - 2, so a 0-decimal double box holds them.
        self.seed = _dspin("seed", 1)
        self.seed.setSpecialValueText("random")
        self.seed.setToolTip("-1 = a new random seed each time; image i of a run uses seed + i")
        self.random_seed_button = QPushButton("Random")
        self.random_seed_button.setToolTip("a new random seed for every run (-1)")
        self.random_seed_button.clicked.connect(self._random_seed)
        self.reuse_seed_button = QPushButton("Reuse")
        self.reuse_seed_button.setToolTip("reuse the seed of the selected / last image")
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.random_seed_button)
        seed_row.addWidget(self.reuse_seed_button)
        form.addRow("Seed", seed_row)
        self.size_preset = QComboBox()
        for w, h in size_presets():
            self.size_preset.addItem(f"{w} × {h}  ({w / h:.2f})", f"{w}x{h}")  # str: tuples do not findData
        self.size_preset.addItem("custom", None)
        self.size_preset.activated.connect(self._apply_size_preset)
        form.addRow("Size", self.size_preset)
        wh_row = QHBoxLayout()
        self.width_box = _spin("width", 64)
        self.height_box = _spin("height", 64)
        for box in (self.width_box, self.height_box):
            box.valueChanged.connect(self._show_size_preset)
        wh_row.addWidget(self.width_box)
        wh_row.addWidget(QLabel("×"))
        wh_row.addWidget(self.height_box)
        form.addRow("", wh_row)
        batch_row = QHBoxLayout()
        self.batch_count = _spin("batch_count")
        self.batch_size = _spin("batch_size")
        batch_row.addWidget(self.batch_count)
        batch_row.addWidget(QLabel("×"))
        batch_row.addWidget(self.batch_size)
        form.addRow("Batch", batch_row)
        self.emphasis = QComboBox()
        self.emphasis.addItems(list(EMPHASIS_MODES))
        self.emphasis.setToolTip('The card advises "No norm" with emphasis 1.5-2.5')
        form.addRow("Emphasis", self.emphasis)
        card.body.addLayout(form)
        return card

    def _build_hires_group(self) -> QGroupBox:
        self.hires_group = QGroupBox("Hires fix")
        self.hires_group.setCheckable(True)  # unchecked: Qt disables the fields inside
        hform = QFormLayout(self.hires_group)
        self.hires_scale = _dspin("hires_scale", 0.05)
        self.hires_steps = _spin("hires_steps")
        self.hires_steps.setSpecialValueText("same as steps")
        self.denoise = _dspin("denoise", 0.05)
        self.upscaler = QComboBox()
        self.upscaler.addItems(list(UPSCALERS))
        hform.addRow("Upscale by", self.hires_scale)
        hform.addRow("Hires steps", self.hires_steps)
        hform.addRow("Denoising", self.denoise)
        hform.addRow("Upscaler", self.upscaler)
        return self.hires_group

    # ---- binding ------------------------------------------------------------------------------------------
    def _bind(self) -> None:
        b = self.binding
        for combo, field in ((self.sampler, "sampler"), (self.schedule, "schedule"), (self.emphasis, "emphasis"),
                             (self.upscaler, "hires_upscaler")):  # fmt: skip
            b.bind(field, combo.currentText, combo.setCurrentText, combo.currentTextChanged)
        for spin, field in ((self.steps, "steps"), (self.cfg, "cfg"), (self.width_box, "width"),
                            (self.height_box, "height"), (self.batch_count, "batch_count"),
                            (self.batch_size, "batch_size"), (self.hires_scale, "hires_scale"),
                            (self.hires_steps, "hires_steps"), (self.denoise, "denoise")):  # fmt: skip
            b.spin(spin, field)
        b.bind("seed", lambda: int(self.seed.value()), self.seed.setValue, self.seed.valueChanged)
        b.check(self.hires_group, "hires")  # type: ignore[arg-type]  (QGroupBox: isChecked/setChecked/toggled)
        # The model box is editable: a path typed into it counts as much as a listed item chosen.
        for signal in (self.model_combo.currentIndexChanged, self.model_combo.editTextChanged):
            b.bind("model", self.model_in_box, self.show_model, signal)
        self._show_size_preset()

    def show_form(self) -> None:
        """Show the form after it changed in code (a restored PNG): the bound widgets and the LoKr table."""
        self.binding.push()
        self.show_lokrs()

    # ---- model --------------------------------------------------------------------------------------------
    def model_in_box(self) -> Path | None:
        """The checkpoint the model box names: a listed item's path, or the path typed in."""
        index = self.model_combo.currentIndex()
        text = self.model_combo.currentText().strip()
        if index >= 0 and self.model_combo.itemText(index) == text and self.model_combo.itemData(index):
            return Path(self.model_combo.itemData(index))
        return Path(text) if text else None

    def show_model(self, path: Path | None) -> None:
        if path is None:
            self.model_combo.setCurrentIndex(-1)
            self.model_combo.setEditText("")
            return
        index = self.model_combo.findData(str(path))
        if index < 0:
            self.model_combo.insertItem(0, Path(path).name, str(path))
            index = 0
        self.model_combo.setCurrentIndex(index)

    def set_models(self, bases: list[Path]) -> None:
        """List these base checkpoints; the form's model stays chosen (listed first when it is not among them),
        and with none chosen yet the first one is."""
        chosen = self.binding.form.model
        self.model_combo.clear()  # its signals write the emptied box into the form; `chosen` is put back below
        for path in bases:
            self.model_combo.addItem(path.name, str(path))
        if chosen is None and bases:
            chosen = bases[0]
        self.binding.form.model = chosen
        self.show_model(chosen)

    def show_model_note(self, text: str) -> None:
        self.model_note.setText(text)
        self.model_note.setVisible(bool(text))

    # ---- LoKrs --------------------------------------------------------------------------------------------
    def show_lokrs(self) -> None:
        """Draw the LoKr table from the form's list."""
        lokrs = self.binding.form.lokrs
        self.lokr_table.setRowCount(len(lokrs))
        for row, choice in enumerate(lokrs):
            item = QTableWidgetItem(choice.path.stem)
            item.setData(PATH_ROLE, str(choice.path))
            item.setToolTip(str(choice.path))
            self.lokr_table.setItem(row, 0, item)
            box = _dspin("strength", 0.05)
            box.setValue(choice.strength)
            box.valueChanged.connect(lambda value, path=choice.path: self.binding.form.set_lokr(path, value))
            self.lokr_table.setCellWidget(row, 1, box)

    def _remove_lokrs(self) -> None:
        """Remove the selected LoKrs (none selected: the last one)."""
        form = self.binding.form
        rows = {index.row() for index in self.lokr_table.selectedIndexes()}
        if not rows and form.lokrs:
            rows = {len(form.lokrs) - 1}
        form.lokrs = [choice for row, choice in enumerate(form.lokrs) if row not in rows]
        self.show_lokrs()

    # ---- seed and size ------------------------------------------------------------------------------------
    def _random_seed(self) -> None:
        self.seed.setValue(-1)

    def _apply_size_preset(self, index: int) -> None:
        size = self.size_preset.itemData(index)
        if size:
            width, height = (int(v) for v in size.split("x"))
            self.width_box.setValue(width)
            self.height_box.setValue(height)

    def _show_size_preset(self) -> None:
        index = self.size_preset.findData(f"{self.width_box.value()}x{self.height_box.value()}")
        self.size_preset.setCurrentIndex(index if index >= 0 else self.size_preset.count() - 1)
