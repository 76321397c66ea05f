"""Merge tab: a `MergeForm` edited with pickers and sliders, what it will cost, and the merge run off the GUI thread.

The form (kxl_gui/state/merge_form.py) holds every choice and the rules that tie them together; the widgets
(tabs/merge_form_view.py, tabs/merge_run_panel.py) are bound to it. Everything the engine can check before
writing a byte (`plan_merge`: key sets, shapes, output path, RAM and disk) runs as a `LatestRequest` a moment
after any input changes, so problems show up while the user is still choosing, and Run is only offered for a
recipe that planned cleanly. The merge itself is `run_merge` in a `Job`, the same call the CLI makes, so the GUI
and `kxl merge` write the same tensors.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from trainer_core.errors import KxlError
from trainer_core.merge.engine import MergeResult, run_merge
from trainer_core.merge.recipe import MergeRecipe
from trainer_core.workspace import Workspace

from ..context import AppContext
from ..jobs import Job
from ..kit.form_binding import FormBinding
from ..kit.latest_request import LatestRequest
from ..state.merge_form import PRESET_CUSTOM, PRESET_KXL, MergeForm, role_name
from ..widgets.merge_model_picker import HashQueue, ModelPicker
from .merge_form_view import MergeFormView, ModelRow
from .merge_plan import PlanOutcome, estimate, estimate_text, plan_warnings, result_text, unique_output
from .merge_run_panel import MergeRunPanel

TAB_TITLE = "Merge"
TAB_ORDER = 30
PLAN_DELAY_MS = 250
__all__ = ["MergeTab", "PlanOutcome", "PRESET_CUSTOM", "PRESET_KXL", "Qt", "create_tab"]


def picker_text(picker: ModelPicker) -> str:
    return "" if picker.path is None else str(picker.path)


class MergeTab(QWidget):
    plan_updated = Signal(object)  # PlanOutcome, after the estimate area was redrawn
    merge_finished = Signal(object)  # MergeResult
    merge_failed = Signal(str)
    merge_cancelled = Signal()

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.form = MergeForm()
        self.hashes = HashQueue(self)
        self.rows: list[ModelRow] = []
        self.outcome: PlanOutcome | None = None
        self.result: MergeResult | None = None
        self._applied_root: Path | None = None
        self._merge_job: Job | None = None
        self._plan = LatestRequest("merge estimate", self, PLAN_DELAY_MS)
        self._build()
        self._bind()
        context.workspace_changed.connect(self._on_workspace)
        self.form.apply_preset(PRESET_KXL, *self._workspace_models())
        if context.workspace is not None:
            self._on_workspace(context.workspace)
        else:
            self._changed()

    # ---- layout -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.view = MergeFormView(self.hashes)
        scroll.setWidget(self.view)
        outer.addWidget(scroll, 1)
        self.panel = MergeRunPanel()
        outer.addWidget(self.panel)
        v, p = self.view, self.panel
        # The widgets tests, the screenshot script and the hand-offs reach by name.
        self.inputs_area, self.preset_combo, self.op_combo, self.link_box = (
            v,
            v.preset_combo,
            v.op_combo,
            v.link_box,
        )
        self.block_toggle, self.block_card, self.block_panel = v.block_toggle, v.block_card, v.block_panel
        self.add_button, self.multiplier, self.revert_boxes = v.add_button, v.multiplier, v.revert_boxes
        self.original_picker, self.lokr_box, self.lokr_picker = v.original_picker, v.lokr_box, v.lokr_picker
        self.lokr_multiplier, self.out_edit = v.lokr_multiplier, v.out_row.edit
        self.dtype_combo, self.missing_combo = v.dtype_combo, v.missing_combo
        self.estimate_label, self.problem_label, self.warnings_label = (
            p.estimate_label,
            p.problem_label,
            p.warnings_label,
        )
        self.take_a_button, self.run_message, self.run_button = p.take_a_button, p.run_message, p.run_button
        self.result_box, self.result_label = p.result_box, p.result_label
        self.use_base_button, self.open_generate_button = p.use_base_button, p.open_generate_button
        self.show_folder_button, self.cancel_button = p.show_folder_button, p.progress.cancel_button
        self.progress_bar, self.progress_label = p.progress.progress_bar, p.progress.status_label

    def _bind(self) -> None:
        v, b = self.view, FormBinding(self.form, self)
        self.binding = b
        b.bind("preset", v.preset_combo.currentData, lambda k: v.preset_combo.setCurrentIndex(v.preset_combo.findData(k)),
               v.preset_combo.activated, store=lambda f, key: f.apply_preset(key, *self._workspace_models()))  # fmt: skip
        b.bind("operation", v.op_combo.currentData, lambda k: v.op_combo.setCurrentIndex(v.op_combo.findData(k)),
               v.op_combo.activated, store=lambda f, op: f.set_operation(op))  # fmt: skip
        b.bind("link_weights", v.link_box.isChecked, v.link_box.setChecked, v.link_box.toggled,
               store=lambda f, on: f.set_link(on))  # fmt: skip
        b.bind("blocks_on", v.block_toggle.isChecked, v.block_toggle.setChecked, v.block_toggle.toggled,
               store=lambda f, on: f.set_blocks_on(on))  # fmt: skip
        b.bind("block_weights", v.block_panel.values, v.block_panel.set_values, v.block_panel.changed)
        b.bind("multiplier", v.multiplier.value, v.multiplier.set_value, v.multiplier.value_changed)
        for name, box in v.revert_boxes.items():
            b.bind("revert", box.isChecked, box.setChecked, box.toggled, get=lambda f, n=name: n in f.revert,
                   store=lambda f, on, n=name: f.set_revert(n, on))  # fmt: skip
        b.bind(
            "original",
            lambda: picker_text(v.original_picker),
            v.original_picker.set_path,
            v.original_picker.changed,
        )
        b.check(v.lokr_box, "lokr_on")
        b.bind("lokr_path", lambda: picker_text(v.lokr_picker), v.lokr_picker.set_path, v.lokr_picker.changed,
               store=lambda f, path: f.set_lokr_path(path))  # fmt: skip
        b.bind(
            "lokr_multiplier",
            v.lokr_multiplier.value,
            v.lokr_multiplier.set_value,
            v.lokr_multiplier.value_changed,
        )
        b.bind(
            "out",
            v.out_row.text,
            v.out_row.set_path,
            v.out_row.path_changed,
            store=lambda f, t: f.set_output(t),
        )
        b.combo_data(v.dtype_combo, "dtype")
        b.combo_data(v.missing_combo, "missing")
        b.edited.connect(lambda _field: self._changed())
        v.block_panel.shape_requested.connect(self.apply_block_shape)
        v.add_button.clicked.connect(self.add_model)
        v.out_row.start_folder = lambda: (
            str(self.context.workspace.models_path) if self.context.workspace else ""
        )
        p = self.panel
        p.take_a_button.clicked.connect(self.take_missing_from_a)
        p.run_button.clicked.connect(self.start_merge)
        p.use_base_button.clicked.connect(self.use_as_training_base)
        p.open_generate_button.clicked.connect(self.open_in_generate)
        p.show_folder_button.clicked.connect(self.show_folder)

    # ---- model rows ---------------------------------------------------------------------------------------
    def _sync_rows(self) -> None:
        """One ModelRow per model of the form, showing its path and weight."""
        while len(self.rows) > len(self.form.models):
            row = self.rows.pop()
            row.setParent(None)
            row.deleteLater()
        while len(self.rows) < len(self.form.models):
            row = ModelRow(ModelPicker(role_name(len(self.rows)), self.hashes), 0.5)
            row.picker.changed.connect(lambda r=row: self._row_path_changed(r))
            row.weight.value_changed.connect(lambda _v, r=row: self._row_weight_changed(r))
            row.remove_requested.connect(self._remove_row)
            self.rows.append(row)
            self.view.rows_box.addWidget(row)
        for i, (row, model) in enumerate(zip(self.rows, self.form.models, strict=True)):
            row.picker.role = role_name(i)
            row.picker.role_label.setText(row.picker.role)
            if picker_text(row.picker) != model.path:
                row.picker.set_path(model.path or None)
            if row.weight.value() != model.weight:
                row.weight.set_value(model.weight)

    def _row_path_changed(self, row: ModelRow) -> None:
        i, text = self.rows.index(row), picker_text(row.picker)
        if self.form.models[i].path != text:
            self.form.models[i].path = text
            self._changed()

    def _row_weight_changed(self, row: ModelRow) -> None:
        i, value = self.rows.index(row), row.weight.value()
        if self.form.models[i].weight != value:
            self.form.set_weight(i, value)
            self._changed()

    def _remove_row(self, row: ModelRow) -> None:
        i = self.rows.index(row)
        self.form.remove_model(i)
        self.rows.pop(i)
        row.setParent(None)
        row.deleteLater()
        self._changed()

    def add_model(self) -> None:
        self.form.add_model()
        self._changed()

    def apply_block_shape(self, shape: str) -> None:
        self.form.apply_block_shape(shape)
        self._changed()

    def take_missing_from_a(self) -> None:
        self.form.missing = "take_a"
        self._changed()

    def set_output(self, path: Path | str) -> None:
        """Choose the output file explicitly (it no longer follows the inputs)."""
        self.form.set_output(str(path))
        self._changed()

    # ---- workspace ----------------------------------------------------------------------------------------
    def _workspace_models(self) -> tuple[str, str, str]:
        """The workspace's gamma, beta and original checkpoints (the card's recipe with the demo's stand-ins)."""
        ws = self.context.workspace
        if ws is None:
            return "", "", ""
        paths = (ws.checkpoint_path(role) for role in ("gamma", "beta", "original"))
        return tuple("" if p is None else str(p) for p in paths)  # type: ignore[return-value]

    def _on_workspace(self, ws: Workspace) -> None:
        # The tab re-emits the workspace after a merge (to refresh other pages): keep the user's choices then.
        if self._applied_root == ws.root:
            return
        self._applied_root = ws.root
        for model, path in zip(self.form.models, self._workspace_models()[:2], strict=False):
            model.path = path or model.path
        self.form.original = self._workspace_models()[2] or self.form.original
        self.form.out_auto = True
        self._changed()

    def _follow_inputs(self) -> None:
        """While the user has not chosen an output file, it is a free name next to the inputs."""
        if not self.form.out_auto:
            return
        ws = self.context.workspace
        first = self.form.models[0].path if self.form.models else ""
        folder = ws.models_path if ws is not None else (Path(first).expanduser().parent if first else None)
        if folder is not None:
            self.form.out = str(unique_output(folder, self.form.default_output_stem()))

    # ---- after every change -------------------------------------------------------------------------------
    def _changed(self) -> None:
        """Show the form as it is now, then plan it again."""
        self._follow_inputs()
        self._sync_rows()
        self.binding.push()
        self.view.show_form(self.form, self.rows)
        self.run_message.clear_message()
        self.outcome = None
        self._refresh_state()
        if self._merge_job is None:
            self._replan()

    @property
    def output_path(self) -> Path | None:
        return self.form.output_path()

    @property
    def operation(self) -> str:
        return self.form.operation

    def build_recipe(self) -> MergeRecipe:
        """The recipe the form describes. Raises KxlError naming what still needs choosing or fixing."""
        pickers = [r.picker for r in self.rows]
        if self.form.revert:
            pickers.append(self.original_picker)
        if self.form.lokr_on:
            pickers.append(self.lokr_picker)
        for picker in pickers:
            if picker.path is not None and picker.problem:
                raise KxlError(picker.problem)
        return self.form.to_engine()

    def _replan(self) -> None:
        try:
            recipe = self.build_recipe()
            out = self.output_path
            if out is None:
                raise KxlError("choose an output file")
        except KxlError as exc:
            self._plan.cancel()
            self._show_outcome(PlanOutcome.problem(str(exc)))
            return
        self._plan.submit(lambda _p: estimate(recipe, out), self._show_outcome,
                          lambda message: self._show_outcome(PlanOutcome.problem(message)))  # fmt: skip

    def _show_outcome(self, outcome: PlanOutcome) -> None:
        self.outcome = outcome
        self._refresh_state()
        self.plan_updated.emit(outcome)

    def _refresh_state(self) -> None:
        o, running = self.outcome, self._merge_job is not None
        self.take_a_button.setVisible(bool(o and o.error and o.fixable_missing))
        if o is not None and o.fixable_missing:
            self.take_a_button.setToolTip(
                f"Copy the {o.fixable_missing:,} missing tensor(s) from A unchanged"
            )
        warnings: list[str] = []
        if o is None:
            self.estimate_label.setText("Checking inputs…")
            self.problem_label.clear_message()
        elif o.error:
            self.estimate_label.setText("Fix the problem above to run the merge.")
            self.problem_label.show_error(o.error)
        else:
            self.problem_label.clear_message()
            self.estimate_label.setText(estimate_text(o))
            warnings = plan_warnings(o, self.output_path, self.result)
        self.warnings_label.setText("\n".join(f"⚠ {w}" for w in warnings))
        self.warnings_label.setVisible(bool(warnings))
        self.run_button.setEnabled(not running and o is not None and o.error is None)
        self.view.setEnabled(not running)
        self.panel.show_running(running)

    # ---- run ----------------------------------------------------------------------------------------------
    def start_merge(self) -> Job | None:
        """Run the merge in a worker. The engine re-checks everything, so a stale estimate cannot slip through."""
        if self._merge_job is not None:
            return None
        try:
            recipe = self.build_recipe()
            out = self.output_path
            if out is None:
                raise KxlError("choose an output file")
        except KxlError as exc:
            self._merge_error(str(exc))
            return None
        self.run_message.clear_message()
        self._plan.cancel()
        self.result = None
        self.result_box.hide()
        job = Job(lambda p: run_merge(recipe, out, progress=p), name="merge", parent=self)
        self.panel.progress.bind(job)
        job.succeeded.connect(self._on_merged)
        job.failed.connect(self._merge_error)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_merge_finished)
        self._merge_job = job
        self._refresh_state()
        self.context.show_status(f"Merging into {out} …")
        return job.start()

    def cancel_merge(self) -> None:
        self.panel.progress.cancel()

    def _on_merged(self, result: MergeResult) -> None:
        self.result = result
        self.result_label.setText(result_text(result))
        self.result_label.setToolTip(str(result.path))
        self.result_box.show()
        self.context.show_status(f"Merged into {result.path}")
        if self.context.workspace is not None:
            self.context.set_workspace(self.context.workspace)  # lets other pages pick up the new file
        self.merge_finished.emit(result)

    def _merge_error(self, message: str) -> None:
        self.run_message.show_error(f"Merge failed, nothing was written: {message}")
        self.context.show_status("Merge failed")
        self.merge_failed.emit(message)

    def _on_cancelled(self) -> None:
        self.run_message.show_info("Merge cancelled; nothing was written.")
        self.context.show_status("Merge cancelled; nothing was written")
        self.merge_cancelled.emit()

    def _on_merge_finished(self) -> None:
        self._merge_job = None
        kept = (self.run_message.text(), self.run_message.level)
        self._changed()  # re-plan: the output now exists (a new free name if it follows the inputs)
        if kept[1]:
            self.run_message.show_message(*kept)  # ...but keep the run's own outcome on screen

    # ---- hand-offs ----------------------------------------------------------------------------------------
    def use_as_training_base(self) -> None:
        if self.result is not None:
            self.context.request("train.set_base", self.result.path, switch_to="Train")

    def open_in_generate(self) -> None:
        if self.result is not None:
            self.context.request("generate.set_model", self.result.path, switch_to="Generate")

    def show_folder(self) -> None:
        if self.result is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.result.path.parent)))


def create_tab(context: AppContext) -> QWidget:
    return MergeTab(context)
