"""Generate tab: tag builder in the Kohaku XL card's order, A1111 prompt text, model + LoKr panel, sampling and
hires settings, a gallery with history, and PNG-info restore by drag and drop.

Heavy work runs in `Job`s: the tag vocabulary + completion index, the CLIP tokenizer for the token counter, and
generation itself (trainer_core.generate.pipeline.generate, the same code the CLI and the trainer's samples use).

Cross-tab actions handled here (AppContext.request):
- "generate.set_model" (Path): use this checkpoint as the base model;
- "generate.add_lokr" (Path): add this LoKr to the list at strength 1.0 and select the base it was trained on
  (named in its metadata) among the known models; when that base is not found here the current one stays and an
  inline note says so.

Nothing here walks folders or reads files on the GUI thread: the known models and LoKr files, a LoKr's header and
a dropped PNG's parameters are read in `Job`s. The first generation of a session imports torch and diffusers
(~2,000 modules); that happens in a warm-up job when the tab is first shown, inside `quiet_gc()` (see jobs.py),
so the collector's full passes over that import do not freeze the window.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QPixmap, QShowEvent
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
from ..jobs import Job, quiet_gc
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

    with quiet_gc():  # long-lived: no full collection over it while it is built, nor after
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

    with quiet_gc():
        return load_sdxl_tokenizers()[0]


_engine_lock = threading.Lock()
_engine_warm = False


def warm_engine(progress=None) -> None:
    """Import what the first generation of a session needs, once per process, with the collector paused and the
    result frozen (jobs.quiet_gc): measured on the demo, this turns 0.2-0.6 s GUI stalls at the first Generate
    into none. A second caller waits for the first one's imports."""
    global _engine_warm
    with _engine_lock:
        if _engine_warm:
            return
        if progress is not None:
            progress.stage("loading the generation engine (first run only)")
        with quiet_gc():
            from trainer_core.hf_quiet import quiet_hf

            with quiet_hf():
                import diffusers
                import transformers

                for name in ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "AutoencoderKL",
                             "UNet2DConditionModel", "EulerDiscreteScheduler"):  # fmt: skip
                    getattr(diffusers, name)  # diffusers and transformers import their classes lazily
                for name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
                    getattr(transformers, name)
                import trainer_core.generate.lokr_apply  # noqa: F401
                import trainer_core.generate.pipeline  # noqa: F401
                import trainer_core.generate.samplers  # noqa: F401
                import trainer_core.models.loading  # noqa: F401
        _engine_warm = True


def _run_generation(request: GenerationRequest, progress):
    from trainer_core.generate.pipeline import generate

    warm_engine(progress)
    return generate(request, progress)


@dataclass
class KnownModels:
    """What the workspace holds for the model panel, found by `scan_models` in a worker."""

    # Base checkpoints (the workspace's roles first), the full SHA-256 of those whose hash is cached, and LoKr
    # files by file stem (models/ first, then runs/).
    bases: list[Path] = dataclasses.field(default_factory=list)
    sha256: dict[Path, str] = dataclasses.field(default_factory=dict)
    lokrs: dict[str, Path] = dataclasses.field(default_factory=dict)


def scan_models(ws: Workspace | None) -> KnownModels:
    from trainer_core.hashing import cached_sha256

    known = KnownModels()
    if ws is None:
        return known
    # A merged base ("base") first: it is what the card generates with; then the other roles, then models/.
    roles = sorted(ws.checkpoints, key=lambda r: (r != "base", r != "original", r))
    for role in roles:
        path = ws.checkpoint_path(role)
        if path is not None and path.exists() and path not in known.bases:
            known.bases.append(path)
    if ws.models_path.is_dir():
        for path in sorted(ws.models_path.rglob("*.safetensors")):
            if path not in known.bases and "lokr" not in path.name.lower():
                known.bases.append(path)
    for path in known.bases:
        try:
            digest = cached_sha256(path) if path.is_file() else None
        except OSError:
            digest = None
        if digest:
            known.sha256[path] = digest
    for root in (ws.models_path, ws.runs_path):
        if root.is_dir():
            for path in sorted(root.rglob("*.safetensors")):
                known.lokrs.setdefault(path.stem, path)
    return known


# Metadata keys of a LoKr that say which base it was trained on, most specific first. `ss_*` are sd-scripts'
# (ss_new_sd_model_hash is the base file's SHA-256, ss_sd_model_hash the legacy short hash); the `kxl.*` keys
# are ours for the base's path and SHA-256.
BASE_PATH_KEYS = ("kxl.base_model",)
BASE_HASH_KEYS = ("kxl.base_sha256", "ss_new_sd_model_hash", "ss_sd_model_hash")
BASE_NAME_KEYS = ("ss_sd_model_name",)


