"""Dataset tab: a wizard from the danbooru2023 metadata DB + image shards to a kohya-ready dataset folder.

Source -> Selection -> Captions -> Output -> Run -> Summary. Every DB read (validation, live match counts, caption
preview) and the export itself run as `Job`s; the widgets only collect options and show results. The options are
turned into the same `BuildOptions` the CLI builds, so the wizard and `kxl dataset build` write identical folders.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from trainer_core.dataset.export import LOCK_FILE as BUILD_LOCK_FILE
from trainer_core.dataset.export import BuildOptions, build_dataset, partial_build_info
from trainer_core.dataset.filters import PostFilters, split_tags
from trainer_core.dataset.selection import PRESETS, IdRange, SelectionPlan
from trainer_core.dataset.stats import is_finished_dataset
from trainer_core.errors import KxlError
from trainer_core.progress import Progress, ProgressEvent, format_duration

from ..context import AppContext
from ..jobs import Job

TAB_TITLE = "Dataset"
TAB_ORDER = 10

STEPS = ("Source", "Selection", "Captions", "Output", "Run", "Summary")
KIND_COLOURS = {  # caption kinds (trainer_core.dataset.captions.KIND_*) -> text colour
    0: "#f2c15e",  # special (1girl ...)
    1: "#7fc8a9",  # character
    2: "#c89cf2",  # copyright
    3: "#f28b82",  # artist
    4: "#e6e2da",  # general
    5: "#8fb8f2",  # meta
    10: "#a9a59c",  # year / rating / quality
}
KIND_NAMES = {
    0: "special",
    1: "character",
    2: "copyright",
    3: "artist",
    4: "general",
    5: "meta",
    10: "year/rating/quality",
}
PIXEL_BUDGETS = (
    ("keep size", None),
    ("1024 × 1024 area", 1024 * 1024),
    ("1536 × 1536 area", 1536 * 1536),
    ("2048 × 2048 area", 2048 * 2048),
)
RATINGS = ("general", "sensitive", "questionable", "explicit")


def _card(title: str) -> tuple[QFrame, QVBoxLayout]:
    frame = QFrame()
    frame.setObjectName("card")
    lay = QVBoxLayout(frame)
    lay.setContentsMargins(16, 12, 16, 14)
    label = QLabel(title)
    label.setObjectName("cardTitle")
    lay.addWidget(label)
    return frame, lay


def _path_row(edit: QLineEdit, on_browse) -> QWidget:
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    button = QPushButton("Browse…")
    button.clicked.connect(on_browse)
    lay.addWidget(button)
    return row


def _fmt_count(n: int | None) -> str:
    return "all" if n is None else f"{n:,}"


class DatasetTab(QWidget):
    build_finished = Signal(object)  # BuildResult (tests and the Train tab hand-off)

    def __init__(self, context: AppContext) -> None:
        super().__init__()
        self.context = context
        self.job: Job | None = None
        self._aux_jobs: list[Job] = []
        self.result = None
        self._estimate_generation = 0
        self._preview_generation = 0

        root = QHBoxLayout(self)
        root.setContentsMargins(16, 16, 16, 12)
        steps = QVBoxLayout()
        self.step_labels: list[QLabel] = []
        heading = QLabel("Dataset")
        heading.setObjectName("pageTitle")
        steps.addWidget(heading)
        for i, name in enumerate(STEPS):
            label = QLabel(f"{i + 1}. {name}")
            label.setMinimumWidth(130)
            self.step_labels.append(label)
            steps.addWidget(label)
        steps.addStretch(1)
        root.addLayout(steps)

        right = QVBoxLayout()
        self.stack = QStackedWidget()
        right.addWidget(self.stack, 1)
        self.error_label = QLabel()
        self.error_label.setObjectName("inlineError")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        right.addWidget(self.error_label)
        nav = QHBoxLayout()
        nav.addStretch(1)
        self.back_button = QPushButton("Back")
        self.next_button = QPushButton("Next")
        self.next_button.setObjectName("primaryButton")
        self.back_button.clicked.connect(self.go_back)
        self.next_button.clicked.connect(self.go_next)
        nav.addWidget(self.back_button)
        nav.addWidget(self.next_button)
        right.addLayout(nav)
        root.addLayout(right, 1)

        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(300)
        self._estimate_timer.timeout.connect(self.refresh_estimate)
        for build in (
            self._build_source,
            self._build_selection,
            self._build_captions,
            self._build_output,
            self._build_run,
            self._build_summary,
        ):
            self.stack.addWidget(build())
        self.context.workspace_changed.connect(self.use_workspace)
        if context.workspace is not None:
            self.use_workspace(context.workspace)
        self.set_step(0)

    # ---- pages ----------------------------------------------------------------------------------------------
    def _build_source(self) -> QWidget:
        page, lay = _card("Source: metadata DB and images")
        intro = QLabel(
            "HakuBooru's danbooru2023.db and the danbooru2023 image shards (data-NXYZ.tar), "
            "or a folder of <id>.<ext> files. Defaults to the open workspace."
        )
        intro.setObjectName("muted")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        form = QFormLayout()
        self.db_edit = QLineEdit()
        self.images_edit = QLineEdit()
        form.addRow("Metadata DB", _path_row(self.db_edit, self._browse_db))
        form.addRow("Images", _path_row(self.images_edit, self._browse_images))
        lay.addLayout(form)
        buttons = QHBoxLayout()
        self.workspace_button = QPushButton("Use workspace")
        self.workspace_button.clicked.connect(lambda: self.use_workspace(self.context.workspace))
        self.check_button = QPushButton("Check source")
        self.check_button.clicked.connect(self.check_source)
        buttons.addWidget(self.workspace_button)
        buttons.addWidget(self.check_button)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        self.source_info = QLabel("Not checked yet.")
        self.source_info.setObjectName("muted")
        self.source_info.setWordWrap(True)
        self.source_info.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.source_info)
        lay.addStretch(1)
        return page

    def _build_selection(self) -> QWidget:
        page, lay = _card("Selection: id ranges, seed and filters")
        top = QHBoxLayout()
        top.addWidget(QLabel("Preset"))
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(["kohaku-xl-delta", "all", "custom"])
        self.preset_combo.currentTextChanged.connect(self._apply_preset)
        top.addWidget(self.preset_combo)
        top.addSpacing(16)
        top.addWidget(QLabel("Seed"))
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(1)
        self.seed_spin.valueChanged.connect(self.schedule_estimate)
        top.addWidget(self.seed_spin)
        top.addStretch(1)
        lay.addLayout(top)

        self.range_table = QTableWidget(0, 4)
        self.range_table.setHorizontalHeaderLabels(
            ["Start id", "End id (exclusive, empty = no end)", "Count (empty = all)", "Matching / selected"]
        )
        self.range_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.range_table.verticalHeader().setVisible(False)
        self.range_table.setMinimumHeight(130)
        self.range_table.setMaximumHeight(200)
        self.range_table.itemChanged.connect(self._range_edited)
        lay.addWidget(self.range_table)
        rbuttons = QHBoxLayout()
        add = QPushButton("Add range")
        add.clicked.connect(lambda: self._add_range_row(IdRange(0, None, None)))
        remove = QPushButton("Remove range")
        remove.clicked.connect(self._remove_range_row)
        rbuttons.addWidget(add)
        rbuttons.addWidget(remove)
        rbuttons.addStretch(1)
        lay.addLayout(rbuttons)

        grid = QGridLayout()
        self.skip_deleted = QCheckBox("Skip deleted posts")
        self.skip_banned = QCheckBox("Skip banned / gold-only (no file URL)")
        self.images_only = QCheckBox("Images only (no gif, mp4, webm, zip, swf)")
        for i, box in enumerate((self.skip_deleted, self.skip_banned, self.images_only)):
            box.setChecked(True)
            box.toggled.connect(self.schedule_estimate)
            grid.addWidget(box, 0, i)
        self.rating_boxes = []
        rating_row = QHBoxLayout()
        rating_row.addWidget(QLabel("Ratings"))
        for name in RATINGS:
            box = QCheckBox(name)
            box.setChecked(True)
            box.toggled.connect(self.schedule_estimate)
            self.rating_boxes.append(box)
            rating_row.addWidget(box)
        rating_row.addStretch(1)
        grid.addLayout(rating_row, 1, 0, 1, 3)
        self.min_score = QSpinBox()
        self.min_fav = QSpinBox()
        for spin in (self.min_score, self.min_fav):
            spin.setRange(-1, 1_000_000)
            spin.setValue(-1)
            spin.setSpecialValueText("off")
            spin.valueChanged.connect(self.schedule_estimate)
        form = QFormLayout()
        form.addRow("Minimum score", self.min_score)
        form.addRow("Minimum favourites", self.min_fav)
        grid.addLayout(form, 2, 0)
        tag_form = QFormLayout()
        self.tags_any = QLineEdit()
        self.tags_all = QLineEdit()
        self.tags_none = QLineEdit()
        for edit, label in (
            (self.tags_any, "Any of tags"),
            (self.tags_all, "All of tags"),
            (self.tags_none, "None of tags"),
        ):
            edit.setPlaceholderText("comma-separated, e.g. 1girl, long_hair")
            edit.textChanged.connect(self.schedule_estimate)
            tag_form.addRow(label, edit)
        grid.addLayout(tag_form, 2, 1, 1, 2)
        lay.addLayout(grid)
        self.estimate_label = QLabel("")
        self.estimate_label.setObjectName("bigFigure")
        lay.addWidget(self.estimate_label)
        lay.addStretch(1)
        self._apply_preset("kohaku-xl-delta")
        return page

    def _build_captions(self) -> QWidget:
        page, lay = _card("Captions: HakuBooru format")
        row = QHBoxLayout()
        row.addWidget(QLabel("Quality tags"))
        self.quality_combo = QComboBox()
        self.quality_combo.addItem("card: P95/85/75/50/25/10, none above id 7.0M", "card")
        self.quality_combo.addItem("hakubooru: P90/75/60/45/30/10, none above id 7.5M", "hakubooru")
        self.quality_combo.addItem("db: card cut points computed from this DB", "db")
        self.quality_combo.currentIndexChanged.connect(self.refresh_preview)
        row.addWidget(self.quality_combo)
        row.addStretch(1)
        lay.addLayout(row)
        legend = " ".join(
            f'<span style="color:{KIND_COLOURS[k]}">■ {n}</span>' for k, n in KIND_NAMES.items()
        )
        legend_label = QLabel(legend)
        legend_label.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(legend_label)
        self.preview = QTextBrowser()
        self.preview.setOpenLinks(False)
        lay.addWidget(self.preview, 1)
        return page

    def _build_output(self) -> QWidget:
        page, lay = _card("Output: kohya folder layout")
        form = QFormLayout()
        self.out_edit = QLineEdit()
        self.out_edit.textChanged.connect(self._update_output_note)
        form.addRow("Dataset folder", _path_row(self.out_edit, self._browse_out))
        self.repeats_spin = QSpinBox()
        self.repeats_spin.setRange(1, 1000)
        self.repeats_spin.setValue(1)
        self.name_edit = QLineEdit("kxl")
        self.repeats_spin.valueChanged.connect(self._update_output_note)
        self.name_edit.textChanged.connect(self._update_output_note)
        form.addRow("Repeats", self.repeats_spin)
        form.addRow("Name", self.name_edit)
        self.format_combo = QComboBox()
        self.format_combo.addItem("copy the shard bytes (no re-encode)", "copy")
        for fmt in ("webp", "png", "jpg"):
            self.format_combo.addItem(f"re-encode as {fmt}", fmt)
        form.addRow("Images", self.format_combo)
        self.budget_combo = QComboBox()
        for label, value in PIXEL_BUDGETS:
            self.budget_combo.addItem(label, value)
        form.addRow("Pixel budget", self.budget_combo)
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(1, 64)
        self.workers_spin.setValue(4)
        form.addRow("Shards in parallel", self.workers_spin)
        lay.addLayout(form)
        self.output_note = QLabel("")
        self.output_note.setObjectName("muted")
        self.output_note.setWordWrap(True)
        lay.addWidget(self.output_note)
        lay.addStretch(1)
        return page

    def _build_run(self) -> QWidget:
        page, lay = _card("Run")
        self.run_summary = QLabel("")
        self.run_summary.setWordWrap(True)
        lay.addWidget(self.run_summary)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)  # the line below says done / total, rate and ETA
        lay.addWidget(self.progress_bar)
        self.rate_label = QLabel("")
        self.rate_label.setObjectName("muted")
        lay.addWidget(self.rate_label)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start export")
        self.start_button.setObjectName("primaryButton")
        self.start_button.clicked.connect(self.start_build)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_build)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        lay.addStretch(1)
        return page

    def _build_summary(self) -> QWidget:
        page, lay = _card("Summary")
        self.summary_label = QLabel("No dataset built yet.")
        self.summary_label.setWordWrap(True)
        lay.addWidget(self.summary_label)
        self.charts_box = QHBoxLayout()
        lay.addLayout(self.charts_box, 1)
        self.charts: list[QWidget] = []
        lower = QHBoxLayout()
        missing_box = QVBoxLayout()
        missing_title = QLabel("Skipped posts (missing or corrupt images)")
        missing_title.setObjectName("muted")
        missing_box.addWidget(missing_title)
        self.missing_list = QListWidget()
        self.missing_list.setMaximumHeight(140)
        missing_box.addWidget(self.missing_list)
        lower.addLayout(missing_box, 1)
        hand_offs = QVBoxLayout()
        hand_offs.addStretch(1)
        # What a user does next with the folder: look at its captions, train on it, or see the files.
        self.open_tags_button = QPushButton("Open in Tags")
        self.open_tags_button.setObjectName("primaryButton")
        self.open_tags_button.setToolTip("Browse the captions and tags of this dataset in the Tags tab")
        self.open_tags_button.clicked.connect(self.open_in_tags)
        self.train_button = QPushButton("Use for training")
        self.train_button.setToolTip("Set this dataset as the Train tab's dataset")
        self.train_button.clicked.connect(self.use_for_training)
        self.open_button = QPushButton("Open dataset folder")
        self.open_button.clicked.connect(self._open_folder)
        for button in (self.open_tags_button, self.train_button, self.open_button):
            button.setEnabled(False)  # until a build finished
            hand_offs.addWidget(button)
        lower.addLayout(hand_offs)
        lay.addLayout(lower)
        self.build_finished.connect(self._hand_off_built)
        return page

    # ---- navigation -----------------------------------------------------------------------------------------
    def set_step(self, index: int) -> None:
        self.stack.setCurrentIndex(index)
        for i, label in enumerate(self.step_labels):
            colour = "#f2c15e" if i == index else ("#e6e2da" if i < index else "#6b6862")
            weight = "600" if i == index else "400"
            label.setStyleSheet(f"color: {colour}; font-weight: {weight}; padding: 6px 0;")
        self.back_button.setEnabled(index > 0 and not self._running())
        self.next_button.setVisible(index < len(STEPS) - 1)
        self.next_button.setEnabled(not self._running() and (index != 4 or self.result is not None))
        self._clear_error()
        if index == 1:
            self.schedule_estimate()
        elif index == 2:
            self.refresh_preview()
        elif index == 3:
            self._update_output_note()
        elif index == 4:
            self._update_run_summary()

    def go_next(self) -> None:
        index = self.stack.currentIndex()
        try:
            if index == 0:
                self._source_paths()
            elif index == 1:
                self.selection_plan()
                self.post_filters()
            elif index == 3:
                self.build_options()
        except KxlError as exc:
            self._show_error(str(exc))
            return
        self.set_step(min(index + 1, len(STEPS) - 1))

    def go_back(self) -> None:
        self.set_step(max(0, self.stack.currentIndex() - 1))

    def _running(self) -> bool:
        return self.job is not None and self.job.is_running

    def _show_error(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.show()

    def _clear_error(self) -> None:
        self.error_label.hide()

    # ---- source ---------------------------------------------------------------------------------------------
    def use_workspace(self, ws) -> None:
        if ws is None:
            return
        if ws.db_path is not None:
            self.db_edit.setText(str(ws.db_path))
        if ws.images_path is not None:
            self.images_edit.setText(str(ws.images_path))
        self.out_edit.setText(str(ws.datasets_path / "kohaku-xl-delta"))
        self.check_source()

    def _browse_db(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Metadata DB", self.db_edit.text(), "SQLite DB (*.db);;All (*)"
        )
        if path:
            self.db_edit.setText(path)
            self.check_source()

    def _browse_images(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Images folder", self.images_edit.text())
        if path:
            self.images_edit.setText(path)
            self.check_source()

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Dataset folder", self.out_edit.text())
        if path:
            self.out_edit.setText(path)

    def _source_paths(self) -> tuple[Path, Path]:
        db, images = self.db_edit.text().strip(), self.images_edit.text().strip()
        if not db:
            raise KxlError("choose the metadata DB (danbooru2023.db)")
        if not images:
            raise KxlError("choose the images folder (data-NXYZ.tar shards or <id>.<ext> files)")
        return Path(db).expanduser(), Path(images).expanduser()

    def check_source(self) -> None:
        try:
            db, images = self._source_paths()
        except KxlError as exc:
            self.source_info.setText(html.escape(str(exc)))
            return
        self.source_info.setText("Checking…")

        def work(progress: Progress):
            from trainer_core.danbooru.schema import table_counts
            from trainer_core.dataset.column_cache import describe_cache_state
            from trainer_core.dataset.images import open_image_source

            return table_counts(db), open_image_source(images).describe(), describe_cache_state(db)

        def done(result) -> None:
            counts, images_text, cache_text = result
            rows = "".join(
                f"<tr><td>{t}</td><td align='right'>&nbsp;&nbsp;{n:,}</td></tr>" for t, n in counts.items()
            )
            self.source_info.setText(
                f"<span style='color:#7fc8a9'>✔ HakuBooru schema OK</span><table>{rows}</table>"
                f"Images: {html.escape(images_text)}<br>{html.escape(cache_text)}"
            )

        self._run_aux(
            work,
            done,
            lambda msg: self.source_info.setText(f"<span style='color:#f2b59b'>{html.escape(msg)}</span>"),
            "Check dataset source",
        )

    def _run_aux(self, fn, on_ok, on_fail, name: str) -> Job:
        job = Job(fn, name=name, parent=self)
        job.succeeded.connect(on_ok)
        job.failed.connect(on_fail)
        job.finished.connect(lambda: self._aux_jobs.remove(job) if job in self._aux_jobs else None)
        self._aux_jobs.append(job)
        job.start()
        return job

    # ---- selection ------------------------------------------------------------------------------------------
    def _apply_preset(self, name: str) -> None:
        if name not in PRESETS:
            return
        plan = PRESETS[name]
        self.range_table.blockSignals(True)
        self.range_table.setRowCount(0)
        self.range_table.blockSignals(False)
        for r in plan.ranges:
            self._add_range_row(r, keep_preset=True)
        self.seed_spin.setValue(plan.seed)
        self.schedule_estimate()

    def _add_range_row(self, r: IdRange, keep_preset: bool = False) -> None:
        self.range_table.blockSignals(True)
        row = self.range_table.rowCount()
        self.range_table.insertRow(row)
        values = (
            str(r.start),
            "" if r.stop is None else str(r.stop),
            "" if r.count is None else str(r.count),
        )
        for col, text in enumerate(values):
            self.range_table.setItem(row, col, QTableWidgetItem(text))
        info = QTableWidgetItem("")
        info.setFlags(info.flags() & ~Qt.ItemFlag.ItemIsEditable)
        self.range_table.setItem(row, 3, info)
        self.range_table.blockSignals(False)
        if not keep_preset:
            self._range_edited()

    def _remove_range_row(self) -> None:
        row = self.range_table.currentRow()
        if row < 0:
            row = self.range_table.rowCount() - 1
        if row >= 0:
            self.range_table.removeRow(row)
            self._range_edited()

    def _range_edited(self, item=None) -> None:
        if item is not None and item.column() == 3:
            return
        if self.preset_combo.currentText() != "custom":
            self.preset_combo.blockSignals(True)
            self.preset_combo.setCurrentText("custom")
            self.preset_combo.blockSignals(False)
        self.schedule_estimate()

    def selection_plan(self) -> SelectionPlan:
        ranges = []
        for row in range(self.range_table.rowCount()):
            cells = [
                (
                    self.range_table.item(row, c).text().strip().replace(",", "").replace("_", "")
                    if self.range_table.item(row, c)
                    else ""
                )
                for c in range(3)
            ]
            try:
                start = int(cells[0] or 0)
                stop = int(cells[1]) if cells[1] else None
                count = None if cells[2] in ("", "all") else int(cells[2])
            except ValueError:
                raise KxlError(f"range row {row + 1}: start, end and count must be whole numbers") from None
            ranges.append(IdRange(start, stop, count))
        preset = self.preset_combo.currentText()
        if preset in PRESETS and tuple(ranges) == PRESETS[preset].ranges:
            return SelectionPlan(tuple(ranges), self.seed_spin.value(), preset)
        return SelectionPlan(tuple(ranges), self.seed_spin.value())

    def post_filters(self) -> PostFilters:
        ratings = tuple(i for i, box in enumerate(self.rating_boxes) if box.isChecked())
        return PostFilters(
            skip_deleted=self.skip_deleted.isChecked(),
            skip_banned=self.skip_banned.isChecked(),
            images_only=self.images_only.isChecked(),
            ratings=None if len(ratings) == 4 else ratings,
            min_score=None if self.min_score.value() < 0 else self.min_score.value(),
            min_fav_count=None if self.min_fav.value() < 0 else self.min_fav.value(),
            tags_any=split_tags(self.tags_any.text()),
            tags_all=split_tags(self.tags_all.text()),
            tags_none=split_tags(self.tags_none.text()),
        )

    def schedule_estimate(self) -> None:
        self._estimate_timer.start()

    def refresh_estimate(self) -> None:
        try:
            db, _ = self._source_paths()
            plan, filters = self.selection_plan(), self.post_filters()
        except KxlError as exc:
            self.estimate_label.setText(html.escape(str(exc).splitlines()[0]))
            return
        self._estimate_generation += 1
        generation = self._estimate_generation
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

        def done(results) -> None:
            if generation != self._estimate_generation:
                return
            total = 0
            for row, res in enumerate(results):
                item = self.range_table.item(row, 3)
                if item is not None:
                    item.setText(f"{res.matching:,} / {res.selected:,}")
                total += res.selected
            self.estimate_label.setText(f"{total:,} posts will be selected")

        def failed(msg: str) -> None:
            if generation == self._estimate_generation:
                self.estimate_label.setText("")
                self._show_error(msg)

        self._clear_error()
        self._run_aux(work, done, failed, "Count matching posts")

    # ---- captions -------------------------------------------------------------------------------------------
    def refresh_preview(self) -> None:
        try:
            db, _ = self._source_paths()
            plan, filters = self.selection_plan(), self.post_filters()
        except KxlError as exc:
            self.preview.setPlainText(str(exc))
            return
        quality = self.quality_combo.currentData()
        self._preview_generation += 1
        generation = self._preview_generation
        self.preview.setPlainText("Loading 20 captions from the DB…")

        def work(progress: Progress):
            from trainer_core.dataset.preview import preview_captions

            return preview_captions(db, plan, filters, quality, 20)

        def done(items) -> None:
            if generation != self._preview_generation:
                return
            blocks = []
            for item in items:

                def span(parts):
                    return ", ".join(
                        f'<span style="color:{KIND_COLOURS.get(k, "#e6e2da")}">{html.escape(t)}</span>'
                        for t, k in parts
                    )

                keep = span(item.keep)
                blocks.append(
                    f'<p style="margin:0 0 8px 0"><span style="color:#6b6862">#{item.post_id}</span> '
                    f'{keep}, <b style="color:#e0a33a">|||</b>{span(item.rest)}</p>'
                )
            self.preview.setHtml("".join(blocks) or "<i>No post matches the selection.</i>")

        self._run_aux(work, done, lambda msg: self.preview.setPlainText(msg), "Caption preview")

    # ---- output ---------------------------------------------------------------------------------------------
    def build_options(self) -> BuildOptions:
        db, images = self._source_paths()
        out = self.out_edit.text().strip()
        if not out:
            raise KxlError("choose the dataset folder")
        opts = BuildOptions(
            db=db,
            images=images,
            out=Path(out).expanduser(),
            plan=self.selection_plan(),
            filters=self.post_filters(),
            quality=self.quality_combo.currentData(),
            repeats=self.repeats_spin.value(),
            name=self.name_edit.text().strip(),
            image_format=self.format_combo.currentData(),
            max_pixels=self.budget_combo.currentData(),
        )
        opts.validate()
        return opts

    def _update_output_note(self) -> None:
        out = self.out_edit.text().strip()
        sub = f"{self.repeats_spin.value()}_{self.name_edit.text().strip() or '?'}"
        note = (f"Writes {sub}/<id>.<ext> + <id>.txt, manifest.jsonl, skipped.jsonl, kxl-dataset.toml and "
                "sd-scripts-dataset.toml.")  # fmt: skip
        if out:
            path = Path(out).expanduser()
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
            opts = self.build_options()
        except KxlError as exc:
            self.run_summary.setText(str(exc))
            self.start_button.setEnabled(False)
            return
        self.start_button.setEnabled(not self._running())
        plan = ", ".join(r.label() for r in opts.plan.ranges)
        self.run_summary.setText(
            f"Ranges {plan}; seed {opts.plan.seed}; quality {opts.quality}; images {opts.image_format}"
            f"{'' if opts.max_pixels is None else f' (≤ {opts.max_pixels:,} px)'}\n→ {opts.out / opts.subfolder}"
        )

    def start_build(self) -> None:
        """The Start button's handler. It takes no arguments on purpose: `clicked` passes Qt's `checked` flag to
        any parameter a slot has, which once landed in `on_partial` and made every real click fail."""
        try:
            opts = self.build_options()
        except KxlError as exc:
            self._show_error(str(exc))
            return
        on_partial = "error"
        if partial_build_info(opts.out) is not None:
            choice = self._ask_resume(opts.out)
            if choice is None:
                return
            on_partial = choice
        self._clear_error()
        self.result = None
        self.progress_bar.setValue(0)
        self.rate_label.setText("Starting…")
        workers = self.workers_spin.value()
        self.job = Job(
            lambda progress: build_dataset(opts, workers=workers, on_partial=on_partial, progress=progress),
            name="Dataset export",
            parent=self,
        )
        self.job.progress.connect(self._on_progress)
        self.job.succeeded.connect(self._on_built)
        self.job.failed.connect(self._on_build_failed)
        self.job.cancelled.connect(self._on_cancelled)
        self.job.finished.connect(self._on_build_finished)
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.back_button.setEnabled(False)
        self.next_button.setEnabled(False)
        self.job.start()

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
        if self.job is not None:
            self.job.cancel()
            self.rate_label.setText("Cancelling…")

    def _on_progress(self, ev: ProgressEvent) -> None:
        if ev.total:
            self.progress_bar.setValue(int(1000 * min(1.0, ev.done / ev.total)))
            parts = [ev.message, f"{ev.done:,.0f} / {ev.total:,.0f} posts"]
            if ev.rate:
                parts.append(f"{ev.rate:,.1f} posts/s")
            if ev.eta_s is not None and ev.done < ev.total:
                parts.append(f"ETA {format_duration(ev.eta_s)}")
            self.rate_label.setText("  ·  ".join(parts))
        else:
            self.rate_label.setText(ev.message)

    def _on_built(self, result) -> None:
        self.result = result
        self.progress_bar.setValue(1000)
        s = result.summary
        self.rate_label.setText(f"Done: {s.written:,} written, {s.missing:,} missing, {s.corrupt:,} corrupt.")
        self.show_summary(result)
        self.context.show_status(f"Dataset written to {result.out}")
        self.build_finished.emit(result)
        self.set_step(5)

    def _on_build_failed(self, msg: str) -> None:
        self._show_error(msg)
        self.rate_label.setText("Failed.")

    def _on_cancelled(self) -> None:
        self.rate_label.setText("Cancelled. Start again to resume where it stopped.")

    def _on_build_finished(self) -> None:
        self.cancel_button.setEnabled(False)
        self.start_button.setEnabled(True)
        self.back_button.setEnabled(True)
        self.next_button.setEnabled(self.result is not None)

    # ---- summary --------------------------------------------------------------------------------------------
    def show_summary(self, result) -> None:
        from kxl_gui.widgets.dataset_charts import CountChart

        s = result.summary
        self.summary_label.setText(
            f"<b>{s.written:,}</b> images written of {s.selected:,} selected · {s.missing:,} missing · "
            f"{s.corrupt:,} corrupt · {s.bytes_written / 2**20:,.1f} MiB<br>"
            f"<span style='color:#8f8b83'>{html.escape(str(result.out))}</span>"
        )
        for chart in self.charts:
            self.charts_box.removeWidget(chart)
            chart.deleteLater()
        self.charts = [
            CountChart("Rating", s.per_rating),
            CountChart("Quality", s.per_quality),
            CountChart("Year", s.per_year),
        ]
        for chart, stretch in zip(self.charts, (3, 5, 4), strict=True):  # quality has the most bars
            self.charts_box.addWidget(chart, stretch)
        self.missing_list.clear()
        for pid in s.missing_ids[:1000]:
            self.missing_list.addItem(f"{pid}: image not found in the shards")
        for item in s.corrupt_items[:1000]:
            self.missing_list.addItem(f"{item['id']}: {item['reason']} ({item['shard']})")
        for err in s.shard_errors:
            self.missing_list.addItem(f"{err['shard']}: {err['reason']}")

    def _open_folder(self) -> None:
        if self.result is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.result.out)))

    # ---- hand-offs to the other tabs (AppContext requests; see kxl_gui/context.py) ---------------------------
    def _hand_off_built(self, result) -> None:
        for button in (self.open_tags_button, self.train_button, self.open_button):
            button.setEnabled(True)
        self.context.announce_dataset(Path(result.out))

    def open_in_tags(self) -> None:
        """Show the dataset just built in the Tags tab (handled there as "tags.open_dataset")."""
        if self.result is not None:
            self.context.request("tags.open_dataset", Path(self.result.out), switch_to="Tags")

    def use_for_training(self) -> None:
        """Make the dataset just built the Train tab's dataset ("train.set_dataset")."""
        if self.result is not None:
            self.context.request("train.set_dataset", Path(self.result.out), switch_to="Train")


def create_tab(context: AppContext) -> QWidget:
    return DatasetTab(context)


__all__ = ["DatasetTab", "create_tab"]
