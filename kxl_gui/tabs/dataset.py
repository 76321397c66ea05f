"""Dataset tab: a wizard from the danbooru2023 metadata DB + image shards to a kohya-ready dataset folder.

Source -> Selection -> Captions -> Output -> Run -> Summary. What the user chose lives in a `DatasetForm`
(kxl_gui/state/dataset_form.py), bound to the page widgets (tabs/dataset_wizard_pages.py); the export request is
`form.to_engine()`, the same `BuildOptions` the CLI builds, so the wizard and `kxl dataset build` write identical
folders. Every DB read (source check, live match counts, caption preview) is a `LatestRequest`: only the newest
answer reaches the screen. The export itself is a `Job`.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from trainer_core.dataset.export import LOCK_FILE as BUILD_LOCK_FILE
from trainer_core.dataset.export import BuildResult, build_dataset, partial_build_info
from trainer_core.dataset.selection import PRESETS
from trainer_core.dataset.stats import is_finished_dataset
from trainer_core.errors import KxlError
from trainer_core.progress import Progress
from trainer_core.workspace import Workspace

from ..context import AppContext
from ..jobs import Job
from ..kit.form_binding import FormBinding
from ..kit.inline_message import InlineMessage
from ..kit.latest_request import LatestRequest
from ..state.dataset_form import CUSTOM_PRESET, DatasetForm
from ..widgets.dataset_charts import preload as preload_charts
from .dataset_wizard_pages import (
    STEPS,
    CaptionsPage,
    OutputPage,
    RunPage,
    SelectionPage,
    SourcePage,
    SummaryPage,
)

TAB_TITLE = "Dataset"
TAB_ORDER = 10

SOURCE, SELECTION, CAPTIONS, OUTPUT, RUN, SUMMARY = range(len(STEPS))
SOURCE_FIELDS = {"db", "images"}
OUTPUT_FIELDS = {"out", "repeats", "name", "image_mode"}
ESTIMATE_DELAY_MS = 300  # a count per pause in typing, not per key
SOURCE_CHECK_DELAY_MS = 400
PREVIEW_POSTS = 20


class DatasetTab(QWidget):
    build_finished = Signal(object)  # BuildResult (tests and the Train tab hand-off)

    def __init__(self, context: AppContext) -> None:
        super().__init__()
        self.context = context
        self.form = DatasetForm()
        self.job: Job | None = None
        self.result: BuildResult | None = None
        self._build_layout()
        self._source_check = LatestRequest("Check dataset source", self, SOURCE_CHECK_DELAY_MS)
        self._count = LatestRequest("Count matching posts", self, ESTIMATE_DELAY_MS)
        self._preview = LatestRequest("Caption preview", self)
        self._bind()
        self.context.workspace_changed.connect(self.use_workspace)
        if context.workspace is not None:
            self.use_workspace(context.workspace)
        self.set_step(SOURCE)

    # ---- layout ---------------------------------------------------------------------------------------------
    def _build_layout(self) -> None:
        root = QHBoxLayout(self)
        root.setContentsMargins(16, 16, 16, 12)
        steps = QVBoxLayout()
        heading = QLabel("Dataset")
        heading.setObjectName("pageTitle")
        steps.addWidget(heading)
        self.step_labels: list[QLabel] = []
        for i, name in enumerate(STEPS):
            label = QLabel(f"{i + 1}. {name}")
            label.setObjectName("wizardStep")
            label.setMinimumWidth(130)
            self.step_labels.append(label)
            steps.addWidget(label)
        steps.addStretch(1)
        root.addLayout(steps)

        right = QVBoxLayout()
        self.stack = QStackedWidget()
        self.source, self.selection, self.captions = SourcePage(), SelectionPage(), CaptionsPage()
        self.output, self.run, self.summary = OutputPage(), RunPage(), SummaryPage()
        for page in (self.source, self.selection, self.captions, self.output, self.run, self.summary):
            self.stack.addWidget(page)
        right.addWidget(self.stack, 1)
        self.error_label = InlineMessage()  # why Next or Start did not go on, or why a count failed
        right.addWidget(self.error_label)
        nav = QHBoxLayout()
        nav.addStretch(1)
        self.back_button = QPushButton("Back")
        self.next_button = QPushButton("Next")
        self.next_button.setObjectName("primaryButton")
        nav.addWidget(self.back_button)
        nav.addWidget(self.next_button)
        right.addLayout(nav)
        root.addLayout(right, 1)

        # The widgets tests, the screenshot script and the hand-offs reach by name.
        self.source_info = self.source.source_info
        self.db_edit, self.images_edit = self.source.db_row.edit, self.source.images_row.edit
        s = self.selection
        self.preset_combo, self.seed_spin, self.range_table = s.preset_combo, s.seed_spin, s.range_table
        self.estimate_label, self.rating_boxes = s.estimate_label, s.rating_boxes
        self.tags_any, self.tags_all, self.tags_none = s.tags_any, s.tags_all, s.tags_none
        self.preview, self.quality_combo = self.captions.preview, self.captions.quality_combo
        self.out_edit, self.output_note = self.output.out_row.edit, self.output.output_note
        self.start_button, self.progress = self.run.start_button, self.run.progress
        self.cancel_button = self.progress.cancel_button
        self.progress_bar, self.rate_label = self.progress.progress_bar, self.progress.status_label
        self.missing_list = self.summary.missing_list
        self.open_tags_button, self.train_button = self.summary.open_tags_button, self.summary.train_button
        self.open_button = self.summary.open_button

    def _bind(self) -> None:
        b = self.binding = FormBinding(self.form, self)
        b.path(self.source.db_row, "db")
        b.path(self.source.images_row, "images")
        s = self.selection
        for name in PRESETS:
            s.preset_combo.addItem(name, name)
        s.preset_combo.addItem(CUSTOM_PRESET, CUSTOM_PRESET)
        # "custom" is what the ranges are when they match no preset: shown, never chosen.
        s.preset_combo.model().item(s.preset_combo.count() - 1).setEnabled(False)
        b.bind(
            "preset",
            s.preset_combo.currentData,
            lambda name: s.preset_combo.setCurrentIndex(s.preset_combo.findData(name)),
            s.preset_combo.activated,
            store=lambda form, name: form.apply_preset(name),
        )
        b.spin(s.seed_spin, "seed")
        for box, name in (
            (s.skip_deleted, "skip_deleted"),
            (s.skip_banned, "skip_banned"),
            (s.images_only, "images_only"),
        ):
            b.check(box, name)
        for i, box in enumerate(s.rating_boxes):
            b.bind("ratings", box.isChecked, box.setChecked, box.toggled, get=lambda form, i=i: form.ratings[i],
                   store=lambda form, on, i=i: form.ratings.__setitem__(i, on))  # fmt: skip
        b.spin(s.min_score, "min_score")
        b.spin(s.min_fav, "min_fav")
        for edit, name in ((s.tags_any, "tags_any"), (s.tags_all, "tags_all"), (s.tags_none, "tags_none")):
            b.line(edit, name)
        b.combo_data(self.captions.quality_combo, "quality")
        o = self.output
        b.path(o.out_row, "out")
        b.spin(o.repeats_spin, "repeats")
        b.line(o.name_edit, "name")
        b.bind("image_mode", lambda: o.image_mode, o.set_image_mode, o.reference_radio.toggled)
        b.combo_data(o.format_combo, "image_format")
        b.combo_data(o.budget_combo, "max_pixels")
        b.spin(o.workers_spin, "workers")
        s.range_table.set_rows([r.cells() for r in self.form.ranges])
        s.range_table.cell_edited.connect(self._range_cell_edited)
        b.edited.connect(self._on_edited)

        self.source.workspace_button.clicked.connect(self.use_current_workspace)
        self.source.check_button.clicked.connect(self.check_source)
        s.add_range_button.clicked.connect(self.add_range)
        s.remove_range_button.clicked.connect(self.remove_range)
        self.back_button.clicked.connect(self.go_back)
        self.next_button.clicked.connect(self.go_next)
        self.start_button.clicked.connect(self.start_build)
        self.open_tags_button.clicked.connect(self.open_in_tags)
        self.train_button.clicked.connect(self.use_for_training)
        self.open_button.clicked.connect(self.open_folder)

    # ---- form changes ---------------------------------------------------------------------------------------
    def _range_cell_edited(self, row: int, column: int, text: str) -> None:
        self.form.set_range_cell(row, column, text)
        self._on_edited("ranges")

    def add_range(self) -> None:
        self.form.add_range()
        self._on_edited("ranges")

    def remove_range(self) -> None:
        self.form.remove_range(self.range_table.selected_row())
        self._on_edited("ranges")

    def _on_edited(self, name: str) -> None:
        """The form changed (a field the user edited, or a preset): show it, then refresh what depends on it."""
        self.binding.push()
        self.range_table.set_rows([r.cells() for r in self.form.ranges])
        if name in SOURCE_FIELDS:
            self._submit_source_check(SOURCE_CHECK_DELAY_MS)
        if name in OUTPUT_FIELDS:
            self._update_output_note()
        if name == "quality" and self.stack.currentIndex() == CAPTIONS:
            self.refresh_preview()
        if name not in SOURCE_FIELDS | OUTPUT_FIELDS | {"quality", "image_format", "max_pixels", "workers"}:
            self.schedule_estimate()
        if self.stack.currentIndex() == RUN:
            self._update_run_summary()

    # ---- navigation -----------------------------------------------------------------------------------------
    def set_step(self, index: int) -> None:
        self.stack.setCurrentIndex(index)
        for i, label in enumerate(self.step_labels):
            label.setProperty("state", "current" if i == index else ("done" if i < index else "todo"))
            label.style().unpolish(label)
            label.style().polish(label)
        self._update_nav()
        self.error_label.clear_message()
        if index == SELECTION:
            self.schedule_estimate()
        elif index == CAPTIONS:
            self.refresh_preview()
        elif index == OUTPUT:
            self._update_output_note()
        elif index == RUN:
            self._update_run_summary()

    def _update_nav(self) -> None:
        index, running = self.stack.currentIndex(), self.running
        self.back_button.setEnabled(index > 0 and not running)
        self.next_button.setVisible(index < SUMMARY)
        self.next_button.setEnabled(not running and (index != RUN or self.result is not None))

    def go_next(self) -> None:
        index = self.stack.currentIndex()
        try:
            if index == SOURCE:
                self.form.source_paths()
            elif index == SELECTION:
                self.form.selection_plan()
                self.form.post_filters()
            elif index == OUTPUT:
                self.form.to_engine()
        except KxlError as exc:
            self.error_label.show_error(str(exc))
            return
        self.set_step(min(index + 1, SUMMARY))

    def go_back(self) -> None:
        self.set_step(max(0, self.stack.currentIndex() - 1))

    @property
    def charts(self) -> list[QWidget]:
        return self.summary.charts

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.is_running

    # ---- source ---------------------------------------------------------------------------------------------
    def use_workspace(self, ws: Workspace | None) -> None:
        if ws is None:
            return
        self.form.use_workspace(ws.db_path, ws.images_path, ws.datasets_path)
        self.binding.push()
        self.check_source()
        self.schedule_estimate()

    def use_current_workspace(self) -> None:
        self.use_workspace(self.context.workspace)

    def check_source(self) -> None:
        """The Check button's handler: check the DB's schema and images now (typing checks after a pause)."""
        self._submit_source_check(0)

    def _submit_source_check(self, delay_ms: int) -> None:
        try:
            db, images = self.form.source_paths()
        except KxlError as exc:
            self._source_check.cancel()
            self.source.show_problem(str(exc))
            return

        def work(progress: Progress):
            from trainer_core.danbooru.schema import table_counts
            from trainer_core.dataset.column_cache import describe_cache_state
            from trainer_core.dataset.images import open_image_source

            return table_counts(db), open_image_source(images).describe(), describe_cache_state(db)

        self.source_info.setText("Checking…")
        self._source_check.submit(work, lambda result: self.source.show_checked(*result),
                                  self.source.show_problem, delay_ms=delay_ms)  # fmt: skip

    # ---- selection ------------------------------------------------------------------------------------------
    def schedule_estimate(self) -> None:
        """Count the posts the selection matches, a moment after the last edit."""
        self.range_table.clear_counts()  # counts of edited ranges would be stale
        try:
            db, _ = self.form.source_paths()
            plan, filters = self.form.selection_plan(), self.form.post_filters()
        except KxlError as exc:
            self._count.cancel()
            self.estimate_label.setText("")
            if self.stack.currentIndex() == SELECTION:
                self.error_label.show_error(str(exc).splitlines()[0])
            return
        if self.stack.currentIndex() == SELECTION:
            self.error_label.clear_message()
        self.estimate_label.setText("Counting…")

        def work(progress: Progress):
            from trainer_core.danbooru.db_reader import open_db
            from trainer_core.dataset.column_cache import find_column_cache
            from trainer_core.dataset.selection import estimate

            conn = open_db(db)
            try:
                # a cache built by an earlier run makes the live count instant on a full dump
                return estimate(conn, plan, filters, db, cache=find_column_cache(conn, db))
            finally:
                conn.close()

        self._count.submit(work, self._show_counts, self._count_failed)

    def _show_counts(self, results) -> None:
        self.range_table.set_counts([f"{r.matching:,} / {r.selected:,}" for r in results])
        self.estimate_label.setText(f"{sum(r.selected for r in results):,} posts will be selected")

    def _count_failed(self, message: str) -> None:
        self.estimate_label.setText("")
        if self.stack.currentIndex() == SELECTION:
            self.error_label.show_error(message)

    # ---- captions -------------------------------------------------------------------------------------------
    def refresh_preview(self) -> None:
        try:
            db, _ = self.form.source_paths()
            plan, filters = self.form.selection_plan(), self.form.post_filters()
        except KxlError as exc:
            self._preview.cancel()
            self.preview.setPlainText(str(exc))
            return
        quality = self.form.quality
        self.preview.setPlainText(f"Loading {PREVIEW_POSTS} captions from the DB…")

        def work(progress: Progress):
            from trainer_core.dataset.preview import preview_captions

            return preview_captions(db, plan, filters, quality, PREVIEW_POSTS)

        self._preview.submit(work, self.captions.show_captions, self.preview.setPlainText)

    # ---- output ---------------------------------------------------------------------------------------------
    def _update_output_note(self) -> None:
        if self.form.image_mode == "reference":
            note = ("Writes captions.jsonl (every caption), refs.npy (where each image is inside its shard), "
                    "shards.json, skipped.jsonl and kxl-dataset.toml: no image and no caption file. Training, Tags "
                    "and pre-flight read the images from the shards, which must stay where they are; for sd-scripts, "
                    "`kxl dataset materialize` writes the copy later.")  # fmt: skip
        else:
            note = (f"Writes {self.form.subfolder()}/<id>.<ext> + <id>.txt, manifest.jsonl, skipped.jsonl, "
                    "kxl-dataset.toml and sd-scripts-dataset.toml.")  # fmt: skip
        path = self.form.out_path()
        if path is not None:
            if partial_build_info(path) is not None:
                note += "\nThis folder holds an interrupted build: you will be offered to resume it."
            elif is_finished_dataset(path):
                note += "\nThis folder already holds a finished dataset: choose another one."
            elif path.is_dir() and any(p.name != BUILD_LOCK_FILE for p in path.iterdir()):
                note += "\nThis folder is not empty: choose a new or empty folder."
        self.output_note.setText(note)

    # ---- run ------------------------------------------------------------------------------------------------
    def _update_run_summary(self) -> None:
        try:
            opts = self.form.to_engine()
        except KxlError as exc:
            self.run.run_summary.setText(str(exc))
            self.start_button.setEnabled(False)
            return
        self.start_button.setEnabled(not self.running)
        plan = ", ".join(r.label() for r in opts.plan.ranges)
        budget = "" if opts.max_pixels is None else f" (≤ {opts.max_pixels:,} px)"
        if opts.image_mode == "reference":
            images, target = "referenced in the shards (no copy)", opts.out
        else:
            images, target = f"{opts.image_format}{budget}", opts.out / opts.subfolder
        self.run.run_summary.setText(
            f"Ranges {plan}; seed {opts.plan.seed}; quality {opts.quality}; images {images}\n→ {target}"
        )

    def start_build(self) -> None:
        """The Start button's handler. It takes no arguments on purpose: `clicked` passes Qt's `checked` flag to
        any parameter a slot has, which once landed in `on_partial` and made every real click fail."""
        try:
            opts = self.form.to_engine()
        except KxlError as exc:
            self.error_label.show_error(str(exc))
            return
        on_partial = "error"
        if partial_build_info(opts.out) is not None:
            choice = self._ask_resume(opts.out)
            if choice is None:
                return
            on_partial = choice
        self.error_label.clear_message()
        self.result = None
        workers = self.form.workers

        def work(progress: Progress) -> BuildResult:
            result = build_dataset(opts, workers=workers, on_partial=on_partial, progress=progress)
            preload_charts()  # the summary's charts need pyqtgraph: imported here, not on the GUI thread
            return result

        self.job = Job(work, name="Dataset export", parent=self)
        self.progress.bind(self.job)
        self.job.succeeded.connect(self._on_built)
        self.job.failed.connect(self._on_build_failed)
        self.job.cancelled.connect(
            lambda: self.progress.set_status("Cancelled. Start again to resume where it stopped.")
        )
        self.job.finished.connect(self._on_build_finished)
        self.start_button.setEnabled(False)
        self.job.start()
        self._update_nav()

    def _ask_resume(self, out: Path) -> str | None:
        box = QMessageBox(self)
        box.setWindowTitle("Interrupted build")
        box.setText(f"{out} holds an interrupted build with these options.\nResume it, or start over?")
        resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
        restart = box.addButton("Start over", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() is resume:
            return "resume"
        if box.clickedButton() is restart:
            return "restart"
        return None

    def cancel_build(self) -> None:
        self.progress.cancel()

    def _on_built(self, result: BuildResult) -> None:
        self.result = result
        s = result.summary
        verb = "referenced" if result.image_mode == "reference" else "written"
        self.progress.set_done(f"Done: {s.written:,} {verb}, {s.missing:,} missing, {s.corrupt:,} corrupt.")
        self.summary.show_result(result)
        self.context.show_status(f"Dataset written to {result.out}")
        self.context.announce_dataset(Path(result.out))
        self.build_finished.emit(result)
        self.set_step(SUMMARY)

    def _on_build_failed(self, message: str) -> None:
        self.error_label.show_error(message)
        self.progress.set_status("Failed.")

    def _on_build_finished(self) -> None:
        self.start_button.setEnabled(True)
        self._update_nav()

    # ---- hand-offs to the other tabs (AppContext requests; see kxl_gui/context.py) ---------------------------
    def open_in_tags(self) -> None:
        """Show the dataset just built in the Tags tab (handled there as "tags.open_dataset")."""
        if self.result is not None:
            self.context.request("tags.open_dataset", Path(self.result.out), switch_to="Tags")

    def use_for_training(self) -> None:
        """Make the dataset just built the Train tab's dataset ("train.set_dataset")."""
        if self.result is not None:
            self.context.request("train.set_dataset", Path(self.result.out), switch_to="Train")

    def open_folder(self) -> None:
        if self.result is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.result.out)))


def create_tab(context: AppContext) -> QWidget:
    return DatasetTab(context)


__all__ = ["DatasetTab", "create_tab"]
