"""Tags tab: a dataset exactly as the trainer will see it.

Left: a virtualised thumbnail grid of the dataset, narrowed by an AND/OR/NOT tag search with completion.
Right, "Image" (tags_image_page.py): the selected picture with its bucket crop, its caption as category chips and
the caption variants the trainer makes of it. Right, "Dataset": tag frequencies, category/rating/quality/year
counts, the bucket histogram and warnings. Right, "Bulk edit" (driven by tags_bulk_controller.py): add /
remove / replace a tag over the selected images (Ctrl/Shift-click in the grid), the current filter or the whole
dataset, with Undo (also Ctrl+Z) of the last edit from the dataset's undo journal.

Finding the newest dataset, indexing the folder, reading the undo journal, loading the tag vocabulary, reading
image sizes for the statistics, building the completion index and decoding pictures all run off the GUI thread
(tags_jobs.py, the thumbnail loader). Each is a `LatestRequest`: opening another dataset supersedes whatever the
previous one still had running, and a stale answer is dropped.

Cross-tab: "tags.open_dataset" (Path of a dataset folder) opens it here; a dataset the Dataset wizard has just
built (AppContext.dataset_built) is opened when none is open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QItemSelectionModel, Qt, Signal
from PySide6.QtGui import QImage, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from trainer_core.errors import KxlError
from trainer_core.progress import ProgressEvent
from trainer_core.tags.dataset_index import DatasetIndex
from trainer_core.tags.edit_journal import JournalInfo
from trainer_core.tags.vocabulary import TagVocabulary
from trainer_core.workspace import Workspace

from ..context import AppContext
from ..jobs import Job
from ..kit.latest_request import LatestRequest
from ..widgets.tags_bulk_edit import BulkEditPanel
from ..widgets.tags_grid import CELL_SIZE, THUMB_SIZE, DatasetGridModel, ThumbnailDelegate
from ..widgets.tags_search import TagSearchEdit
from ..widgets.tags_stats import DatasetStatsView
from ..widgets.thumbnail_loader import ThumbnailLoader
from .tags_bulk_controller import BulkEditController
from .tags_image_page import ImagePage
from .tags_jobs import (
    StatsResult,
    build_completer,
    compute_stats,
    index_dataset,
    load_preview,
    load_vocabulary,
    newest_to_open,
    read_missing_sizes,
)

TAB_TITLE = "Tags"
TAB_ORDER = 20
__all__ = ["TagsTab", "create_tab", "read_missing_sizes"]
IMAGE_PAGE_WIDGETS = ("image_view", "bucket_label", "file_label", "chips", "split_label", "variants_label",
                      "seed_spin", "epoch_spin", "index_spin", "n_spin")  # fmt: skip


def create_tab(context: AppContext) -> QWidget:
    return TagsTab(context)


class TagsTab(QWidget):
    dataset_loaded = Signal(object)  # DatasetIndex
    stats_ready = Signal(object)  # DatasetStats
    preview_shown = Signal(int)  # entry whose picture is on screen
    completer_ready = Signal()
    bulk_edit_finished = Signal(str)  # "ok" | "failed" | "cancelled", after an edit or an undo

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.index: DatasetIndex | None = None
        self.vocabulary: TagVocabulary | None = None
        self._vocab_db: Path | None = None
        self._opening: Path | None = None  # the folder being indexed
        self._jobs: list[Job] = []
        self.finder = LatestRequest("Find newest dataset", self)
        self.opener = LatestRequest("Index dataset", self)
        self.completion = LatestRequest("Tag completion", self)
        self.statistics = LatestRequest("Dataset statistics", self)
        self.picture = LatestRequest("Load picture", self)
        self._build_ui()
        self.edits = BulkEditController(self)
        context.workspace_changed.connect(self._on_workspace)
        context.requested.connect(self._on_request)
        context.dataset_built.connect(self._on_dataset_built)
        if context.workspace is not None:
            self._on_workspace(context.workspace)

    @property
    def current_entry(self) -> int | None:
        return self.image_page.entry

    @property
    def variant_texts(self) -> list[str]:
        return self.image_page.variant_texts

    # -- layout ----------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(12, 10, 12, 8)
        root.setSpacing(8)

        bar = QHBoxLayout()
        self.open_button = QPushButton("Open dataset…")
        self.open_button.clicked.connect(self.choose_dataset)
        self.path_label = QLabel("No dataset open")
        self.path_label.setObjectName("pathLabel")
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.search = TagSearchEdit()
        self.search.query_changed.connect(self.apply_filter)
        self.count_label = QLabel("")
        self.count_label.setObjectName("muted")
        self.problem_label = QLabel("")
        self.problem_label.setStyleSheet("QLabel { color: #e8845c; }")
        self.problem_label.hide()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(160)
        self.progress.setTextVisible(False)
        self.progress.hide()
        for widget, stretch in ((self.open_button, 0), (self.path_label, 1), (self.search, 2),
                                (self.count_label, 0), (self.problem_label, 0), (self.progress, 0)):  # fmt: skip
            bar.addWidget(widget, stretch)
        root.addLayout(bar)

        self.message = QLabel("")
        self.message.setObjectName("inlineError")
        self.message.setWordWrap(True)
        self.message.hide()
        root.addWidget(self.message)

        self.loader = ThumbnailLoader(size=THUMB_SIZE, parent=self)
        self.model = DatasetGridModel(self.loader, self)
        self.grid = QListView()
        self.grid.setObjectName("tagsGrid")
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setUniformItemSizes(True)
        self.grid.setGridSize(CELL_SIZE)
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setMovement(QListView.Movement.Static)
        # Extended: Ctrl/Shift-click picks the images a bulk edit applies to; the current one is previewed.
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.grid.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.grid.verticalScrollBar().setSingleStep(24)
        self.grid.setItemDelegate(ThumbnailDelegate(self.loader, self.grid))
        self.grid.setModel(self.model)
        self.grid.setStyleSheet("QListView#tagsGrid { background: #1d1f23; border: none; }")
        self.grid.selectionModel().currentChanged.connect(lambda cur, _prev: self._row_selected(cur.row()))
        self.grid.selectionModel().selectionChanged.connect(lambda *_: self.edits.update_scope())

        self.side = QTabWidget()
        self.side.setDocumentMode(True)
        self.image_page = ImagePage()
        self.image_page.tag_clicked.connect(self.add_search_tag)
        for name in IMAGE_PAGE_WIDGETS:
            setattr(self, name, getattr(self.image_page, name))
        self.side.addTab(self.image_page, "Image")
        self.stats_view = DatasetStatsView()
        self.stats_view.tag_activated.connect(self.search.setText)
        self.side.addTab(self.stats_view, "Dataset")
        self.bulk = BulkEditPanel()
        self.side.addTab(self.bulk, "Bulk edit")
        # Inside a text field Ctrl+Z stays the field's own undo (Qt gives it the shortcut first).
        self.undo_shortcut = QShortcut(QKeySequence(QKeySequence.StandardKey.Undo), self)
        self.undo_shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.grid)
        splitter.addWidget(self.side)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([620, 520])
        root.addWidget(splitter, 1)

    # -- workspace and dataset -------------------------------------------------------------------------------
    def _on_workspace(self, ws: Workspace) -> None:
        # The demo DB's popularity counts only its few hundred posts; the tag list it was generated from has
        # the real Danbooru counts (and the same categories), which is what popularity guidance is about.
        db = ws.db_path if ws.kind != "demo" else None
        if self.vocabulary is None or db != self._vocab_db:
            self._vocab_db = db
            self.run_job(
                Job(lambda p: load_vocabulary(db, p), name="Load tag list", parent=self), self._vocab_loaded
            )
        datasets, root = ws.datasets_path, ws.root
        open_root = self.index.root if self.index is not None else self._opening
        # Opening a dataset (the user, a hand-off) cancels this: what they opened wins over the newest one.
        self.finder.submit(
            lambda _p: newest_to_open(datasets, root, open_root), self._newest_found, self._job_failed
        )

    def _newest_found(self, newest: Path | None) -> None:
        if newest is not None:
            self.open_dataset(newest)

    def _on_request(self, action: str, payload: object) -> None:
        if action == "tags.open_dataset" and payload:
            self.open_dataset(Path(payload))

    def _on_dataset_built(self, path: Path) -> None:
        if self.index is None and self._opening is None:
            self.open_dataset(Path(path))

    def choose_dataset(self) -> None:
        ws = self.context.workspace
        start = str(ws.datasets_path if ws is not None and ws.datasets_path.is_dir() else Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open a dataset folder", start)
        if folder:
            self.open_dataset(Path(folder))

    def open_dataset(self, path: Path, keep_view: bool = False) -> None:
        """Index a dataset folder in a worker. `keep_view` (a re-read after an edit of the same folder): keep the
        selection, the current image and the image sizes already read."""
        self.finder.cancel()
        self.completion.cancel()
        self.statistics.cancel()
        self.path_label.setText(str(path))
        self.count_label.setText("indexing…")
        self._show_message("")
        self._opening = path
        old = self.index if keep_view else None
        view = (self.current_entry, self.selected_entries()) if old is not None else None
        self._submit(
            self.opener,
            lambda p: index_dataset(path, p),
            lambda result: self._dataset_opened(*result, old, view),
            self._open_failed,
        )

    def _open_failed(self, message: str) -> None:
        self._opening = None
        self._job_failed(message)

    def _dataset_opened(
        self,
        index: DatasetIndex,
        journal: JournalInfo | None,
        old: DatasetIndex | None = None,
        view: tuple[int | None, np.ndarray] | None = None,
    ) -> None:
        self._opening = None
        same_images = old is not None and [e.image for e in old.entries] == [e.image for e in index.entries]
        if same_images:
            for new, prev in zip(index.entries, old.entries, strict=True):
                if new.size is None and prev.width != 0:
                    new.width, new.height = prev.width, prev.height
        self.index = index
        self.image_page.clear("")
        self.model.set_dataset(index)
        self.apply_filter(self.search.text())
        if same_images and view is not None:
            self._restore_view(*view)
        self._show_problem_count()
        self.bulk.set_undo(journal)
        self.edits.update_scope()
        self.dataset_loaded.emit(index)
        if old is None:  # a re-read after an edit keeps the edit's summary in the status bar
            self.context.show_status(f"Tags: opened {index.root.name} ({len(index):,} images)")
        self._start_dataset_jobs()

    def _vocab_loaded(self, vocabulary: TagVocabulary) -> None:
        self.vocabulary = vocabulary
        self.image_page.show_caption(vocabulary)
        if self.index is not None:
            self._start_dataset_jobs()

    def _start_dataset_jobs(self) -> None:
        """Statistics and completion need both the index and (for categories) the vocabulary; they run once the
        later of the two arrives, and again if the vocabulary changes. One after the other, completion first (the
        search box wants it): two pure-Python workers at once only compete for the GIL with each other and with
        the GUI thread, which then waits longer for its turn."""
        index, vocabulary = self.index, self.vocabulary
        if index is None or vocabulary is None:
            return
        self.stats_view.set_busy("Reading image sizes and counting tags…")

        def then_stats(*_args) -> None:
            self._submit(self.statistics, lambda p: compute_stats(index, vocabulary, p), self._stats_computed)

        def completer_built(completer: object) -> None:
            self.search.set_completer(completer)
            self.bulk.set_completer(completer)
            self.completer_ready.emit()
            then_stats()

        self._submit(
            self.completion, lambda p: build_completer(index, vocabulary, p), completer_built, then_stats
        )

    def _stats_computed(self, result: StatsResult) -> None:
        if self.index is None:
            return
        # The sizes the job read go into the entries here, on the GUI thread (a preview may have set one since).
        by_image = {p.path: p for p in result.problems}
        for i, (w, h) in result.sizes.items():
            entry = self.index.entries[i]
            if entry.width == 0 or entry.height == 0:
                entry.width, entry.height = w, h
                if w < 0 and entry.image in by_image:
                    self.index.add_problem(entry.image, by_image[entry.image].message)
        self.stats_view.set_stats(result.stats, [str(p) for p in self.index.problems], result.rows)
        self._show_problem_count()  # reading image sizes finds the images that fail to decode
        if self.current_entry is not None and self.image_page.bucket is None:
            self.image_page.show_bucket()
        self.stats_ready.emit(result.stats)

    # -- filtering and selection -----------------------------------------------------------------------------
    def apply_filter(self, text: str) -> None:
        if self.index is None:
            return
        try:
            rows = self.index.filter(text)
            unknown = self.index.unknown_terms(text)
        except KxlError as exc:
            self._show_message(str(exc))
            return
        self._show_message(f"No image has: {', '.join(unknown)}" if unknown else "")
        keep = self.current_entry
        self.model.set_rows(rows)
        total, shown = len(self.index), len(rows)
        self.count_label.setText(f"{total:,} images" if shown == total else f"{shown:,} of {total:,} images")
        row = self.model.row_of(keep) if keep is not None else -1
        self.select_row(row if row >= 0 else 0)
        self.edits.update_scope()

    def add_search_tag(self, tag: str) -> None:
        current = self.search.text().strip().rstrip(",")
        self.search.setText(f"{current}, {tag}" if current else tag)

    def select_row(self, row: int) -> None:
        if not 0 <= row < self.model.rowCount():
            self.picture.cancel()
            self.image_page.clear("No image matches the search." if self.index is not None else "")
            return
        idx = self.model.index(row)
        self.grid.selectionModel().setCurrentIndex(idx, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.grid.scrollTo(idx)
        if self.current_entry != self.model.entry_at(row):
            self._row_selected(row)

    def selected_entries(self) -> np.ndarray:
        """Entry positions of the images selected in the grid, ascending."""
        rows = [i.row() for i in self.grid.selectionModel().selectedIndexes()]
        return np.unique(np.array([self.model.entry_at(r) for r in rows], dtype=np.int64))

    def select_entries(self, entries: list[int] | np.ndarray) -> None:
        """Select these images (those shown by the current filter); the first becomes the previewed one."""
        rows = [r for r in (self.model.row_of(int(e)) for e in entries) if r >= 0]
        if not rows:
            return
        self.select_row(rows[0])
        selection = self.grid.selectionModel()
        for r in rows[1:]:
            selection.select(self.model.index(r), QItemSelectionModel.SelectionFlag.Select)

    def _restore_view(self, current: int | None, selected: np.ndarray) -> None:
        keep = [int(e) for e in selected if self.model.row_of(int(e)) >= 0]
        if current is not None and self.model.row_of(current) >= 0:
            keep = [current] + [e for e in keep if e != current]
        self.select_entries(keep)

    def _row_selected(self, row: int) -> None:
        if self.index is None or not 0 <= row < self.model.rowCount():
            return
        entry = self.model.entry_at(row)
        if entry == self.current_entry:
            return
        self.image_page.show_entry(self.index, entry, self.vocabulary)
        index = self.index
        self._submit(
            self.picture,
            lambda p: load_preview(index, entry, p),
            lambda result: self._preview_loaded(entry, result),
            lambda message: self._preview_failed(entry, message),
            show_progress=False,
        )

    def _preview_loaded(self, entry: int, result: tuple[QImage, tuple[int, int]]) -> None:
        if self.index is not None and entry == self.current_entry:
            self.image_page.show_picture(*result)
            self.preview_shown.emit(entry)

    def _preview_failed(self, entry: int, message: str) -> None:
        if entry == self.current_entry:
            self.image_page.show_failed(message)
            self.preview_shown.emit(entry)

    def _show_problem_count(self) -> None:
        n = len(self.index.problems) if self.index is not None else 0
        self.problem_label.setText(f"⚠ {n:,} file problem(s)")
        self.problem_label.setToolTip(
            "Missing, empty or non-UTF-8 captions and images that fail to decode; the full list is under Dataset."
        )
        self.problem_label.setVisible(n > 0)

    # -- bulk edit (tags_bulk_controller.BulkEditController does the work) -----------------------------------------
    def update_bulk_preview(self) -> None:
        self.edits.update_preview()

    def apply_bulk_edit(self) -> None:
        self.edits.apply()

    def undo_last_edit(self) -> None:
        self.edits.undo()

    # -- plumbing --------------------------------------------------------------------------------------------
    def _show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def _submit(
        self, request: LatestRequest, work, on_result, on_error=None, show_progress: bool = True
    ) -> None:
        request.submit(work, on_result, on_error or self._job_failed)
        if show_progress and request.job is not None:
            self._track(request.job)

    def run_job(self, job: Job, on_success, on_fail=None, show_progress: bool = True) -> None:
        job.succeeded.connect(on_success)
        job.failed.connect(on_fail or self._job_failed)
        if show_progress:
            self._track(job)
        job.start()

    def _track(self, job: Job) -> None:
        """Show `job`'s progress in the bar; the bar hides when no tracked job runs."""
        job.progress.connect(self._on_progress)
        job.finished.connect(lambda: self._job_finished(job))
        self._jobs.append(job)
        self.progress.show()

    def _on_progress(self, event: ProgressEvent) -> None:
        if event.total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * event.done / event.total))
        else:
            self.progress.setRange(0, 0)

    def _job_failed(self, message: str) -> None:
        self._show_message(message)
        if self.index is None:
            self.count_label.setText("")

    def _job_finished(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        if not any(j.is_running for j in self._jobs):
            self.progress.hide()

    def wait_for_jobs(self, timeout_s: float = 30.0) -> bool:
        """Block until running jobs end (tests and screenshots); their results arrive via the event loop."""
        requests = (self.finder, self.opener, self.completion, self.statistics, self.picture)
        jobs = list(self._jobs) + [r.job for r in requests if r.job is not None]
        return all(job.wait(timeout_s) for job in jobs)
