"""Generate tab: tag builder in the Kohaku XL card's order, A1111 prompt text, model + LoKr panel, sampling and
hires settings, a gallery with history, and PNG-info restore by drag and drop.

Heavy work runs in `Job`s: the tag vocabulary + completion index, the CLIP tokenizer for the token counter, and
generation itself (trainer_core.generate.pipeline.generate, the same code the CLI and the trainer's samples use).

Cross-tab actions handled here (AppContext.request):
- "generate.set_model" (Path): use this checkpoint as the base model;
- "generate.add_lokr" (Path): add this LoKr to the list at strength 1.0.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from trainer_core.generate.conditioning import DEFAULT_EMPHASIS
from trainer_core.generate.infotext import parse_infotext, read_png_parameters
from trainer_core.generate.pipeline import MAX_SEED, UPSCALERS, GenerationRequest
from trainer_core.generate.prompt import EMPHASIS_MODES, strip_extra_networks
from trainer_core.generate.samplers import SAMPLERS, SCHEDULES
from trainer_core.paths import resources_dir
from trainer_core.train.buckets import make_buckets
from trainer_core.workspace import Workspace

from ..context import AppContext
from ..jobs import Job
from ..pages.workspace_page import Card
from ..widgets.generate_gallery import GalleryView, pil_to_qimage
from ..widgets.generate_prompt import (
    CHIP_FIELDS,
    COUNT_CHOICES,
    FIELD_CATEGORIES,
    FIELD_TITLES,
    SPECIAL_CHOICES,
    PromptFields,
    fields_from_text,
)
from ..widgets.tag_chips import ChipField

TAB_TITLE = "Generate"
TAB_ORDER = 50

NEGATIVE_PRESETS = {
    "Kohaku XL (quality + artifacts)": "low quality, worst quality, normal quality, text, signature, jpeg artifacts, "
    "bad anatomy, old, early, copyright name, watermark, artist name",
    "Minimal": "worst quality, low quality",
    "Empty (zero conditioning)": "",
}
DEFAULT_SIZE = (1024, 1024)
MODEL_SUFFIXES = (".safetensors",)


def size_presets() -> list[tuple[int, int]]:
    """The card's training buckets (1024² area, 256..4096, step 64), portrait to landscape."""
    return sorted(make_buckets(), key=lambda s: (s[0] / s[1], s[0]))


def _load_vocabulary(ws: Workspace | None, progress):
    """(vocabulary, completer): the workspace DB's tags, or the shipped tag list for the demo / no DB."""
    from trainer_core.tags import TagCompleter, TagVocabulary

    vocab = None
    # The demo DB's tag counts are synthetic; the shipped list has real Danbooru post counts and aliases.
    if ws is not None and ws.kind != "demo" and ws.db_path is not None and ws.db_path.is_file():
        vocab = TagVocabulary.from_db(ws.db_path, progress)
    if vocab is None:
        vocab = TagVocabulary.from_csv(resources_dir() / "demo" / "tags.csv", progress)
    progress.stage("building the completion index")
    return vocab, TagCompleter(vocab)


def _load_tokenizer(_progress):
    from trainer_core.models.tokenizers import load_sdxl_tokenizers

    return load_sdxl_tokenizers()[0]


def _spin(low: int, high: int, value: int) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    return box