@dataclass(frozen=True)
class BaseHint:
    """What a LoKr's metadata says about its base model (empty strings where it says nothing)."""

    path: str = ""
    sha256: str = ""
    name: str = ""

    @property
    def shown(self) -> str:
        return Path(self.path).name if self.path else (self.name or (self.sha256[:10] if self.sha256 else ""))


def read_base_hint(lokr: Path) -> BaseHint:
    """The base named in a LoKr's safetensors header (read in a worker: header only, no tensor data)."""
    from trainer_core.models.safetensors_header import read_header

    meta = read_header(lokr).metadata

    def first(keys: tuple[str, ...]) -> str:
        return next((meta[k].strip() for k in keys if meta.get(k, "").strip()), "")

    return BaseHint(first(BASE_PATH_KEYS), first(BASE_HASH_KEYS).lower(), first(BASE_NAME_KEYS))


def match_base(hint: BaseHint, known: KnownModels) -> tuple[Path | None, str]:
    """The known base a LoKr was trained on and how it was recognised ("path", "hash" or "name"); (None, "")
    when none fits. A path that exists on disk but is not in the list counts as found."""
    if hint.path:
        wanted = Path(hint.path)
        for path in known.bases:
            if _same_file(path, wanted):
                return path, "path"
    if hint.sha256:
        for path in known.bases:
            digest = known.sha256.get(path, "")
            if digest and digest.startswith(hint.sha256):  # a short A1111 hash is a prefix of the full one
                return path, "hash"
    if hint.path and Path(hint.path).is_file():
        return Path(hint.path), "path"
    if hint.name:
        for path in known.bases:
            if path.name == hint.name:
                return path, "name"
    return None, ""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a == b or a.resolve() == b.resolve()
    except OSError:
        return False


