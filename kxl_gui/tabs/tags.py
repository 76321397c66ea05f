"""Tags tab: a dataset exactly as the trainer will see it.

Left: a virtualised thumbnail grid of the dataset, narrowed by an AND/OR/NOT tag search with completion.
Right, "Image": the selected picture with its bucket crop drawn on it, its caption as category chips with the
`|||` split and popularity dots, and "what the trainer sees": caption variants from the trainer's own
`process_caption` with the card's settings for a chosen seed, epoch and sample index.
Right, "Dataset": tag frequencies, category/rating/quality/year counts, the bucket histogram and warnings.
Right, "Bulk edit": add / remove / replace a tag over the selected images (Ctrl/Shift-click in the grid), the
current filter or the whole dataset, with Undo (also Ctrl+Z) of the last edit from the dataset's undo journal.

Finding the newest dataset, indexing the folder, reading the undo journal, loading the tag vocabulary, reading
image sizes for the statistics, building the completion index and decoding pictures all run off the GUI thread
(`Job`s and the thumbnail loader); a generation counter drops results that arrive after the user opened another
dataset. Workers never write the index the GUI shows: the statistics job reads image sizes into its own result
and the GUI thread copies them into the entries when it arrives.

Cross-tab: "tags.open_dataset" (Path of a dataset folder) opens it here; a dataset the Dataset wizard has just
built (AppContext.dataset_built) is opened when none is open.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PySide6.QtCore import QItemSelectionModel, Qt, Signal
from PySide6.QtGui import QImage, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListView,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from trainer_core.errors import KxlError
from trainer_core.progress import Progress, ProgressEvent
from trainer_core.tags.bulk_edit import edit_dataset, preview_bulk_edit
from trainer_core.tags.caption_processing import card_caption_processing
from trainer_core.tags.dataset_index import (
    DatasetIndex,
    DatasetProblem,
    find_newest_dataset,
    open_dataset,
    read_image_header_size,
    split_caption,
)
from trainer_core.tags.edit_journal import JournalInfo, last_edit, undo_last
from trainer_core.tags.preview import BucketPreview, bucket_preview, caption_variants
from trainer_core.tags.vocabulary import TagVocabulary
from trainer_core.workspace import Workspace

from ..context import AppContext
from ..jobs import Job, quiet_gc
from ..widgets.tags_bulk_edit import BulkEditPanel
from ..widgets.tags_chips import ChipView
from ..widgets.tags_grid import CELL_SIZE, DatasetGridModel, ThumbnailDelegate, ThumbnailLoader
from ..widgets.tags_image_view import CropImageView
from ..widgets.tags_search import TagSearchEdit
from ..widgets.tags_stats import DatasetStatsView, stat_rows

TAB_TITLE = "Tags"
TAB_ORDER = 20
PREVIEW_MAX_SIDE = 768
DEFAULT_VARIANTS = 4


def create_tab(context: AppContext) -> QWidget:
    return TagsTab(context)


def _load_preview(path: Path, progress: Progress) -> tuple[QImage, tuple[int, int]]:
    from PIL import Image

    progress.check_cancelled()
    try:
        with Image.open(path) as img:
            original = img.size
            img.draft("RGB", (PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
            img.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
            rgb = img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - shown in place of the picture, never a crash
        raise KxlError(f"image cannot be decoded ({type(exc).__name__}: {exc})", path=path) from None
    qimg = QImage(rgb.tobytes(), rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888).copy()
    return qimg, original


def _load_vocabulary(db: Path | None, progress: Progress) -> TagVocabulary:
    from trainer_core.tags.preview import load_vocabulary

    with quiet_gc():  # long-lived, built from many small objects (see kxl_gui/jobs.py)
        if db is not None and db.is_file():
            try:
                return load_vocabulary(db, progress)
            except KxlError:
                pass  # a broken DB is reported by the Workspace page; the shipped tag list still gives categories
        return load_vocabulary(None, progress)


def _build_completer(index: DatasetIndex, vocabulary: TagVocabulary | None, progress: Progress) -> object:
    from trainer_core.tags.completion import TagCompleter
    from trainer_core.tags.preview import dataset_tag_vocabulary

    progress.stage("building tag completion")
    with quiet_gc():  # long-lived, and built from many small objects (see kxl_gui/jobs.py)
        completer = TagCompleter(dataset_tag_vocabulary(index, vocabulary))
        # Anything the completer builds on first use is built here, not on the user's first keypress.
        completer.complete("a", limit=1)
    return completer


def _index_dataset(path: Path, progress: Progress) -> tuple[DatasetIndex, JournalInfo | None]:
    index = open_dataset(path, progress)
    return index, last_edit(index.root)


def _newest_to_open(datasets: Path, ws_root: Path, open_root: Path | None) -> Path | None:
    """The workspace's newest dataset, unless the open one is already inside the workspace (file walks: a worker)."""
    if open_root is not None and _is_inside(open_root, ws_root):
        return None
    return find_newest_dataset(datasets)


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


