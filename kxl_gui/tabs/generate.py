"""Generate tab: tag builder in the Kohaku XL card's order, A1111 prompt text, model + LoKr panel, sampling and
hires settings, a gallery with history, and PNG-info restore by drag and drop.

The form is a `GenerationForm` (kxl_gui/state/generate_form.py); the columns bind their widgets to its fields
(generate_prompt_panel.py, generate_settings_panel.py) and Generate sends `form.to_engine()`. A dropped PNG, or
"Use these parameters" on a gallery image, shows `GenerationForm.from_infotext(...)`.

Heavy work runs in workers (generate_jobs.py): the tag vocabulary + completion index, the CLIP tokenizer, the
known models and LoKr files, a LoKr's header, a dropped PNG's parameters, and generation itself
(trainer_core.generate.pipeline.generate, the same code the CLI and the trainer's samples use). Requests that
a newer one replaces (a workspace switch, another drop) are `LatestRequest`s: a stale answer is never shown.

Cross-tab actions handled here (AppContext.request):
- "generate.set_model" (Path): use this checkpoint as the base model;
- "generate.add_lokr" (Path): add this LoKr to the list at strength 1.0 and select the base it was trained on
  (named in its metadata) among the known models; when that base is not found here the current one stays and an
  inline note says so;
- "generate.compare_run" (Path of a training run): set the X/Y/Z grid up to compare the run's saved states (X)
  over two seeds (Y), with the run's base, first sample prompt and sample settings in the form
  (generate_grid_panel.py); the user then presses Generate grid.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QShowEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from trainer_core.generate.samplers import SAMPLERS, default_steps
from trainer_core.workspace import Workspace
from trainer_core.workspace_queries import BaseHint, KnownModels, find_lokr_base, scan_models

from ..context import AppContext
from ..jobs import Job
from ..kit.form_binding import FormBinding
from ..kit.latest_request import LatestRequest
from ..state.generate_form import DEFAULT_SIZE, GenerationForm, size_presets
from ..state.grid_form import CompareSetup, apply_compare
from ..widgets.generate_gallery import pil_to_qimage
from .generate_grid_panel import GridPanel
from .generate_jobs import (
    load_tokenizer,
    load_vocabulary,
    model_named,
    read_dropped_image,
    run_generation,
    warm_engine,
)
from .generate_prompt_panel import PromptPanel
from .generate_results_panel import ResultsPanel
from .generate_settings_panel import SettingsPanel

TAB_TITLE = "Generate"
SAMPLER_DEFAULT_STEPS = frozenset(spec.default_steps for spec in SAMPLERS.values())
TAB_ORDER = 50
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
__all__ = ["GenerateTab", "create_tab", "size_presets"]
PROMPT_WIDGETS = (
    "fields",
    "special",
    "prompt_edit",
    "negative_edit",
    "negative_preset",
    "sync_label",
    "token_label",
)
SETTINGS_WIDGETS = ("generate_button", "cancel_button", "progress", "progress_label", "error_label", "model_combo",
                    "model_note", "lokr_table", "sampler", "schedule", "steps", "cfg", "seed", "size_preset",
                    "width_box", "height_box", "batch_count", "batch_size", "emphasis", "hires_group", "hires_scale",
                    "hires_steps", "denoise", "upscaler")  # fmt: skip


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
        self.workspace: Workspace | None = None
        self.job: Job | None = None  # the running generation
        self.last_seed: int | None = None
        self.known: KnownModels | None = None  # None until the scan of the workspace's models arrives
        self._warm_started = False
        self._jobs: list[Job] = []
        self.binding = FormBinding(GenerationForm(), self)
        self.binding.edited.connect(self._on_field_edited)
        self.models_request = LatestRequest("Find models", self)
        self.vocabulary_request = LatestRequest("Load tag vocabulary", self)
        self.lokr_request = LatestRequest("Read LoKr metadata", self)
        self.png_request = LatestRequest("Read PNG parameters", self)
        self.setAcceptDrops(True)
        self._build()
        context.workspace_changed.connect(self.set_workspace)
        context.requested.connect(self._on_request)
        self.set_workspace(context.workspace)

    @property
    def form(self) -> GenerationForm:
        return self.binding.form  # type: ignore[return-value]

    @property
    def vocabulary(self):
        return self.prompt_panel.vocabulary

    @property
    def tokenizer(self):
        return self.prompt_panel.tokenizer

    # ---- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.prompt_panel = PromptPanel(self.binding, lambda: self.form.emphasis)
        self.settings = SettingsPanel(self.binding)
        p, s = self.prompt_panel, self.settings
        # The widgets a user drives, under the tab's names (tests and the screenshot script use them).
        for name in PROMPT_WIDGETS:
            setattr(self, name, getattr(p, name))
        for name in SETTINGS_WIDGETS:
            setattr(self, name, getattr(s, name))
        s.generate_button.clicked.connect(self.start_generation)
        s.cancel_button.clicked.connect(self.cancel_generation)
        s.browse_model_button.clicked.connect(self._browse_model)
        s.add_lokr_button.clicked.connect(self._browse_lokr)
        s.reuse_seed_button.clicked.connect(self._reuse_seed)
        s.emphasis.currentTextChanged.connect(lambda _t: p.update_token_counts())

        outer = QHBoxLayout(self)
        outer.setContentsMargins(8, 8, 8, 8)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        outer.addWidget(splitter)
        results = ResultsPanel()
        results.seed_shown.connect(lambda seed: setattr(self, "last_seed", seed))
        results.use_parameters.connect(self.apply_infotext)
        self.results = results
        self.preview, self.gallery, self.params_view = results.preview, results.gallery, results.params_view
        self.use_parameters_button, self.output_label = results.use_parameters_button, results.output_label
        # The grid runs the form's settings over its axes: it sits under them, and shows results in the gallery.
        self.grid_panel = GridPanel(lambda: self.form, self.gallery)
        self.grid_panel.compare_ready.connect(self._apply_compare)
        middle = QWidget()
        column = QVBoxLayout(middle)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(s)
        column.addWidget(self.grid_panel)
        splitter.addWidget(_scroll(p))
        splitter.addWidget(_scroll(middle))
        splitter.addWidget(results)
        for i, stretch in enumerate((5, 3, 4)):
            splitter.setStretchFactor(i, stretch)
        splitter.setSizes([450, 400, 430])

    # ---- workspace, vocabulary, models --------------------------------------------------------------------
    def set_workspace(self, ws: Workspace | None) -> None:
        self.workspace = ws
        self.known = None
        self.form.model = None
        self.settings.set_models([])
        self.settings.show_model_note("")
        self.form.out_dir = (ws.outputs_path / "generate") if ws is not None else None
        shown = ""
        if self.form.out_dir is not None and ws is not None:
            try:
                shown = str(self.form.out_dir.relative_to(ws.root))
            except ValueError:
                shown = self.form.out_dir.name
        self.output_label.setText(f"saved to {shown}" if shown else "")
        self.output_label.setToolTip(str(self.form.out_dir) if self.form.out_dir else "")
        self.grid_panel.set_workspace(ws)
        self.refresh_models()
        self.vocabulary_request.submit(
            lambda p: load_vocabulary(ws, p),
            self._on_vocabulary,
            lambda text: self.context.show_status(f"tag autocompletion unavailable: {text}"),
        )

    def _on_vocabulary(self, result) -> None:
        self.prompt_panel.set_vocabulary(*result)
        self.vocabulary_ready.emit()

    def refresh_models(self) -> None:
        """Look for base checkpoints and LoKr files in the workspace (a worker); the list follows when it lands."""
        ws = self.workspace
        self.models_request.submit(lambda _p: scan_models(ws), self._on_models, self._set_error)

    def _on_models(self, known: KnownModels) -> None:
        first = self.known is None
        self.known = known
        self.settings.set_models(known.bases)
        if first and (self.form.width, self.form.height) == DEFAULT_SIZE:
            self._use_native_size()  # the default model's own size, unless a size was set already
        self.grid_panel.set_known(known)
        self.models_ready.emit()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._warm_started:
            # While the user writes a prompt, not when they press Generate; and only once the tab is seen, so an
            # app start that never opens Generate imports none of it (transformers alone is seconds of CPU).
            self._warm_started = True
            self._start(
                Job(load_tokenizer, name="Load tokenizer", parent=self), self.prompt_panel.set_tokenizer
            )
            # A failure here shows again, with its message, when Generate runs the same imports.
            self._start(
                Job(warm_engine, name="Load generation engine", parent=self), lambda _r: None, lambda _t: None
            )
        elif self.known is not None:
            self.refresh_models()  # a LoKr may have been trained since

    # ---- model panel --------------------------------------------------------------------------------------
    def model_path(self) -> Path | None:
        return self.form.model

    def _on_field_edited(self, field: str) -> None:
        if field == "model":
            self._use_native_size()
        elif field == "sampler":
            self._use_sampler_steps()

    def _use_sampler_steps(self) -> None:
        """Picking a sampler sets its default steps (DPM fast needs 40 where the others start at 28), unless the
        user chose other steps: steps at some sampler's default follow the sampler, any other value stays."""
        wanted = default_steps(self.form.sampler)
        if self.form.steps != wanted and self.form.steps in SAMPLER_DEFAULT_STEPS:
            self.form.steps = wanted
            self.binding.push()

    def _use_native_size(self) -> None:
        """Picking a model sets its training resolution as the size (128² for the demo model, with hires off:
        its pictures are made at that size; 1024² for SDXL), as the user would otherwise have to."""
        if self.known is None or self.form.model is None:
            return
        native = self.known.native.get(self.form.model)
        if native is None or (self.form.width, self.form.height) == native:
            return
        self.form.width, self.form.height = native
        if native != DEFAULT_SIZE:
            self.form.hires = False
        self.binding.push()

    def set_model(self, path: Path) -> None:
        """Use this checkpoint (kept when the list of known models arrives later)."""
        self.form.model = Path(path)
        self.settings.show_model(self.form.model)

    def add_lokr(self, path: Path, multiplier: float = 1.0) -> None:
        self.form.set_lokr(Path(path), multiplier)
        self.settings.show_lokrs()

    def lokrs(self) -> list[tuple[Path, float]]:
        return [(choice.path, choice.strength) for choice in self.form.lokrs]

    def select_base_of(self, lokr: Path) -> None:
        """Select the base `lokr` was trained on (its metadata names it), found among the known models by path,
        hash or file name; else keep the current one and say so under the model box."""
        lokr, ws, known = Path(lokr), self.workspace, self.known
        self.lokr_request.submit(
            lambda _p: find_lokr_base(lokr, ws, known),
            lambda result: self._on_lokr_base(lokr, *result),
            lambda text: self._note_lokr_base(f"Could not read the LoKr's metadata: {text}", text),
        )

    def _on_lokr_base(self, lokr: Path, hint: BaseHint, base: Path | None, how: str) -> None:
        current = self.model_path()
        kept = f"kept {current.name}" if current is not None else "choose a base checkpoint"
        if base is not None:
            self.set_model(base)
            if current is not None and str(current) != str(base):
                self.context.show_status(f"{lokr.name} was trained on {base.name} (found by {how}): selected")
            self._note_lokr_base("")
        elif hint.shown:
            self._note_lokr_base(
                f"{lokr.name} was trained on {hint.shown}, which is not among the models here; {kept}."
            )
        else:
            self._note_lokr_base(f"{lokr.name} does not say which base it was trained on; {kept}.")

    def _note_lokr_base(self, note: str, reported: str | None = None) -> None:
        self.settings.show_model_note(note)
        self.lokr_base_checked.emit(note if reported is None else reported)

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
            self.settings.show_model_note("")
            self.set_model(Path(payload))
        elif action == "generate.add_lokr" and payload:
            self.add_lokr(Path(payload))
            self.select_base_of(Path(payload))
        elif action == "generate.compare_run" and payload:
            self.grid_panel.compare_run(Path(payload))

    def _apply_compare(self, setup: CompareSetup) -> None:
        """Show the run's base, sample prompt and sample settings in the form (the grid panel set the axes)."""
        self.settings.show_model_note("")
        self.binding.set_form(apply_compare(self.form, setup))
        self.settings.show_form()
        self.prompt_panel.flow_text_back()

    def _reuse_seed(self) -> None:
        if self.last_seed is not None:
            self.seed.setValue(float(self.last_seed))

    # ---- generation ---------------------------------------------------------------------------------------
    def start_generation(self) -> None:
        if self.job is not None and self.job.is_running:
            return
        self._set_error(None)
        if self.model_path() is None:
            self._set_error("Choose a base checkpoint first (Model panel).")
            return
        request = self.form.to_engine()
        self.job = Job(lambda p: run_generation(request, p), name="Generate", parent=self)
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
        if self.job is not None and self.job.token.cancelled:
            return  # keep saying "cancelling…" until it has
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
            item = self.gallery.add_image(
                pil_to_qimage(image.image), image.path, image.infotext, str(image.seed)
            )
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
        self.progress.setValue(0 if text in ("failed", "cancelled") else 1)
        self.progress_label.setText(text)

    def _set_error(self, text: str | None) -> None:
        self.error_label.show_error(text)

    # ---- gallery, parameters, drag and drop ---------------------------------------------------------------
    def apply_infotext(self, text: str) -> list[str]:
        """Show the settings an A1111 infotext records; returns notes about what could not be applied."""
        if not text.strip():
            return []
        known = self.known
        restored = GenerationForm.from_infotext(
            text,
            current=self.form,
            find_lokr=known.lokr_named if known is not None else None,
            find_model=(lambda name, digest: model_named(known, name, digest)) if known is not None else None,
        )
        self.binding.set_form(restored.form)
        self.settings.show_form()
        self.prompt_panel.flow_text_back()
        self._set_error("\n".join(restored.notes) or None)
        self.context.show_status("parameters restored")
        return restored.notes

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        urls = event.mimeData().urls()
        if urls and urls[0].toLocalFile().lower().endswith(IMAGE_SUFFIXES):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        urls = event.mimeData().urls()
        if urls and urls[0].toLocalFile().lower().endswith(IMAGE_SUFFIXES):
            self.restore_from_image(Path(urls[0].toLocalFile()))
            event.acceptProposedAction()

    def restore_from_image(self, path: Path) -> None:
        """Read an image's A1111 parameters in a worker and apply them; `parameters_restored` follows. The
        workspace's models and LoKrs are looked through again in the same worker (one may be new since)."""
        path, ws = Path(path), self.workspace
        self.png_request.submit(
            lambda _p: read_dropped_image(path, ws),
            lambda result: self._on_image_read(path, *result),
            lambda message: self._on_image_read(path, "", None, message),
        )

    def _on_image_read(self, path: Path, text: str, known: KnownModels | None, error: str = "") -> None:
        if not text:
            message = error or f"{path.name} has no generation parameters"
            self._set_error(message)
            self.parameters_restored.emit([message])
            return
        if known is not None and self.workspace is not None:
            self.known = known  # fresher than the last scan: the models list keeps the form's choice
            self.settings.set_models(known.bases)
        self.parameters_restored.emit(self.apply_infotext(text))

    # ---- plumbing -----------------------------------------------------------------------------------------
    def _start(self, job: Job, on_success, on_fail=None) -> Job:
        job.succeeded.connect(on_success)
        job.failed.connect(on_fail or self._set_error)
        job.finished.connect(lambda: self._jobs.remove(job) if job in self._jobs else None)
        self._jobs.append(job)
        return job.start()

    def wait_for_jobs(self, timeout_s: float = 30.0) -> bool:
        """Block until the tab's helper jobs end (tests and screenshots); results arrive via the event loop."""
        requests = (self.models_request, self.vocabulary_request, self.lokr_request, self.png_request,
                    self.grid_panel.runs_request, self.grid_panel.compare_request)  # fmt: skip
        jobs = list(self._jobs) + [r.job for r in requests if r.job is not None]
        return all(job.wait(timeout_s) for job in jobs)


def _scroll(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(widget)
    # No horizontal scrolling: never let the splitter squeeze a column below what its widgets need.
    area.setMinimumWidth(widget.minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width())
    return area


def create_tab(context: AppContext) -> QWidget:
    return GenerateTab(context)
