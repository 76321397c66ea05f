"""The Generate tab's X/Y/Z grid card: up to three axes over the current form's settings, run as one job.

Each axis is a kind (the engine's `AXIS_KINDS`, or "Nothing") and a value list in A1111's syntax; checkpoints,
LoKrs and training runs can be picked from the workspace instead of typed. "Generate grid" checks every axis first
(`GridForm.to_engine`: an error names the axis and nothing runs), then runs trainer_core.generate.xyz_grid.run_grid
in a worker with the form's request (a random seed is drawn once, so every cell shares it). The grid lands in
`<workspace outputs>/grids/<timestamp>` (grid.png, grid.json, the cell PNGs) and in the tab's gallery like any
generated image; a cancelled grid leaves no folder (the engine builds it hidden and renames it in at the end).

"Compare states" from the Train tab arrives as `compare_run(run_dir)`: the run's config is read in a worker, the
axes are set to its saved states (X) and two seeds (Y), and `compare_ready` hands the tab the run's base, sample
prompt and sample settings to show in the form.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from trainer_core.errors import KxlError
from trainer_core.generate.pipeline import MAX_SEED, GenerationRequest
from trainer_core.generate.xyz_grid import Axis
from trainer_core.progress import Progress, ProgressEvent
from trainer_core.workspace import Workspace
from trainer_core.workspace_queries import KnownModels

from ..jobs import Job
from ..kit.card import Card
from ..kit.form_binding import FormBinding
from ..kit.job_progress import BAR_STEPS, JobProgress
from ..kit.latest_request import LatestRequest
from ..state.generate_form import GenerationForm
from ..state.grid_form import (
    AXIS_NAMES,
    KINDS,
    NOTHING,
    PICKED_FROM,
    PLACEHOLDERS,
    CompareSetup,
    GridForm,
    append_value,
    grid_folder,
    pick_names,
    read_compare_setup,
    run_value,
    workspace_resolver,
)
from ..widgets.generate_gallery import GalleryView, pil_to_qimage
from .generate_jobs import warm_engine

_CELL = re.compile(r"^cell (\d+)/(\d+): ?(.*)$")
NO_LOKR = ("None (without LoKr)", "None")


def build_grid(
    request: GenerationRequest, x: Axis, y: Axis | None, z: Axis | None, out_dir: Path, progress: Progress
):
    """The worker's part: the engine's grid, then the grid image as a QImage (made here, off the GUI thread:
    a 3 x 3 grid of 1024 px images is 9 megapixels)."""
    from PIL import Image

    from trainer_core.generate.xyz_grid import run_grid

    warm_engine(progress)
    result = run_grid(request, x, y, z, out_dir, progress, progress.cancel_token)
    with Image.open(result.grid) as image:
        return result, pil_to_qimage(image)


def list_compare_runs(runs_root: Path | None) -> list[Path]:
    """The workspace's runs that saved a LoKr (the others have no state to put on an axis), newest first."""
    from trainer_core.train.runs import list_runs, saved_lokrs

    if runs_root is None:
        return []
    return [r.run_dir for r in list_runs(runs_root, reconcile=False) if saved_lokrs(r.run_dir)]