@dataclasses.dataclass
class StatsResult:
    """What the statistics job hands to the GUI thread. Image sizes it read from headers are here, keyed by entry
    position ((-1, -1) = unreadable, with a problem), never written into the shared index by the worker."""

    stats: object  # trainer_core.tags.dataset_stats.DatasetStats
    rows: list  # widgets.tags_stats.StatRow for the frequency table, prepared off the GUI thread
    sizes: dict[int, tuple[int, int]]
    problems: list[DatasetProblem]


class _SizedView:
    """The index as `compute_stats` reads it, with the sizes the job read filled in: copies of the entries that
    changed, the others shared read-only."""

    def __init__(
        self, index: DatasetIndex, sizes: dict[int, tuple[int, int]], problems: list[DatasetProblem]
    ):
        self.tag_image_counts = index.tag_image_counts
        self.tag_texts = index.tag_texts
        self.entries = list(index.entries)
        for i, (w, h) in sizes.items():
            self.entries[i] = dataclasses.replace(self.entries[i], width=w, height=h)
        self.problems = list(index.problems) + problems

    def __len__(self) -> int:
        return len(self.entries)


def read_missing_sizes(
    index: DatasetIndex, progress: Progress
) -> tuple[dict[int, tuple[int, int]], list[DatasetProblem]]:
    """Read the image headers of entries whose size is unknown; returns the sizes and the problems found, and
    writes nothing into `index` (the GUI thread owns it)."""
    todo = [i for i, e in enumerate(index.entries) if e.width == 0 or e.height == 0]
    sizes: dict[int, tuple[int, int]] = {}
    problems: list[DatasetProblem] = []
    if todo:
        progress.stage(f"reading {len(todo):,} image sizes")
    for done, i in enumerate(todo, 1):
        size = read_image_header_size(index.image_path(i))
        if isinstance(size, str):
            sizes[i] = (-1, -1)  # remembered as unreadable: never retried
            problems.append(DatasetProblem(index.entries[i].image, size))
        else:
            sizes[i] = size
        if done % 256 == 0 or done == len(todo):
            progress.update(done, len(todo))
            progress.check_cancelled()
    return sizes, problems


def _compute_stats(index: DatasetIndex, vocabulary: TagVocabulary | None, progress: Progress) -> StatsResult:
    from trainer_core.tags.dataset_stats import compute_stats

    sizes, problems = read_missing_sizes(index, progress)
    progress.stage("computing statistics")
    with quiet_gc():
        stats = compute_stats(_SizedView(index, sizes, problems), vocabulary)  # type: ignore[arg-type]
        rows = stat_rows(stats.tags)
        import pyqtgraph  # noqa: F401  (the bucket chart's first import: 0.3 s, here rather than on the GUI thread)
    return StatsResult(stats, rows, sizes, problems)