def _dspin(low: float, high: float, value: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    box.setValue(value)
    return box


class GenerateTab(QWidget):
    generation_finished = Signal(object)  # GenerationResult
    generation_failed = Signal(str)
    vocabulary_ready = Signal()

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.vocabulary = None
        self.tokenizer = None
        self.job: Job | None = None
        self.last_seed: int | None = None
        self._updating_text = False
        self._vocab_generation = 0
        self.setAcceptDrops(True)
        self._build()
        self._reparse_timer = QTimer(self)
        self._reparse_timer.setSingleShot(True)
        self._reparse_timer.setInterval(250)
        self._reparse_timer.timeout.connect(self._flow_text_back)
        context.workspace_changed.connect(self.set_workspace)
        context.requested.connect(self._on_request)
        self._start_tokenizer()
        self.set_workspace(context.workspace)

    # ---- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QHBoxLayout(self)
        outer.setContentsMargins(8, 8, 8, 8)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        outer.addWidget(splitter)
        splitter.addWidget(self._scroll(self._build_prompt_column()))
        splitter.addWidget(self._scroll(self._build_settings_column()))
        splitter.addWidget(self._build_results_column())
        splitter.setStretchFactor(0, 5)
        splitter.setStretchFactor(1, 3)
        splitter.setStretchFactor(2, 4)
        splitter.setSizes([450, 400, 430])

    def _scroll(self, widget: QWidget) -> QScrollArea:
        area = QScrollArea()
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.Shape.NoFrame)
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        area.setWidget(widget)
        # No horizontal scrolling: never let the splitter squeeze a column below what its widgets need.
        area.setMinimumWidth(widget.minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width())
        return area

    def _build_prompt_column(self) -> QWidget:
        column = QWidget()
        lay = QVBoxLayout(column)
        lay.setContentsMargins(0, 0, 6, 0)
        builder = Card("Tag builder")
        builder.set_subtitle(
            "count, character, series, artists, special tags, general tags: the card's order"
        )
        self.fields: dict[str, ChipField] = {}
        for key in CHIP_FIELDS:
            fixed = COUNT_CHOICES if key == "count" else ()
            field = ChipField(key, FIELD_TITLES[key], FIELD_CATEGORIES[key], fixed)
            field.changed.connect(self._rebuild_text)
            self.fields[key] = field
            if key == "general":
                builder.body.addLayout(self._special_row())
            builder.body.addWidget(field)
        lay.addWidget(builder)

        prompt_card = Card("Prompt")
        prompt_card.set_subtitle(
            "A1111 syntax: (tag:1.5), [tag], BREAK. Edit freely; edits that parse flow back"
        )
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("1girl, solo, masterpiece, ...")
        self.prompt_edit.setFixedHeight(96)
        self.prompt_edit.textChanged.connect(self._on_prompt_text)
        prompt_card.body.addWidget(self.prompt_edit)
        row = QHBoxLayout()
        self.sync_label = QLabel("")
        self.sync_label.setObjectName("muted")
        self.sync_label.setWordWrap(True)
        self.token_label = QLabel("tokens: …")
        self.token_label.setObjectName("muted")
        row.addWidget(self.sync_label, 1)
        row.addWidget(self.token_label)
        prompt_card.body.addLayout(row)
        lay.addWidget(prompt_card)

        negative_card = Card("Negative prompt")
        negative_card.set_subtitle("")
        preset_row = QHBoxLayout()
        preset_row.addWidget(QLabel("Preset"))
        self.negative_preset = QComboBox()
        self.negative_preset.addItem("(custom)")
        self.negative_preset.addItems(list(NEGATIVE_PRESETS))
        self.negative_preset.activated.connect(self._apply_negative_preset)
        preset_row.addWidget(self.negative_preset, 1)
        negative_card.body.addLayout(preset_row)
        self.negative_edit = QPlainTextEdit()
        self.negative_edit.setFixedHeight(64)
        self.negative_edit.setPlaceholderText("empty = zero conditioning (A1111 behaviour)")
        self.negative_edit.textChanged.connect(self._update_token_counts)
        negative_card.body.addWidget(self.negative_edit)
        self.negative_tokens = QLabel("")
        self.negative_tokens.setObjectName("muted")
        self.negative_tokens.setAlignment(Qt.AlignmentFlag.AlignRight)
        negative_card.body.addWidget(self.negative_tokens)
        lay.addWidget(negative_card)
        lay.addStretch(1)
        self.negative_edit.setPlainText(NEGATIVE_PRESETS["Kohaku XL (quality + artifacts)"])
        self.negative_preset.setCurrentIndex(1)
        return column

    def _special_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        label = QLabel("Special")
        label.setMinimumWidth(84)
        label.setStyleSheet("color: #e0a33a; font-weight: 600;")
        row.addWidget(label)
        self.special: dict[str, QComboBox] = {}
        for key, choices in SPECIAL_CHOICES.items():
            combo = QComboBox()
            combo.addItem(f"({key})", "")
            for choice in choices[1:]:
                combo.addItem(choice.replace("_", " "), choice)
            combo.setToolTip(f"{key} tag from the card")
            combo.currentIndexChanged.connect(self._rebuild_text)
            self.special[key] = combo
            row.addWidget(combo, 1)
        return row

    def _build_settings_column(self) -> QWidget:
        column = QWidget()
        lay = QVBoxLayout(column)
        lay.setContentsMargins(6, 0, 6, 0)

        run_row = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("primaryButton")
        self.generate_button.clicked.connect(self.start_generation)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_generation)
        run_row.addWidget(self.generate_button, 1)
        run_row.addWidget(self.cancel_button)
        lay.addLayout(run_row)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress_label = QLabel("")
        self.progress_label.setObjectName("muted")
        lay.addWidget(self.progress)
        lay.addWidget(self.progress_label)
        self.error_label = QLabel("")
        self.error_label.setObjectName("inlineError")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        lay.addWidget(self.error_label)
        model_card = Card("Model")
        model_card.set_subtitle("")
        model_row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.model_combo.lineEdit().setPlaceholderText("base checkpoint (.safetensors or diffusers folder)")
        model_row.addWidget(self.model_combo, 1)
        browse = QPushButton("…")
        browse.setToolTip("choose a checkpoint file")
        browse.clicked.connect(self._browse_model)
        model_row.addWidget(browse)
        model_card.body.addLayout(model_row)
        self.lokr_table = QTableWidget(0, 2)
        self.lokr_table.setHorizontalHeaderLabels(["LoKr", "Strength"])
        self.lokr_table.verticalHeader().hide()
        self.lokr_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.lokr_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.lokr_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.lokr_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.lokr_table.setFixedHeight(96)
        model_card.body.addWidget(self.lokr_table)
        lokr_buttons = QHBoxLayout()
        add = QPushButton("Add LoKr…")
        add.clicked.connect(self._browse_lokr)
        remove = QPushButton("Remove")
        remove.clicked.connect(self._remove_lokr)
        lokr_buttons.addWidget(add)
        lokr_buttons.addWidget(remove)
        lokr_buttons.addStretch(1)
        model_card.body.addLayout(lokr_buttons)
        lay.addWidget(model_card)

        sampling = Card("Sampling")
        sampling.set_subtitle("")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.sampler = QComboBox()
        self.sampler.addItems(list(SAMPLERS))
        self.schedule = QComboBox()
        self.schedule.addItems(list(SCHEDULES))
        self.steps = _spin(1, 150, 28)
        self.cfg = _dspin(1.0, 30.0, 7.0, 0.5, 1)
        form.addRow("Sampler", self.sampler)
        form.addRow("Schedule", self.schedule)
        steps_row = QHBoxLayout()
        steps_row.addWidget(self.steps)
        steps_row.addWidget(QLabel("CFG"))
        steps_row.addWidget(self.cfg)
        form.addRow("Steps", steps_row)
        seed_row = QHBoxLayout()
        # QSpinBox is 32-bit signed; A1111 seeds go up to 2**32 - 2, so a 0-decimal double box holds them.
        self.seed = _dspin(-1, MAX_SEED, -1, 1, 0)
        self.seed.setSpecialValueText("random")
        self.seed.setToolTip("-1 = a new random seed each time; image i of a run uses seed + i")
        dice = QPushButton("Random")
        dice.setToolTip("a new random seed for every run (-1)")
        dice.clicked.connect(lambda: self.seed.setValue(-1))
        reuse = QPushButton("Reuse")
        reuse.setToolTip("reuse the seed of the selected / last image")
        reuse.clicked.connect(self._reuse_seed)
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(dice)
        seed_row.addWidget(reuse)
        form.addRow("Seed", seed_row)
        self.size_preset = QComboBox()
        for w, h in size_presets():
            self.size_preset.addItem(f"{w} × {h}  ({w / h:.2f})", f"{w}x{h}")  # str: tuples do not findData
        self.size_preset.addItem("custom", None)
        self.size_preset.activated.connect(self._apply_size_preset)
        form.addRow("Size", self.size_preset)
        wh_row = QHBoxLayout()
        self.width_box = _spin(64, 4096, DEFAULT_SIZE[0])
        self.height_box = _spin(64, 4096, DEFAULT_SIZE[1])
        for box in (self.width_box, self.height_box):
            box.setSingleStep(64)
            box.valueChanged.connect(self._sync_size_preset)
        wh_row.addWidget(self.width_box)
        wh_row.addWidget(QLabel("×"))
        wh_row.addWidget(self.height_box)
        form.addRow("", wh_row)
        batch_row = QHBoxLayout()
        self.batch_count = _spin(1, 100, 1)
        self.batch_size = _spin(1, 8, 1)
        batch_row.addWidget(self.batch_count)
        batch_row.addWidget(QLabel("×"))
        batch_row.addWidget(self.batch_size)
        form.addRow("Batch", batch_row)
        self.emphasis = QComboBox()
        self.emphasis.addItems(list(EMPHASIS_MODES))
        self.emphasis.setCurrentText(DEFAULT_EMPHASIS)
        self.emphasis.setToolTip('The card advises "No norm" with emphasis 1.5-2.5')
        form.addRow("Emphasis", self.emphasis)
        sampling.body.addLayout(form)
        lay.addWidget(sampling)

        self.hires_group = QGroupBox("Hires fix")
        self.hires_group.setCheckable(True)
        self.hires_group.setChecked(False)
        hform = QFormLayout(self.hires_group)
        self.hires_scale = _dspin(1.0, 4.0, 1.5, 0.05)
        self.hires_steps = _spin(0, 150, 0)
        self.hires_steps.setSpecialValueText("same as steps")
        self.denoise = _dspin(0.01, 1.0, 0.5, 0.05)
        self.upscaler = QComboBox()
        self.upscaler.addItems(list(UPSCALERS))
        hform.addRow("Upscale by", self.hires_scale)
        hform.addRow("Hires steps", self.hires_steps)
        hform.addRow("Denoising", self.denoise)
        hform.addRow("Upscaler", self.upscaler)
        lay.addWidget(self.hires_group)

        lay.addStretch(1)
        self._sync_size_preset()
        return column

    def _build_results_column(self) -> QWidget:
        column = QWidget()
        lay = QVBoxLayout(column)
        lay.setContentsMargins(6, 0, 0, 0)
        self.preview = QLabel(
            "Generated images appear here.\nDrop a PNG from A1111 or this app to restore its settings."
        )
        self.preview.setObjectName("muted")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumHeight(260)
        self.preview.setFrameShape(QFrame.Shape.StyledPanel)
        lay.addWidget(self.preview, 3)
        self.gallery = GalleryView()
        self.gallery.image_selected.connect(self._show_image)
        lay.addWidget(self.gallery, 2)
        self.params_view = QPlainTextEdit()
        self.params_view.setReadOnly(True)
        self.params_view.setPlaceholderText("parameters of the selected image")
        self.params_view.setFixedHeight(110)
        lay.addWidget(self.params_view)
        use = QPushButton("Use these parameters")
        use.clicked.connect(lambda: self.apply_infotext(self.params_view.toPlainText()))
        grid = QGridLayout()
        grid.addWidget(use, 0, 0)
        self.output_label = QLabel("")
        self.output_label.setObjectName("pathLabel")
        grid.addWidget(self.output_label, 0, 1)
        lay.addLayout(grid)
        return column

    # ---- workspace, vocabulary, tokenizer -----------------------------------------------------------------
    def set_workspace(self, ws: Workspace | None) -> None:
        self.workspace = ws
        self.model_combo.clear()
        for path in self._candidate_models(ws):
            self.model_combo.addItem(path.name, str(path))
        self.output_dir = (ws.outputs_path / "generate") if ws is not None else None
        shown = ""
        if self.output_dir is not None and ws is not None:
            try:
                shown = str(self.output_dir.relative_to(ws.root))
            except ValueError:
                shown = self.output_dir.name
        self.output_label.setText(f"saved to {shown}" if shown else "")
        self.output_label.setToolTip(str(self.output_dir) if self.output_dir else "")
        self._start_vocabulary(ws)

    def _candidate_models(self, ws: Workspace | None) -> list[Path]:
        if ws is None:
            return []
        found: list[Path] = []
        # A merged base ("base") first: it is what the card generates with; then the other roles, then models/.
        roles = sorted(ws.checkpoints, key=lambda r: (r != "base", r != "original", r))
        for role in roles:
            path = ws.checkpoint_path(role)
            if path is not None and path.exists():
                found.append(path)
        if ws.models_path.is_dir():
            for path in sorted(ws.models_path.rglob("*.safetensors")):
                if path not in found and "lokr" not in path.name.lower():
                    found.append(path)
        return found

    def _start_vocabulary(self, ws: Workspace | None) -> None:
        self._vocab_generation += 1
        generation = self._vocab_generation
        job = Job(lambda p: _load_vocabulary(ws, p), name="Load tag vocabulary", parent=self)
        job.succeeded.connect(lambda result: self._on_vocabulary(generation, result))
        job.failed.connect(lambda text: self.context.show_status(f"tag autocompletion unavailable: {text}"))
        job.start()

    def _on_vocabulary(self, generation: int, result) -> None:
        if generation != self._vocab_generation:
            return
        self.vocabulary, completer = result
        for field in self.fields.values():
            field.completer_source = completer
            field.count_lookup = self._post_count
        self.vocabulary_ready.emit()

    def _post_count(self, name: str) -> int | None:
        tag = self.vocabulary.get(name) if self.vocabulary is not None else None
        return tag.count if tag is not None else None

    def _start_tokenizer(self) -> None:
        job = Job(_load_tokenizer, name="Load tokenizer", parent=self)
        job.succeeded.connect(self._on_tokenizer)
        job.start()

    def _on_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._update_token_counts()

    # ---- prompt text <-> chips ----------------------------------------------------------------------------
    def prompt_fields(self) -> PromptFields:
        fields = PromptFields()
        for key, field in self.fields.items():
            fields.chips[key] = field.values()
        for key, combo in self.special.items():
            fields.special[key] = combo.currentData() or ""
        return fields

    def _rebuild_text(self) -> None:
        if self._updating_text:
            return
        self._updating_text = True
        try:
            self.prompt_edit.setPlainText(self.prompt_fields().to_text())
        finally:
            self._updating_text = False
        self.sync_label.setText("")
        self._update_token_counts()

    def _on_prompt_text(self) -> None:
        self._update_token_counts()
        if not self._updating_text:
            self._reparse_timer.start()

    def _flow_text_back(self) -> None:
        fields = fields_from_text(self.prompt_edit.toPlainText(), self.vocabulary)
        if fields is None:
            self.sync_label.setText("text only: this prompt cannot be shown as chips")
            return
        self._updating_text = True
        try:
            for key, field in self.fields.items():
                field.set_values(fields.chips[key])
            for key, combo in self.special.items():
                index = combo.findData(fields.special[key])
                combo.setCurrentIndex(max(0, index))
        finally:
            self._updating_text = False
        self.sync_label.setText("chips updated from the text")

    def _update_token_counts(self) -> None:
        if self.tokenizer is None:
            return
        self.token_label.setText(self._counter(self.prompt_edit.toPlainText()))
        self.token_label.setToolTip(self._syntax_error(self.prompt_edit.toPlainText()))
        self.negative_tokens.setText(self._counter(self.negative_edit.toPlainText()))

    def _counter(self, text: str) -> str:
        from trainer_core.generate.prompt import PromptSyntaxError, tokenize_prompt

        try:
            chunks = tokenize_prompt(
                strip_extra_networks(text)[0], self.tokenizer, emphasis=self.emphasis.currentText()
            )
        except PromptSyntaxError as exc:
            where = f" at character {exc.position + 1}" if exc.position is not None else ""
            return f"⚠ syntax error{where}"
        per_chunk = [ids.index(chunks.eos_id) - 1 for ids in chunks.chunks]
        detail = " + ".join(f"{n}/75" for n in per_chunk) if len(per_chunk) > 1 else ""
        return f"tokens {chunks.counter_text()}" + (f"  ({detail})" if detail else "")

    @staticmethod
    def _syntax_error(text: str) -> str:
        from trainer_core.generate.prompt import PromptSyntaxError, parse_prompt_attention

        try:
            parse_prompt_attention(strip_extra_networks(text)[0])
        except PromptSyntaxError as exc:
            return str(exc)
        return "tokens used / next multiple of 75 (one CLIP chunk holds 75 tokens)"

    def _apply_negative_preset(self, index: int) -> None:
        name = self.negative_preset.itemText(index)
        if name in NEGATIVE_PRESETS:
            self.negative_edit.setPlainText(NEGATIVE_PRESETS[name])

    # ---- model panel --------------------------------------------------------------------------------------
    def model_path(self) -> Path | None:
        index = self.model_combo.currentIndex()
        text = self.model_combo.currentText().strip()
        if index >= 0 and self.model_combo.itemText(index) == text and self.model_combo.itemData(index):
            return Path(self.model_combo.itemData(index))
        return Path(text) if text else None

    def set_model(self, path: Path) -> None:
        path = Path(path)
        index = self.model_combo.findData(str(path))
        if index < 0:
            self.model_combo.insertItem(0, path.name, str(path))
            index = 0
        self.model_combo.setCurrentIndex(index)

    def add_lokr(self, path: Path, multiplier: float = 1.0) -> None:
        path = Path(path)
        for row in range(self.lokr_table.rowCount()):
            if self.lokr_table.item(row, 0).data(Qt.ItemDataRole.UserRole) == str(path):
                self.lokr_table.cellWidget(row, 1).setValue(multiplier)
                return
        row = self.lokr_table.rowCount()
        self.lokr_table.insertRow(row)
        item = QTableWidgetItem(path.stem)
        item.setData(Qt.ItemDataRole.UserRole, str(path))
        item.setToolTip(str(path))
        self.lokr_table.setItem(row, 0, item)
        self.lokr_table.setCellWidget(row, 1, _dspin(-4.0, 4.0, multiplier, 0.05))

    def lokrs(self) -> list[tuple[Path, float]]:
        out = []
        for row in range(self.lokr_table.rowCount()):
            out.append((Path(self.lokr_table.item(row, 0).data(Qt.ItemDataRole.UserRole)),
                        float(self.lokr_table.cellWidget(row, 1).value())))  # fmt: skip
        return out

    def _remove_lokr(self) -> None:
        rows = sorted({i.row() for i in self.lokr_table.selectedIndexes()}, reverse=True)
        for row in rows or ([self.lokr_table.rowCount() - 1] if self.lokr_table.rowCount() else []):
            self.lokr_table.removeRow(row)

    def _browse_model(self) -> None:
        start = str(self.workspace.models_path) if self.workspace else ""
        path, _ = QFileDialog.getOpenFileName(
            self, "Base checkpoint", start, "SDXL checkpoint (*.safetensors)"
        )
        if path:
            self.set_model(Path(path))

    def _browse_lokr(self) -> None:
        start = str(self.workspace.runs_path) if self.workspace else ""
        paths, _ = QFileDialog.getOpenFileNames(self, "LoKr files", start, "LoKr (*.safetensors)")
        for path in paths:
            self.add_lokr(Path(path))

    def _on_request(self, action: str, payload: object) -> None:
        if action == "generate.set_model" and payload:
            self.set_model(Path(payload))
        elif action == "generate.add_lokr" and payload:
            self.add_lokr(Path(payload))

    # ---- settings -----------------------------------------------------------------------------------------
    def _apply_size_preset(self, index: int) -> None:
        size = self.size_preset.itemData(index)
        if size:
            width, height = (int(v) for v in size.split("x"))
            self.width_box.setValue(width)
            self.height_box.setValue(height)

    def _sync_size_preset(self) -> None:
        index = self.size_preset.findData(f"{self.width_box.value()}x{self.height_box.value()}")
        self.size_preset.blockSignals(True)
        self.size_preset.setCurrentIndex(index if index >= 0 else self.size_preset.count() - 1)
        self.size_preset.blockSignals(False)

    def _reuse_seed(self) -> None:
        if self.last_seed is not None:
            self.seed.setValue(float(self.last_seed))

    def build_request(self) -> GenerationRequest:
        from trainer_core.generate.lokr_apply import LokrUse

        model = self.model_path()
        return GenerationRequest(
            model=model if model is not None else Path(""),
            prompt=self.prompt_edit.toPlainText(),
            negative=self.negative_edit.toPlainText(),
            lokrs=[LokrUse(p, m) for p, m in self.lokrs()],
            steps=self.steps.value(),
            cfg=self.cfg.value(),
            sampler=self.sampler.currentText(),
            schedule=self.schedule.currentText(),
            seed=int(self.seed.value()),
            width=self.width_box.value(),
            height=self.height_box.value(),
            batch_count=self.batch_count.value(),
            batch_size=self.batch_size.value(),
            emphasis=self.emphasis.currentText(),
            hires=self.hires_group.isChecked(),
            hires_scale=self.hires_scale.value(),
            hires_steps=self.hires_steps.value(),
            denoise=self.denoise.value(),
            hires_upscaler=self.upscaler.currentText(),
            out_dir=self.output_dir,
        )

    # ---- generation ---------------------------------------------------------------------------------------
    def start_generation(self) -> None:
        from trainer_core.generate.pipeline import generate

        if self.job is not None and self.job.is_running:
            return
        self._set_error(None)
        if self.model_path() is None:
            self._set_error("Choose a base checkpoint first (Model panel).")
            return
        request = self.build_request()
        self.job = Job(lambda p: generate(request, p), name="Generate", parent=self)
        self.job.progress.connect(self._on_progress)
        self.job.succeeded.connect(self._on_generated)
        self.job.failed.connect(self._on_failed)
        self.job.cancelled.connect(lambda: self._finish("cancelled"))
        self.generate_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.progress_label.setText("starting…")
        self.job.start()

    def cancel_generation(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.progress_label.setText("cancelling after the current step…")

    def _on_progress(self, event) -> None:
        if event.total:
            self.progress.setRange(0, int(event.total))
            self.progress.setValue(int(event.done))
            eta = (
                f"  ~{event.eta_s:.0f} s left" if event.eta_s is not None and event.done < event.total else ""
            )
            self.progress_label.setText(f"{event.message}: step {int(event.done)}/{int(event.total)}{eta}")
        else:
            self.progress.setRange(0, 0)
            self.progress_label.setText(event.message)

    def _on_generated(self, result) -> None:
        item = None
        for image in result.images:
            item = self.gallery.add_image(pil_to_qimage(image.image), image.path, image.infotext,
                                          str(image.seed))  # fmt: skip
            self.last_seed = image.seed
        if item is not None:
            self.gallery.setCurrentItem(item)
        self._finish(f"{len(result.images)} image(s) in {result.seconds:.1f} s")
        if result.warnings:
            self._set_error("\n".join(result.warnings))
        self.generation_finished.emit(result)

    def _on_failed(self, text: str) -> None:
        self._set_error(text)
        self._finish("failed")
        self.generation_failed.emit(text)

    def _finish(self, text: str) -> None:
        self.generate_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if text != "failed" and text != "cancelled" else 0)
        self.progress_label.setText(text)

    def _set_error(self, text: str | None) -> None:
        self.error_label.setText(text or "")
        self.error_label.setVisible(bool(text))

    # ---- gallery, parameters, drag and drop ---------------------------------------------------------------
    def _show_image(self, path, infotext: str, qimage) -> None:
        if qimage is not None:
            pix = QPixmap.fromImage(qimage)
            self.preview.setPixmap(pix.scaled(self.preview.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                              Qt.TransformationMode.SmoothTransformation))  # fmt: skip
        self.params_view.setPlainText(infotext)
        seed = parse_infotext(infotext).get("Seed")
        if seed and seed.isdigit():
            self.last_seed = int(seed)

    def apply_infotext(self, text: str) -> list[str]:
        """Put an A1111 infotext's settings into the widgets; returns notes about what could not be applied."""
        if not text.strip():
            return []
        params = parse_infotext(text)
        notes: list[str] = []
        prompt, tags = strip_extra_networks(params["Prompt"])
        for kind, name, args in tags:
            found = self._find_lokr(name) if kind == "lora" else None
            if found is None:
                notes.append(f"<{kind}:{name}> not found in the workspace; it was kept out of the prompt")
                continue
            from trainer_core.generate.prompt import extra_network_multiplier

            self.add_lokr(found, extra_network_multiplier(args))
        self.prompt_edit.setPlainText(prompt.rstrip())
        self.negative_edit.setPlainText(params.get("Negative prompt", ""))
        self.negative_preset.setCurrentIndex(0)
        self._set_combo(self.sampler, params.get("Sampler"), notes, "sampler")
        schedule = params.get("Schedule type", "Automatic")
        self.schedule.setCurrentText(schedule if schedule in SCHEDULES else "Automatic")
        self._set_number(self.steps, params.get("Steps"), int)
        self._set_number(self.cfg, params.get("CFG scale"), float)
        self._set_number(self.seed, params.get("Seed"), float)
        self._set_number(self.width_box, params.get("Size-1"), int)
        self._set_number(self.height_box, params.get("Size-2"), int)
        self._set_combo(self.emphasis, params.get("Emphasis"), notes, "emphasis mode")
        hires = "Hires upscale" in params or "Denoising strength" in params and "Hires steps" in params
        self.hires_group.setChecked(hires)
        if hires:
            self._set_number(self.hires_scale, params.get("Hires upscale"), float)
            self._set_number(self.hires_steps, params.get("Hires steps", "0"), int)
            self._set_number(self.denoise, params.get("Denoising strength"), float)
            self._set_combo(self.upscaler, params.get("Hires upscaler"), notes, "upscaler")
        self._flow_text_back()
        if notes:
            self._set_error("\n".join(notes))
        self.context.show_status("parameters restored")
        return notes

    def _find_lokr(self, name: str) -> Path | None:
        if self.workspace is None:
            return None
        for root in (self.workspace.models_path, self.workspace.runs_path):
            if root.is_dir():
                for path in root.rglob(f"{name}.safetensors"):
                    return path
        return None

    @staticmethod
    def _set_combo(combo: QComboBox, value: str | None, notes: list[str], what: str) -> None:
        if not value:
            return
        index = combo.findText(value)
        if index < 0:
            notes.append(f"{what} {value!r} is not available here; kept {combo.currentText()!r}")
            return
        combo.setCurrentIndex(index)

    @staticmethod
    def _set_number(box, value: str | None, kind) -> None:
        try:
            if value is not None:
                box.setValue(kind(float(value)) if kind is int else kind(value))
        except ValueError:
            pass

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and urls[0].toLocalFile().lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = Path(event.mimeData().urls()[0].toLocalFile())
        self.restore_from_image(path)
        event.acceptProposedAction()

    def restore_from_image(self, path: Path) -> None:
        from trainer_core.errors import KxlError

        try:
            text = read_png_parameters(path)
        except KxlError as exc:
            self._set_error(str(exc))
            return
        if not text:
            self._set_error(f"{path.name} has no generation parameters")
            return
        self._set_error(None)
        self.apply_infotext(text)


def create_tab(context: AppContext) -> QWidget:
    return GenerateTab(context)