class GridPanel(Card):
    grid_finished = Signal(object)  # trainer_core.generate.xyz_grid.GridResult
    grid_failed = Signal(str)  # also sent when the axes are refused before anything runs
    grid_cancelled = Signal()
    compare_ready = Signal(object)  # CompareSetup: the tab shows its base, prompt and settings in the form
    runs_listed = Signal()

    def __init__(
        self, form_of: Callable[[], GenerationForm], gallery: GalleryView, parent: QWidget | None = None
    ) -> None:
        super().__init__("X/Y/Z grid", "One image per combination of up to three axes, assembled into one "
                         "labelled grid. Every other setting comes from the form.", parent)  # fmt: skip
        self.form_of = form_of
        self.gallery = gallery
        self.workspace: Workspace | None = None
        self.known = KnownModels()
        self.runs: list[Path] = []
        self.job: Job | None = None
        self.folder: Path | None = None  # the last finished grid's folder
        self._cells = (0, 0)  # (cell being made, cells in all) of the running grid
        self.binding = FormBinding(GridForm(), self)
        self.runs_request = LatestRequest("List runs", self)
        self.compare_request = LatestRequest("Read the run to compare", self)
        self._build()

    @property
    def grid_form(self) -> GridForm:
        return self.binding.form  # type: ignore[return-value]

    # ---- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.toggle_button = QToolButton()
        self.toggle_button.setCheckable(True)
        self.toggle_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle_button.toggled.connect(self._show_content)
        self.body.addWidget(self.toggle_button)
        self.content = QWidget()
        lay = QVBoxLayout(self.content)
        lay.setContentsMargins(0, 0, 0, 0)
        axes = QGridLayout()
        axes.setColumnStretch(2, 1)
        self.kind_combos: list[QComboBox] = []
        self.value_edits: list[QLineEdit] = []
        self.pick_combos: list[QComboBox] = []
        self.pick_buttons: list[QPushButton] = []
        self._pick_rows: list[QWidget] = []
        for i, name in enumerate(AXIS_NAMES):
            kind = QComboBox()
            kind.setAccessibleName(f"{name} axis kind")
            kind.addItems(list(KINDS))
            values = QLineEdit()
            values.setAccessibleName(f"{name} axis values")
            values.setMinimumWidth(120)
            # Under the values, for kinds naming workspace files or runs. Choosing an item does nothing by itself
            # (arrowing through a closed box must not add every item passed); the button adds the chosen one.
            pick_row = QWidget()
            row = QHBoxLayout(pick_row)
            row.setContentsMargins(0, 0, 0, 0)
            pick = QComboBox()
            pick.setAccessibleName(f"{name} axis: pick from the workspace")
            # long checkpoint names must not widen the column (it never scrolls sideways)
            pick.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            pick.setMinimumContentsLength(12)
            add = QPushButton("Add")
            add.clicked.connect(lambda _checked=False, i=i: self._picked(i))
            row.addWidget(pick, 1)
            row.addWidget(add)
            axes.addWidget(QLabel(name), 2 * i, 0)
            axes.addWidget(kind, 2 * i, 1)
            axes.addWidget(values, 2 * i, 2)
            axes.addWidget(pick_row, 2 * i + 1, 1, 1, 2)
            self.kind_combos.append(kind)
            self.value_edits.append(values)
            self.pick_combos.append(pick)
            self.pick_buttons.append(add)
            self._pick_rows.append(pick_row)
            self._bind_axis(i)
        lay.addLayout(axes)
        self.generate_grid_button = QPushButton("Generate grid")
        self.generate_grid_button.clicked.connect(self.start_grid)
        lay.addWidget(self.generate_grid_button)
        self.job_progress = JobProgress(self._describe, show_bar_when_idle=False)
        self.job_progress.cancel_button.setText("Cancel grid")
        lay.addWidget(self.job_progress)
        row = QHBoxLayout()
        self.folder_label = QLabel("")
        self.folder_label.setObjectName("pathLabel")
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_folder_button = QPushButton("Open folder")
        self.open_folder_button.setEnabled(False)
        self.open_folder_button.clicked.connect(self.open_folder)
        row.addWidget(self.folder_label, 1)
        row.addWidget(self.open_folder_button)
        lay.addLayout(row)
        self.body.addWidget(self.content)
        self.binding.edited.connect(self._on_edited)
        for i in range(len(AXIS_NAMES)):
            self._show_kind(i)
        self._show_content(False)

    def _bind_axis(self, i: int) -> None:
        kind, values = self.kind_combos[i], self.value_edits[i]
        self.binding.bind(f"kind{i}", kind.currentText, kind.setCurrentText, kind.currentTextChanged,
                          store=lambda form, v: setattr(form.axes[i], "kind", v),
                          get=lambda form: form.axes[i].kind)  # fmt: skip
        self.binding.bind(f"text{i}", values.text, values.setText, values.textEdited,
                          store=lambda form, v: setattr(form.axes[i], "text", v),
                          get=lambda form: form.axes[i].text)  # fmt: skip

    def _show_content(self, shown: bool) -> None:
        self.toggle_button.setChecked(shown)
        self.toggle_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.toggle_button.setText("Hide the axes" if shown else "Set up axes")
        self.content.setVisible(shown)
        if shown:
            self.refresh_runs()  # a run may have saved states since the list was made

    def _on_edited(self, field: str) -> None:
        self.message.clear_message()  # the inline error described what was just changed
        if field.startswith("kind"):
            self._show_kind(int(field[4:]))

    def _show_kind(self, i: int) -> None:
        """The values field's hint and, for kinds naming workspace files or runs, the list to pick from."""
        kind = self.grid_form.axes[i].kind
        self.value_edits[i].setEnabled(kind != NOTHING)
        self.value_edits[i].setPlaceholderText(PLACEHOLDERS.get(kind, ""))
        pick, add = self.pick_combos[i], self.pick_buttons[i]
        self._pick_rows[i].setVisible(kind in PICKED_FROM)
        previous = pick.currentText()
        pick.clear()
        if kind not in PICKED_FROM:
            return
        source = PICKED_FROM[kind]
        if source == "runs":
            root = self.workspace.runs_path if self.workspace is not None else None
            choices = [(p.name, run_value(p, root)) for p in self.runs]
            empty = "no run with saved states"
        else:
            files = self.known.bases if source == "models" else list(self.known.lokrs.values())
            choices = pick_names(files) + ([NO_LOKR] if source == "lokrs" else [])
            empty = "no checkpoint found"
        for shown, value in choices:
            pick.addItem(shown, value)
        if not choices:
            pick.addItem(empty, None)
        pick.setCurrentIndex(max(0, pick.findText(previous)))  # a refreshed list keeps the user's choice
        pick.setEnabled(bool(choices))
        add.setEnabled(bool(choices))
        add.setText("Use" if source == "runs" else "Add")

    def _picked(self, i: int) -> None:
        """The Add / Use button: put the chosen checkpoint, LoKr or run into the axis's values."""
        value = self.pick_combos[i].currentData()
        if not value:
            return
        axis = self.grid_form.axes[i]
        # A run is one axis of its own states; files add up to a list.
        axis.text = value if axis.kind == "Run states" else append_value(axis.text, value)
        self.binding.push()
        self.message.clear_message()

    # ---- workspace ----------------------------------------------------------------------------------------
    def set_workspace(self, ws: Workspace | None) -> None:
        self.workspace = ws
        self.known = KnownModels()
        self.runs = []
        self._refresh_picks()
        self.refresh_runs()

    def set_known(self, known: KnownModels) -> None:
        """The workspace's checkpoints and LoKrs (the tab's model scan) for the pick lists."""
        self.known = known
        self._refresh_picks()

    def refresh_runs(self) -> None:
        root = self.workspace.runs_path if self.workspace is not None else None
        self.runs_request.submit(lambda _p: list_compare_runs(root), self._on_runs, lambda _t: None)

    def _on_runs(self, runs: list[Path]) -> None:
        self.runs = runs
        self._refresh_picks()
        self.runs_listed.emit()

    def _refresh_picks(self) -> None:
        for i in range(len(AXIS_NAMES)):
            if self.grid_form.axes[i].kind in PICKED_FROM:
                self._show_kind(i)

    def _resolver(self) -> Callable[[str], Path]:
        ws = self.workspace
        return workspace_resolver(
            self.known.bases, self.known.lokrs, ws.runs_path if ws is not None else None
        )

    # ---- Compare states -----------------------------------------------------------------------------------
    def compare_run(self, run_dir: Path) -> None:
        """Set the grid up to compare a run's saved states (its config is read in a worker)."""
        run_dir = Path(run_dir)
        self._show_content(True)
        self.compare_request.submit(
            lambda _p: read_compare_setup(run_dir), self._on_compare_setup, self._on_compare_error
        )

    def _on_compare_setup(self, setup: CompareSetup) -> None:
        root = self.workspace.runs_path if self.workspace is not None else None
        self.binding.set_form(GridForm.for_run(run_value(setup.run_dir, root), setup.seed))
        for i in range(len(AXIS_NAMES)):
            self._show_kind(i)
        self.message.show_info(" ".join([f"{setup.run_dir.name}: {setup.states} saved states on X, two seeds "
                                         "on Y. Press Generate grid.", *setup.notes]))  # fmt: skip
        self.compare_ready.emit(setup)

    def _on_compare_error(self, text: str) -> None:
        self.message.show_error(f"Cannot compare this run's states: {text}")
        self.grid_failed.emit(text)

    # ---- the grid job -------------------------------------------------------------------------------------
    def start_grid(self) -> None:
        """Check the axes, then run the grid in a worker (the "Generate grid" button)."""
        if self.job is not None:
            return
        self.message.clear_message()
        problem, planned = self._plan()
        if problem:
            self.message.show_error(problem)
            self.grid_failed.emit(problem)
            return
        request, (x, y, z), out_dir = planned
        self._cells = (0, len(x.values) * len(y.values if y else [0]) * len(z.values if z else [0]))
        job = Job(lambda p: build_grid(request, x, y, z, out_dir, p), name="Generate grid", parent=self)
        self.job = job
        self.job_progress.bind(job, f"starting {self._cells[1]} cells…")
        job.progress.connect(self._on_progress)  # after the kit's own handler: the bar counts cells
        job.succeeded.connect(self._on_done)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self.generate_grid_button.setEnabled(False)
        job.start()

    def _plan(self):
        """("", (request, axes, folder)) when the grid can run, else (what is wrong, None)."""
        form = self.form_of()
        if form.model is None and not self.grid_form.varies("Checkpoint name"):
            return "Choose a base checkpoint first (Model panel), or put Checkpoint name on an axis.", None
        if self.workspace is None:
            return "Open a workspace first: grids are saved in its outputs folder.", None
        try:
            axes = self.grid_form.to_engine(self._resolver())
        except KxlError as exc:
            return str(exc), None
        request = form.to_engine()
        if request.seed == -1:  # drawn here, once: every cell shares it and the status line can say which
            request = replace(request, seed=random.randrange(MAX_SEED))
        return "", (request, axes, grid_folder(self.workspace.outputs_path))

    def cancel_grid(self) -> None:
        self.job_progress.cancel()

    def _describe(self, event: ProgressEvent) -> str:
        match = _CELL.match(event.message or "")
        if match:
            self._cells = (int(match.group(1)), int(match.group(2)))
            return event.message
        k, n = self._cells
        detail = event.message or ""
        if event.total:
            detail = f"{detail} {int(event.done)}/{int(event.total)}".strip()
        return f"cell {k}/{n} · {detail}" if k else detail

    def _on_progress(self, event: ProgressEvent) -> None:
        k, n = self._cells
        if self.job is None or self.job.token.cancelled or not (k and n):
            return
        within = min(1.0, event.done / event.total) if event.total else 0.0
        self.job_progress.progress_bar.setRange(0, BAR_STEPS)
        self.job_progress.progress_bar.setValue(int(BAR_STEPS * (k - 1 + within) / n))

    def _on_done(self, payload) -> None:
        result, qimage = payload
        label = f"grid {len(result.cells)} cells"
        item = self.gallery.add_image(qimage, result.grid, result.cells[0].infotext, label)
        self.gallery.setCurrentItem(item)  # shown in the preview, as a new image is
        self.folder = result.folder
        ws = self.workspace
        try:
            shown = str(result.folder.relative_to(ws.root)) if ws is not None else str(result.folder)
        except ValueError:
            shown = str(result.folder)
        self.folder_label.setText(f"saved to {shown}")
        self.folder_label.setToolTip(str(result.folder))
        self.open_folder_button.setEnabled(True)
        self.job_progress.set_done(f"{len(result.cells)} cells, seed {result.cells[0].seed}")
        self.message.show_warning("\n".join(result.warnings) or None)
        self.grid_finished.emit(result)

    def _on_failed(self, text: str) -> None:
        self.message.show_error(text)
        self.job_progress.set_status("failed: no grid was written")
        self.grid_failed.emit(text)

    def _on_cancelled(self) -> None:
        self.job_progress.set_status("cancelled: no grid was written")
        self.grid_cancelled.emit()

    def _on_finished(self) -> None:
        self.job = None
        self._cells = (0, 0)
        self.generate_grid_button.setEnabled(True)

    def open_folder(self) -> None:
        if self.folder is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.folder)))