def _section(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("cardTitle")
    label.setStyleSheet("QLabel { color: #f2c15e; font-weight: 600; font-size: 10.5pt; padding-top: 6px; }")
    return label


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
        self.current_entry: int | None = None
        self.bucket: BucketPreview | None = None
        self.variant_texts: list[str] = []
        self._generation = 0
        self._preview_generation = 0
        self._vocab_db: Path | None = None
        self._opening: Path | None = None  # the folder being indexed
        self._jobs: list[Job] = []
        self._edit_job: Job | None = None
        self._build_ui()
        context.workspace_changed.connect(self._on_workspace)
        context.requested.connect(self._on_request)
        context.dataset_built.connect(self._on_dataset_built)
        if context.workspace is not None:
            self._on_workspace(context.workspace)

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
        bar.addWidget(self.open_button)
        bar.addWidget(self.path_label, 1)
        bar.addWidget(self.search, 2)
        bar.addWidget(self.count_label)
        bar.addWidget(self.problem_label)
        bar.addWidget(self.progress)
        root.addLayout(bar)

        self.message = QLabel("")
        self.message.setObjectName("inlineError")
        self.message.setWordWrap(True)
        self.message.hide()
        root.addWidget(self.message)

        self.loader = ThumbnailLoader(parent=self)
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
        self.grid.selectionModel().selectionChanged.connect(lambda *_: self._update_bulk_scope())

        self.side = QTabWidget()
        self.side.setDocumentMode(True)
        self.side.addTab(self._build_image_page(), "Image")
        self.stats_view = DatasetStatsView()
        self.stats_view.tag_activated.connect(self.search.setText)
        self.side.addTab(self.stats_view, "Dataset")
        self.bulk = BulkEditPanel()
        self.bulk.inputs_changed.connect(self.update_bulk_preview)
        self.bulk.apply_requested.connect(self.apply_bulk_edit)
        self.bulk.cancel_requested.connect(self._cancel_bulk_edit)
        self.bulk.undo_requested.connect(self.undo_last_edit)
        self.side.addTab(self.bulk, "Bulk edit")
        # Inside a text field Ctrl+Z stays the field's own undo (Qt gives it the shortcut first).
        self.undo_shortcut = QShortcut(QKeySequence(QKeySequence.StandardKey.Undo), self)
        self.undo_shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.undo_shortcut.activated.connect(self.undo_last_edit)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.grid)
        splitter.addWidget(self.side)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([620, 520])
        root.addWidget(splitter, 1)

    def _build_image_page(self) -> QWidget:
        content = QWidget()
        content.setObjectName("pageContent")
        lay = QVBoxLayout(content)
        lay.setContentsMargins(10, 8, 10, 10)
        lay.setSpacing(6)
        self.image_view = CropImageView()
        self.image_view.setMinimumHeight(260)
        self.bucket_label = QLabel("")
        self.bucket_label.setWordWrap(True)
        self.file_label = QLabel("")
        self.file_label.setObjectName("pathLabel")
        self.file_label.setWordWrap(True)
        self.file_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.chips = ChipView()
        self.chips.tag_clicked.connect(self.add_search_tag)
        self.split_label = QLabel("")
        self.split_label.setObjectName("muted")
        self.split_label.setWordWrap(True)

        # Two rows of two: in one row the four spin boxes (sized for 10-digit seeds) made the page wider than
        # the side panel, and every wrapped label and chip row below was cut off at the right edge.
        controls = QGridLayout()
        controls.setHorizontalSpacing(8)
        self.seed_spin = self._spin("seed", 0, 2**31 - 1, 0)
        self.epoch_spin = self._spin("epoch", 1, 100000, 1)
        self.index_spin = self._spin("sample", 0, 10**9, 0)
        self.n_spin = self._spin("variants", 1, 32, DEFAULT_VARIANTS)
        for i, (label, spin) in enumerate(
            (
                ("Seed", self.seed_spin),
                ("Epoch", self.epoch_spin),
                ("Sample index", self.index_spin),
                ("Variants", self.n_spin),
            )
        ):
            text = QLabel(label)
            text.setObjectName("muted")
            controls.addWidget(text, i // 2, (i % 2) * 2)
            controls.addWidget(spin, i // 2, (i % 2) * 2 + 1)
        controls.setColumnStretch(1, 1)
        controls.setColumnStretch(3, 1)
        self.variants_label = QLabel("")
        self.variants_label.setTextFormat(Qt.TextFormat.RichText)
        self.variants_label.setWordWrap(True)
        self.variants_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.variants_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        note = QLabel(
            "Card settings: shuffle after |||, tag dropout 10%, fixed head never moves. "
            "Dropped tags are struck through."
        )
        note.setObjectName("muted")
        note.setWordWrap(True)

        lay.addWidget(self.image_view)
        lay.addWidget(self.bucket_label)
        lay.addWidget(self.file_label)
        lay.addWidget(_section("Caption"))
        lay.addWidget(self.chips)
        lay.addWidget(self.split_label)
        lay.addWidget(_section("What the trainer sees"))
        lay.addLayout(controls)
        lay.addWidget(note)
        lay.addWidget(self.variants_label)
        lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        return scroll

    def _spin(self, name: str, low: int, high: int, value: int) -> QSpinBox:
        spin = QSpinBox()
        spin.setObjectName(f"{name}Spin")
        spin.setRange(low, high)
        spin.setValue(value)
        spin.valueChanged.connect(lambda _v: self._show_variants())
        return spin

    # -- workspace and dataset -------------------------------------------------------------------------------
    def _on_workspace(self, ws: Workspace) -> None:
        # The demo DB's popularity counts only its few hundred posts; the tag list it was generated from has
        # the real Danbooru counts (and the same categories), which is what popularity guidance is about.
        db = ws.db_path if ws.kind != "demo" else None
        if self.vocabulary is None or db != self._vocab_db:
            self._vocab_db = db
            self._run(
                Job(lambda p: _load_vocabulary(db, p), name="Load tag list", parent=self), self._vocab_loaded
            )
        generation = self._generation
        datasets, root = ws.datasets_path, ws.root
        open_root = self.index.root if self.index is not None else self._opening
        find = Job(
            lambda _p: _newest_to_open(datasets, root, open_root), name="Find newest dataset", parent=self
        )
        self._run(
            find,
            lambda newest: self._newest_found(newest, generation),
            show_progress=False,
        )

    def _newest_found(self, newest: Path | None, generation: int) -> None:
        # Dropped when the user (or a hand-off) opened something while the folders were being looked at.
        if newest is not None and generation == self._generation:
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
        """Index a dataset folder in a Job. `keep_view` (a re-read after an edit of the same folder): keep the
        selection, the current image and the image sizes already read."""
        self._generation += 1
        generation = self._generation
        self.path_label.setText(str(path))
        self.count_label.setText("indexing…")
        self._show_message("")
        self._opening = path
        old = self.index if keep_view else None
        view = (self.current_entry, self.selected_entries()) if old is not None else None
        job = Job(lambda p: _index_dataset(path, p), name="Index dataset", parent=self)
        self._run(
            job,
            lambda result: self._dataset_opened(*result, generation, old, view),
            on_fail=lambda message: self._open_failed(message, generation),
        )

    def _open_failed(self, message: str, generation: int) -> None:
        if generation == self._generation:
            self._opening = None
        self._job_failed(message)

    def _dataset_opened(
        self,
        index: DatasetIndex,
        journal: JournalInfo | None,
        generation: int,
        old: DatasetIndex | None = None,
        view: tuple[int | None, np.ndarray] | None = None,
    ) -> None:
        if generation != self._generation:
            return
        self._opening = None
        same_images = old is not None and [e.image for e in old.entries] == [e.image for e in index.entries]
        if same_images:
            for new, prev in zip(index.entries, old.entries, strict=True):
                if new.size is None and prev.width != 0:
                    new.width, new.height = prev.width, prev.height
        self.index = index
        self.current_entry = None
        self.model.set_dataset(index)
        self.apply_filter(self.search.text())
        if same_images and view is not None:
            self._restore_view(*view)
        self._show_problem_count()
        self.bulk.set_undo(journal)
        self._update_bulk_scope()
        self.dataset_loaded.emit(index)
        if old is None:  # a re-read after an edit keeps the edit's summary in the status bar
            self.context.show_status(f"Tags: opened {index.root.name} ({len(index):,} images)")
        self._start_dataset_jobs(generation)

    def _vocab_loaded(self, vocabulary: TagVocabulary) -> None:
        self.vocabulary = vocabulary
        if self.current_entry is not None:
            self._show_caption(self.current_entry)
        if self.index is not None:
            self._start_dataset_jobs(self._generation)

    def _start_dataset_jobs(self, generation: int) -> None:
        """Statistics and completion need both the index and (for categories) the vocabulary; they run once the
        later of the two arrives, and again if the vocabulary changes. One after the other, completion first (the
        search box wants it): two pure-Python workers at once only compete for the GIL with each other and with
        the GUI thread, which then waits longer for its turn."""
        index, vocabulary = self.index, self.vocabulary
        if index is None or vocabulary is None:
            return
        self.stats_view.set_busy("Reading image sizes and counting tags…")

        def then_stats(*_args) -> None:
            if generation == self._generation:
                self._run(
                    Job(
                        lambda p: _compute_stats(index, vocabulary, p), name="Dataset statistics", parent=self
                    ),
                    lambda stats: self._stats_computed(stats, generation),
                )

        completion = Job(lambda p: _build_completer(index, vocabulary, p), name="Tag completion", parent=self)
        completion.finished.connect(then_stats)
        self._run(completion, lambda completer: self._completer_built(completer, generation))

    def _completer_built(self, completer: object, generation: int) -> None:
        if generation == self._generation:
            self.search.set_completer(completer)
            self.bulk.set_completer(completer)
            self.completer_ready.emit()

    def _stats_computed(self, result: StatsResult, generation: int) -> None:
        if generation != self._generation or self.index is None:
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
        if self.current_entry is not None and self.bucket is None:
            self._show_bucket(self.index.entries[self.current_entry].size)
        self.stats_ready.emit(result.stats)

    # -- filtering -------------------------------------------------------------------------------------------
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
        total = len(self.index)
        shown = len(rows)
        self.count_label.setText(f"{total:,} images" if shown == total else f"{shown:,} of {total:,} images")
        row = self.model.row_of(keep) if keep is not None else -1
        self.select_row(row if row >= 0 else 0)
        self._update_bulk_scope()

    def add_search_tag(self, tag: str) -> None:
        current = self.search.text().strip().rstrip(",")
        self.search.setText(f"{current}, {tag}" if current else tag)

    def select_row(self, row: int) -> None:
        if not 0 <= row < self.model.rowCount():
            self._clear_selection_view()
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

    # -- bulk edit -------------------------------------------------------------------------------------------
    def _scope_entries(self, scope: str) -> np.ndarray | None:
        if scope == "selected":
            return self.selected_entries()
        if scope == "filter":
            return self.model.rows.copy()
        return None

    def _update_bulk_scope(self) -> None:
        total = len(self.index) if self.index is not None else 0
        self.bulk.set_scope_counts(len(self.selected_entries()), self.model.rowCount(), total)
        self.update_bulk_preview()

    def update_bulk_preview(self) -> None:
        """Recount what the edit in the form would change (index postings only: instant, GUI thread)."""
        if self.index is None:
            self.bulk.show_preview(None)
            return
        try:
            edit = self.bulk.edit()
        except KxlError as exc:
            self.bulk.bad_input(exc)
            return
        if edit is None:
            self.bulk.show_preview(None)
            return
        self.bulk.show_preview(preview_bulk_edit(self.index, edit, self._scope_entries(self.bulk.scope())))

    def apply_bulk_edit(self) -> None:
        if self.index is None or self._edit_job is not None:
            return
        try:
            edit = self.bulk.edit()
        except KxlError as exc:
            self.bulk.bad_input(exc)
            return
        if edit is None:
            return
        index, entries = self.index, self._scope_entries(self.bulk.scope())
        self._start_edit_job(
            Job(
                lambda p: _with_journal(index.root, edit_dataset(index, edit, entries, p)),
                name="Bulk tag edit",
                parent=self,
            ),
            f"Applying: {edit.describe()}…",
            "Cancelled: the captions already written stay edited; Undo reverts them.",
        )

    def undo_last_edit(self) -> None:
        if self.index is None or self._edit_job is not None or self.bulk.undo_info is None:
            return
        root = self.index.root
        self._start_edit_job(
            Job(lambda p: _with_journal(root, undo_last(root, p)), name="Undo tag edit", parent=self),
            "Undoing…",
            "Undo cancelled: the files already restored stay restored; Undo again finishes it.",
        )

    def _start_edit_job(self, job: Job, what: str, cancelled_text: str) -> None:
        self._edit_job = job
        self.bulk.set_busy(True, what)
        job.cancelled.connect(lambda: self._edit_ended("cancelled", cancelled_text))
        self._run(
            job,
            lambda result: self._edit_ended("ok", result[0].describe(), result[1]),
            on_fail=lambda message: self._edit_ended("failed", message),
        )

    def _cancel_bulk_edit(self) -> None:
        if self._edit_job is not None:
            self._edit_job.cancel()

    def _edit_ended(self, outcome: str, text: str, journal: JournalInfo | None = None) -> None:
        self._edit_job = None
        if outcome == "ok":
            self.bulk.set_undo(journal)  # read by the job; after a cancel or failure the re-read below tells
        self.bulk.set_busy(False)
        self.bulk.show_result(text if outcome != "failed" else "")
        if outcome == "failed":
            self.bulk.show_preview(None, text)
        else:
            self.context.show_status(f"Tags: {text}")
        if self.index is not None:
            # Re-read: chips, counts, the undo state and the statistics follow the files.
            self.open_dataset(self.index.root, keep_view=True)
        self.bulk_edit_finished.emit(outcome)

    # -- the selected image ----------------------------------------------------------------------------------
    def _row_selected(self, row: int) -> None:
        if self.index is None or not 0 <= row < self.model.rowCount():
            return
        entry = self.model.entry_at(row)
        if entry == self.current_entry:
            return
        self.current_entry = entry
        e = self.index.entries[entry]
        self.file_label.setText(f"{e.image} · repeats {e.repeats} · sample index {entry}")
        self.index_spin.blockSignals(True)
        self.index_spin.setValue(entry)
        self.index_spin.blockSignals(False)
        self._show_caption(entry)
        self._show_variants()
        self._show_bucket(e.size)
        self._preview_generation += 1
        generation = self._preview_generation
        path = self.index.image_path(entry)
        self.image_view.set_image(None, None, None, "loading…")
        self._run(
            Job(lambda p: _load_preview(path, p), name="Load picture", parent=self),
            lambda result: self._preview_loaded(entry, generation, result),
            on_fail=lambda msg: self._preview_failed(entry, generation, msg),
            show_progress=False,
        )

    def _show_caption(self, entry: int) -> None:
        assert self.index is not None
        caption = self.index.entries[entry].caption
        parts = split_caption(caption)
        self.chips.set_caption(parts.fixed, parts.flex, parts.suffix, parts.has_separator, self.vocabulary)
        if not caption:
            self.split_label.setText("Empty caption: the trainer sees an empty text for this image.")
        elif parts.has_separator:
            self.split_label.setText(
                f"{len(parts.fixed)} fixed tag(s) before |||, {len(parts.flex)} shuffled after it"
                + (f", {len(parts.suffix)} fixed at the end" if parts.suffix else "")
            )
        else:
            self.split_label.setText("No ||| in this caption: every tag is shuffled and may be dropped.")

    def _show_variants(self) -> None:
        if self.index is None or self.current_entry is None:
            return
        caption = self.index.entries[self.current_entry].caption
        variants = caption_variants(
            caption,
            card_caption_processing(),
            seed=self.seed_spin.value(),
            epoch=self.epoch_spin.value(),
            index=self.index_spin.value(),
            n=self.n_spin.value(),
        )
        self.variant_texts = [v.processed.text for v in variants]
        rows = []
        for v in variants:
            p = v.processed
            fixed = ", ".join(_esc(t) for t in p.fixed)
            rest = ", ".join(_esc(t) for t in p.flex + p.suffix)
            text = f'<span style="color:#f2c15e">{fixed}</span>' + (", " if fixed and rest else "") + rest
            dropped = "".join(f' <s style="color:#6b6862">{_esc(t)}</s>' for t in p.dropped_tags)
            rows.append(
                f'<p style="margin:0 0 6px 0"><span style="color:#8f8b83">epoch {v.epoch}</span>&nbsp; '
                f"{text or '<i>(empty)</i>'}{dropped}</p>"
            )
        self.variants_label.setText("".join(rows))

    def _show_bucket(self, size: tuple[int, int] | None) -> None:
        self.bucket = bucket_preview(size) if size is not None else None
        self.bucket_label.setText(
            self.bucket.label if self.bucket is not None else "bucket: image size not known yet"
        )

    def _preview_loaded(self, entry: int, generation: int, result: tuple[QImage, tuple[int, int]]) -> None:
        if generation != self._preview_generation or self.index is None:
            return
        qimg, original = result
        e = self.index.entries[entry]
        if e.size is None:
            e.width, e.height = original
        self._show_bucket(e.size)
        crop = self.bucket.crop_in_image if self.bucket is not None else None
        self.image_view.set_image(QPixmap.fromImage(qimg), e.size, crop)
        self.preview_shown.emit(entry)

    def _preview_failed(self, entry: int, generation: int, message: str) -> None:
        if generation != self._preview_generation:
            return
        self.image_view.set_image(None, None, None, message)
        self.preview_shown.emit(entry)

    def _clear_selection_view(self) -> None:
        self.current_entry = None
        self.chips.set_caption([], [], [], False, None)
        self.variant_texts = []
        self.variants_label.setText("")
        self.bucket_label.setText("")
        self.file_label.setText("")
        self.split_label.setText("No image matches the search." if self.index is not None else "")
        self.image_view.set_image(None, None, None, "No image selected")

    def _show_problem_count(self) -> None:
        n = len(self.index.problems) if self.index is not None else 0
        self.problem_label.setText(f"⚠ {n:,} file problem(s)")
        self.problem_label.setToolTip(
            "Missing, empty or non-UTF-8 captions and images that fail to decode; the full list is under Dataset."
        )
        self.problem_label.setVisible(n > 0)

    # -- plumbing --------------------------------------------------------------------------------------------
    def _show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def _run(self, job: Job, on_success, on_fail=None, show_progress: bool = True) -> None:
        job.succeeded.connect(on_success)
        job.failed.connect(on_fail or self._job_failed)
        if show_progress:
            job.progress.connect(self._on_progress)
        job.finished.connect(lambda: self._job_finished(job))
        self._jobs.append(job)
        if show_progress:
            self.progress.show()
        job.start()

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
        return all(job.wait(timeout_s) for job in list(self._jobs))


def _with_journal(root: Path, result: object) -> tuple[object, JournalInfo | None]:
    """An edit's (or undo's) result with the dataset's newest undoable edit, both read in the worker."""
    return result, last_edit(root)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
