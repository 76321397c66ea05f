"""Workspace page: what the open workspace holds, and the actions to open another one or rebuild the demo.

Loading, summarising, hashing and demo creation all run as `Job`s (workspace_jobs.py); this page only turns
their results into widgets. Opening and hashing are `LatestRequest`s, so results that arrive after the user
already opened something else are dropped.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from trainer_core.paths import default_demo_workspace
from trainer_core.progress import Progress, ProgressEvent, format_duration
from trainer_core.workspace import WORKSPACE_FILE, Workspace
from trainer_core.workspace_summary import (
    WorkspaceSummary,
    checkpoint_kind_text,
    format_bytes,
)

from ..context import AppContext
from ..dialogs import show_error
from ..jobs import Job
from ..kit.card import Card
from ..kit.latest_request import LatestRequest
from ..kit.summary_table import fill_table as _fill
from ..kit.summary_table import summary_table as _table
from .workspace_jobs import create_demo_workspace, load_and_summarize

PROBLEM_COLOR = QColor("#e8845c")
CHECKPOINT_COLUMNS = ("Role", "File", "Kind / arch", "dtype", "Tensors", "Size", "Short hash")
HASH_COLUMN = CHECKPOINT_COLUMNS.index("Short hash")
HASH_PENDING = "hashing…"


def _display_path(path: Path | None, root: Path) -> str:
    if path is None:
        return "(not set)"
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


class WorkspacePage(QWidget):
    summary_shown = Signal(object)  # WorkspaceSummary, after the cards were filled
    hashes_done = Signal()
    open_failed = Signal(str)  # message of a workspace that could not be opened

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.summary: WorkspaceSummary | None = None
        # Opening a workspace and hashing its checkpoints are "latest wins": a second open supersedes the first,
        # a new summary restarts the hashes, and a superseded answer never reaches the page.
        self._opening = LatestRequest("open workspace", parent=self)
        self._hashing = LatestRequest("hash checkpoint", parent=self)
        self._demo_job: Job | None = None
        self._hash_queue: list[int] = []
        self._build()
        self._show_empty("No workspace open", "Opening…")

    # ---- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        outer.addWidget(scroll)
        content = QWidget()
        content.setObjectName("pageContent")
        scroll.setWidget(content)
        lay = QVBoxLayout(content)
        lay.setContentsMargins(24, 20, 24, 24)
        lay.setSpacing(16)

        header = QHBoxLayout()
        header.setSpacing(12)
        titles = QVBoxLayout()
        titles.setSpacing(2)
        name_row = QHBoxLayout()
        name_row.setSpacing(10)
        self.name_label = QLabel()
        self.name_label.setObjectName("pageTitle")
        self.kind_badge = QLabel()
        self.kind_badge.setObjectName("badge")
        name_row.addWidget(self.name_label)
        name_row.addWidget(self.kind_badge)
        name_row.addStretch(1)
        self.path_label = QLabel()
        self.path_label.setObjectName("pathLabel")
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        titles.addLayout(name_row)
        titles.addWidget(self.path_label)
        header.addLayout(titles, 1)
        self.open_button = QPushButton("Open workspace…")
        self.open_button.setObjectName("primaryButton")
        self.demo_button = QPushButton("Recreate demo")
        self.folder_button = QPushButton("Open folder")
        self.refresh_button = QPushButton("Refresh")
        for b in (self.refresh_button, self.folder_button, self.demo_button, self.open_button):
            header.addWidget(b, 0, Qt.AlignmentFlag.AlignVCenter)
        self.open_button.clicked.connect(self.choose_workspace)
        self.demo_button.clicked.connect(lambda: self.recreate_demo(confirm=True))
        self.folder_button.clicked.connect(self.open_folder)
        self.refresh_button.clicked.connect(self.refresh)
        lay.addLayout(header)

        self.progress_box = QFrame()
        self.progress_box.setObjectName("progressBox")
        prow = QHBoxLayout(self.progress_box)
        prow.setContentsMargins(14, 10, 14, 10)
        prow.setSpacing(12)
        self.progress_label = QLabel()
        self.progress_label.setMinimumWidth(280)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_demo)
        prow.addWidget(self.progress_label)
        prow.addWidget(self.progress_bar, 1)
        prow.addWidget(self.cancel_button)
        self.progress_box.hide()
        lay.addWidget(self.progress_box)

        self.notice = QLabel()
        self.notice.setObjectName("inlineError")
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice.hide()
        lay.addWidget(self.notice)

        grid = QGridLayout()
        grid.setHorizontalSpacing(16)
        grid.setVerticalSpacing(16)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)

        self.db_card = Card("Metadata DB")
        self.db_table = _table(("Table", "Rows"))
        self.db_card.body.addWidget(self.db_table)

        self.images_card = Card("Image shards")
        self.images_label = QLabel()
        self.images_label.setObjectName("bigFigure")
        self.images_detail = QLabel()
        self.images_detail.setObjectName("muted")
        self.images_card.body.addWidget(self.images_label)
        self.images_card.body.addWidget(self.images_detail)

        self.ckpt_card = Card("Checkpoints")
        self.ckpt_table = _table(CHECKPOINT_COLUMNS, stretch=1)
        self.ckpt_card.body.addWidget(self.ckpt_table)

        self.datasets_card = Card("Datasets")
        self.datasets_table = _table(("Name", "Images", "Layout"))
        self.datasets_empty = QLabel()
        self.datasets_empty.setObjectName("muted")
        self.datasets_card.body.addWidget(self.datasets_table)
        self.datasets_card.body.addWidget(self.datasets_empty)

        self.runs_card = Card("Runs")
        self.runs_table = _table(("Name", "State", "Step"))
        self.runs_empty = QLabel()
        self.runs_empty.setObjectName("muted")
        self.runs_card.body.addWidget(self.runs_table)
        self.runs_card.body.addWidget(self.runs_empty)

        grid.addWidget(self.db_card, 0, 0)
        grid.addWidget(self.images_card, 0, 1)
        grid.addWidget(self.ckpt_card, 1, 0, 1, 2)
        grid.addWidget(self.datasets_card, 2, 0)
        grid.addWidget(self.runs_card, 2, 1)
        lay.addLayout(grid)
        lay.addStretch(1)

    # ---- actions ------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._demo_job is not None

    def choose_workspace(self) -> None:
        start = str(self.context.workspace.root.parent) if self.context.workspace else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open workspace folder", start)
        if folder:
            self.open_workspace(Path(folder))

    def open_workspace(self, path: Path, interactive: bool = True, fallback_to_demo: bool = False) -> Job:
        """Load `path` in a worker; on failure show a dialog (interactive) or open the demo instead."""
        if self.context.workspace is None:
            self._show_empty("Opening workspace…", str(path))
        self.context.show_status(f"Opening {path} …")
        self._opening.submit(
            lambda _p: load_and_summarize(Path(path)),
            on_result=self._on_loaded,
            on_error=lambda msg: self._on_open_failed(path, msg, interactive, fallback_to_demo),
        )
        assert self._opening.job is not None  # no debounce delay: the job started
        return self._opening.job

    def refresh(self) -> None:
        if self.context.workspace is not None and not self.busy:
            self.open_workspace(self.context.workspace.root)

    def open_or_create_demo(self) -> None:
        root = default_demo_workspace()
        if (root / WORKSPACE_FILE).is_file():
            self.open_workspace(root, interactive=True)
        else:
            self.create_demo(replace=False)

    def recreate_demo(self, confirm: bool = True) -> Job | None:
        if self.busy:
            return None
        root = default_demo_workspace()
        if confirm and root.exists():
            answer = QMessageBox.question(
                self,
                "Recreate demo workspace",
                f"Rebuild the demo workspace?\n\n{root}\n\n"
                "Its metadata DB, image shards and tiny models are generated again; "
                "datasets, runs and outputs made inside it are kept.",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return None
        return self.create_demo(replace=True)

    def create_demo(self, replace: bool) -> Job:
        root = default_demo_workspace()
        self._opening.cancel()  # the demo is what the page shows next, not a workspace still being opened
        self._set_busy(True, "Creating the demo workspace…")
        self.context.show_status(f"Creating the demo workspace in {root} …")
        if self.context.workspace is None:
            self._show_empty("Creating the demo workspace", str(root))
        job = Job(
            lambda p: create_demo_workspace(root, replace, p), name="create demo workspace", parent=self
        )
        job.progress.connect(self._on_progress)
        job.succeeded.connect(self._on_loaded)
        job.failed.connect(self._on_demo_failed)
        job.cancelled.connect(lambda: self.context.show_status("Demo creation cancelled"))
        job.finished.connect(lambda: self._set_busy(False))
        self._demo_job = job
        return job.start()

    def cancel_demo(self) -> None:
        if self._demo_job is not None:
            self._demo_job.cancel()
            self.cancel_button.setEnabled(False)
            self.progress_label.setText("Cancelling…")

    def open_folder(self) -> None:
        if self.context.workspace is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.context.workspace.root)))

    # ---- job results --------------------------------------------------------------------------------------
    def _set_busy(self, busy: bool, text: str = "") -> None:
        if not busy:
            self._demo_job = None
        self.progress_box.setVisible(busy)
        self.progress_label.setText(text)
        self.progress_bar.setRange(0, 0)
        self.cancel_button.setEnabled(busy)
        for b in (self.open_button, self.demo_button, self.refresh_button):
            b.setEnabled(not busy)

    def _on_progress(self, ev: ProgressEvent) -> None:
        text = ev.message or "Working…"
        if ev.total:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * min(1.0, ev.done / ev.total)))
            text += f"  {min(100.0, 100 * ev.done / ev.total):.0f}%"
        else:
            self.progress_bar.setRange(0, 0)
        if ev.eta_s is not None:
            text += f"  · ETA {format_duration(ev.eta_s)}"
        if self._demo_job is not None and not self._demo_job.token.cancelled:
            self.progress_label.setText(text)

    def _on_loaded(self, result: tuple[Workspace, WorkspaceSummary]) -> None:
        ws, summary = result
        self.context.set_workspace(ws)
        self.notice.hide()
        self.show_summary(summary)
        self.context.show_status(f"Opened workspace {ws.name} ({ws.root})")

    def _on_open_failed(self, path: Path, message: str, interactive: bool, fallback: bool) -> None:
        self.open_failed.emit(message)
        if fallback:
            self.context.show_status(f"Could not reopen {path}; opening the demo workspace instead")
            self.open_or_create_demo()
            return
        if self.context.workspace is None:
            self._show_empty("No workspace open", "Open a workspace folder or recreate the demo.")
            self.notice.setText(message)
            self.notice.show()
        self.context.show_status(f"Could not open {path}")
        if interactive:
            show_error(self, "Cannot open workspace", message)

    def _on_demo_failed(self, message: str) -> None:
        self.context.show_status("Demo creation failed")
        if self.context.workspace is None:
            self.notice.setText(message)
            self.notice.show()
        show_error(self, "Cannot create the demo workspace", message)

    # ---- rendering ----------------------------------------------------------------------------------------
    def _show_empty(self, title: str, subtitle: str) -> None:
        self._hashing.cancel()
        self.name_label.setText(title)
        self.kind_badge.hide()
        self.path_label.setText(subtitle)
        self.folder_button.setEnabled(False)
        self.refresh_button.setEnabled(False)
        for card in (self.db_card, self.images_card, self.ckpt_card, self.datasets_card, self.runs_card):
            card.set_subtitle("—")
            card.message.show_error(None)
        for table in (self.db_table, self.ckpt_table, self.datasets_table, self.runs_table):
            _fill(table, [])
        for label in (self.images_label, self.images_detail, self.datasets_empty, self.runs_empty):
            label.setText("")
            label.hide()

    def show_summary(self, summary: WorkspaceSummary) -> None:
        self.summary = summary
        root = summary.root
        self.name_label.setText(summary.name)
        self.kind_badge.setText(summary.kind)
        self.kind_badge.show()
        self.path_label.setText(str(root))
        self.folder_button.setEnabled(True)
        self.refresh_button.setEnabled(not self.busy)

        db = summary.db
        self.db_card.set_subtitle(_display_path(db.path, root))
        self.db_card.message.show_error(db.error)
        _fill(self.db_table, [[t, f"{n:,}"] for t, n in db.counts.items()], numeric=(1,))

        im = summary.images
        self.images_card.set_subtitle(_display_path(im.path, root))
        self.images_card.message.show_error(im.error)
        self.images_label.setVisible(not im.error)
        self.images_detail.setVisible(not im.error)
        if im.error:
            self.images_label.setText("")
            self.images_detail.setText("")
        elif im.kind == "tar-shards":
            self.images_label.setText(f"{im.shard_count:,} tar shard{'s' * (im.shard_count != 1)}")
            self.images_detail.setText(f"{format_bytes(im.total_bytes)} of data-NXYZ.tar files")
        else:
            self.images_label.setText(f"{im.image_count:,} image file{'s' * (im.image_count != 1)}")
            self.images_detail.setText(f"{format_bytes(im.total_bytes)} in a plain folder")

        self._show_checkpoints(summary)

        ds_path = _display_path(self.context.workspace.datasets_path, root) if self.context.workspace else ""
        self.datasets_card.set_subtitle(ds_path)
        self.datasets_card.message.show_error(summary.datasets_error)
        _fill(self.datasets_table, [[d.name, f"{d.image_count:,}", d.layout] for d in summary.datasets], (1,))
        self.datasets_empty.setText("No exported datasets yet.")
        self.datasets_empty.setVisible(not summary.datasets and not summary.datasets_error)

        runs_path = _display_path(self.context.workspace.runs_path, root) if self.context.workspace else ""
        self.runs_card.set_subtitle(runs_path)
        self.runs_card.message.show_error(summary.runs_error)
        rows = [[r.name, r.state, f"{r.step:,}" if r.step is not None else ""] for r in summary.runs]
        _fill(self.runs_table, rows, numeric=(2,))
        self.runs_empty.setText("No training runs yet.")
        self.runs_empty.setVisible(not summary.runs and not summary.runs_error)

        self.summary_shown.emit(summary)
        self._start_hashes()

    def _show_checkpoints(self, summary: WorkspaceSummary) -> None:
        rows, problems = [], []
        for ck in summary.checkpoints:
            name = _display_path(ck.path, summary.root)
            info = ck.info
            if info is None:
                rows.append([ck.role, name, "unreadable", "", "", "", ""])
            else:
                rows.append(
                    [
                        ck.role,
                        name,
                        checkpoint_kind_text(info),
                        info.dtype,
                        f"{info.tensor_count:,}",
                        format_bytes(info.size_bytes),
                        HASH_PENDING if not ck.problem else "",
                    ]
                )
            if ck.problem:
                problems.append(f"{ck.role}: {ck.problem}")
        _fill(self.ckpt_table, rows, numeric=(4, 5))
        for r, ck in enumerate(summary.checkpoints):
            if ck.problem:
                for c in range(self.ckpt_table.columnCount()):
                    item = self.ckpt_table.item(r, c)
                    item.setForeground(PROBLEM_COLOR)
                    item.setToolTip(ck.problem)
        self.ckpt_card.set_subtitle(
            "" if summary.checkpoints else "None set in workspace.toml [checkpoints]."
        )
        self.ckpt_card.message.show_error("\n".join(problems) or None)

    # ---- short hashes, one file at a time (several 7 GB reads in parallel would only thrash the disk) ------
    def _start_hashes(self) -> None:
        assert self.summary is not None
        self._hash_queue = [i for i, ck in enumerate(self.summary.checkpoints) if not ck.problem]
        self._hash_next()

    def _hash_next(self) -> None:
        if not self._hash_queue or self.summary is None:
            self.hashes_done.emit()
            return
        row = self._hash_queue.pop(0)
        path = self.summary.checkpoints[row].path

        def compute(_p: Progress) -> str:
            from trainer_core.hashing import short_hash

            return short_hash(path)

        self._hashing.submit(
            compute,
            on_result=lambda h: self._set_hash(row, str(h), None),
            on_error=lambda msg: self._set_hash(row, "—", msg),
        )

    def _set_hash(self, row: int, text: str, error: str | None) -> None:
        if row < self.ckpt_table.rowCount():
            item = QTableWidgetItem(text)
            item.setToolTip(error or "first 10 hex digits of the file's SHA-256 (as sd-webui shows it)")
            self.ckpt_table.setItem(row, HASH_COLUMN, item)
        self._hash_next()