def find_lokr_base(
    lokr: Path, ws: Workspace | None, known: KnownModels | None
) -> tuple[BaseHint, Path | None, str]:
    """(what the LoKr names as its base, the known base that matches or None, how it matched), in a worker;
    `known` None (the panel's scan has not arrived yet): scan here."""
    hint = read_base_hint(lokr)
    base, how = match_base(hint, known if known is not None else scan_models(ws))
    return hint, base, how


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
    models_ready = Signal()  # the model panel's list of known models arrived
    lokr_base_checked = Signal(str)  # after "generate.add_lokr": the note shown ("" = its base was selected)
    parameters_restored = Signal(list)  # notes, after a dropped PNG's parameters were applied

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.vocabulary = None
        self.tokenizer = None
        self.job: Job | None = None
        self.last_seed: int | None = None
        self.known: KnownModels | None = None  # None until the scan of the workspace's models arrives
        self._updating_text = False
        self._vocab_generation = 0
        self._models_generation = 0
        self._lokr_generation = 0
        self._pending_model: Path | None = None  # chosen before the scan arrived: kept over the default
        self._warm_started = False
        self._jobs: list[Job] = []
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
        self.model_note = QLabel("")
        self.model_note.setObjectName("muted")
        self.model_note.setWordWrap(True)
        self.model_note.hide()
        model_card.body.addWidget(self.model_note)
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
        self.known = None
        self._pending_model = None
        self._show_model_note("")
        self.refresh_models()
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

    def refresh_models(self) -> None:
        """Look for base checkpoints and LoKr files in the workspace (a worker); the list follows when it lands."""
        self._models_generation += 1
        generation, ws = self._models_generation, self.workspace
        self._start(Job(lambda _p: scan_models(ws), name="Find models", parent=self),
                    lambda known: self._on_models(generation, known))  # fmt: skip

    def _on_models(self, generation: int, known: KnownModels) -> None:
        if generation != self._models_generation:
            return
        self.known = known
        chosen = self._pending_model or self.model_path()  # set or typed before the scan, or the current one
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for path in known.bases:
            self.model_combo.addItem(path.name, str(path))
        self.model_combo.blockSignals(False)
        if chosen is not None:
            self.set_model(chosen)
        elif self.model_combo.count():
            self.model_combo.setCurrentIndex(0)
        self._pending_model = None
        self.models_ready.emit()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._warm_started:
            # While the user writes a prompt, not when they press Generate.
            self._warm_started = True
            # A failure here shows again, with its message, when Generate runs the same imports.
            job = Job(warm_engine, name="Load generation engine", parent=self)
            self._start(job, lambda _r: None, on_fail=lambda _t: None)
        elif self.known is not None:
            self.refresh_models()  # a LoKr may have been trained since

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
        if self.known is None:
            self._pending_model = path  # the scan, when it lands, keeps this choice
        index = self.model_combo.findData(str(path))
        if index < 0:
            self.model_combo.insertItem(0, path.name, str(path))
            index = 0
        self.model_combo.setCurrentIndex(index)

    def select_base_of(self, lokr: Path) -> None:
        """Select the base `lokr` was trained on (its metadata names it), found among the known models by path,
        hash or file name; else keep the current one and say so under the model box."""
        self._lokr_generation += 1
        generation, ws, known = self._lokr_generation, self.workspace, self.known
        self._start(
            Job(lambda _p: find_lokr_base(Path(lokr), ws, known), name="Read LoKr metadata", parent=self),
            lambda result: self._on_lokr_base(generation, Path(lokr), *result),
            on_fail=lambda text: self._on_lokr_base_failed(generation, text),
        )

    def _on_lokr_base(self, generation: int, lokr: Path, hint: BaseHint, base: Path | None, how: str) -> None:
        if generation != self._lokr_generation:
            return
        current = self.model_path()
        if base is not None:
            self.set_model(base)
            note = ""
            if current is not None and not _same_path(current, base):
                self.context.show_status(f"{lokr.name} was trained on {base.name} (found by {how}): selected")
        elif hint.shown:
            kept = f"kept {current.name}" if current is not None else "choose a base checkpoint"
            note = f"{lokr.name} was trained on {hint.shown}, which is not among the models here; {kept}."
        else:
            kept = f"kept {current.name}" if current is not None else "choose a base checkpoint"
            note = f"{lokr.name} does not say which base it was trained on; {kept}."
        self._show_model_note(note)
        self.lokr_base_checked.emit(note)

    def _on_lokr_base_failed(self, generation: int, text: str) -> None:
        if generation == self._lokr_generation:
            self._show_model_note(f"Could not read the LoKr's metadata: {text}")
            self.lokr_base_checked.emit(text)

    def _show_model_note(self, text: str) -> None:
        self.model_note.setText(text)
        self.model_note.setVisible(bool(text))

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
            self._show_model_note("")
            self.set_model(Path(payload))
        elif action == "generate.add_lokr" and payload:
            self.add_lokr(Path(payload))
            self.select_base_of(Path(payload))

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
        if self.job is not None and self.job.is_running:
            return
        self._set_error(None)
        if self.model_path() is None:
            self._set_error("Choose a base checkpoint first (Model panel).")
            return
        request = self.build_request()
        self.job = Job(lambda p: _run_generation(request, p), name="Generate", parent=self)
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
        else:  # a stage without steps (loading, hires upscale, VAE decode): a busy bar and its name
            self.progress.setRange(0, 0)
            self.progress_label.setText(f"{event.message}…")

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
        """A LoKr file of the workspace by the name a `<lora:NAME:..>` tag gives (we and A1111 drop `,` and `:` from
        file stems there), from the last scan (no folder walk here)."""
        if self.known is None:
            return None
        from trainer_core.generate.infotext import lora_name_matches

        exact = self.known.lokrs.get(name)
        return exact or next(
            (p for stem, p in self.known.lokrs.items() if lora_name_matches(name, stem)), None
        )

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
        """Read a PNG's A1111 parameters in a worker and apply them; `parameters_restored` follows. When they name
        LoKrs, the workspace is looked through again in the same worker (one may have been trained since)."""
        path, ws = Path(path), self.workspace

        def read(_progress) -> tuple[str, KnownModels | None]:
            text = read_png_parameters(path) or ""
            return text, (scan_models(ws) if "<lora:" in text else None)

        self._start(
            Job(read, name="Read PNG parameters", parent=self),
            lambda result: self._on_png_read(path, result[0], result[1] if self.workspace is ws else None),
            on_fail=lambda message: self._on_png_read(path, "", None, message),
        )

    def _on_png_read(self, path: Path, text: str, known: KnownModels | None, error: str = "") -> None:
        if not text:
            message = error or f"{path.name} has no generation parameters"
            self._set_error(message)
            self.parameters_restored.emit([message])
            return
        if known is not None and self.known is None:
            self._on_models(self._models_generation, known)  # a fresh scan of the same workspace
        elif known is not None and self.known is not None:
            self.known = dataclasses.replace(self.known, lokrs=known.lokrs)
        self._set_error(None)
        self.parameters_restored.emit(self.apply_infotext(text))

    # ---- plumbing -----------------------------------------------------------------------------------------
    def _start(self, job: Job, on_success, on_fail=None) -> Job:
        job.succeeded.connect(on_success)
        job.failed.connect(on_fail or (lambda text: self._set_error(text)))
        job.finished.connect(lambda: self._jobs.remove(job) if job in self._jobs else None)
        self._jobs.append(job)
        return job.start()

    def wait_for_jobs(self, timeout_s: float = 30.0) -> bool:
        """Block until the tab's helper jobs end (tests and screenshots); results arrive via the event loop."""
        return all(job.wait(timeout_s) for job in list(self._jobs))


def _same_path(a: Path, b: Path) -> bool:
    return str(a) == str(b)


def create_tab(context: AppContext) -> QWidget:
    return GenerateTab(context)
