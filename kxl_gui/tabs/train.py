"""Train tab: configure a LoKr run, check it, launch it as a separate process, watch it live, stop or resume it.

Training never runs in the GUI process: Launch writes `<run>/config.toml` and starts `accelerate launch ... -m
trainer_core.train` through the engine's trainer supervisor (trainer_core.train.supervisor: its own session,
handshake deadline, stop -> SIGTERM -> SIGKILL), the same one `kxl train` and `kxl demo run` use; the exact
command is shown and copyable, with one line per machine for multi-node runs. The live view follows the run's
`events.jsonl`, so it works the same for a run this window started, one started from the CLI, and one left
running when the GUI was closed (the runs list, reconciled against live processes, reattaches).

What the user enters lives in a `TrainForm` (kxl_gui/state/train_form.py); the Run card and the settings panel
are bound to it, and a launch writes `form.to_engine()`. Pieces: train_run_card.py, train_preflight_card.py,
train_live_card.py (Live card, Checkpoints page), train_close_choice.py (the close question), train_style.py.

Cross-tab requests handled here: "train.set_base" (Path of an SDXL checkpoint) and "train.set_dataset" (Path of
a kohya dataset folder). Sent from here: "generate.add_lokr" (Path of a saved LoKr).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from trainer_core.atomic import atomic_write_text
from trainer_core.errors import KxlError
from trainer_core.train.config import TrainConfig, load_config, load_preset
from trainer_core.train.launch import LaunchPlan, commands_text, free_port, launch_command
from trainer_core.train.runs import (
    PreflightReport,
    checkpoint_states,
    detect_gpus,
    new_run_dir,
    preflight,
)
from trainer_core.train.supervisor import Supervisor
from trainer_core.workspace import Workspace
from trainer_core.workspace_queries import default_base, newest_dataset

from ..context import AppContext
from ..jobs import Job
from ..kit.card import Card
from ..kit.latest_request import LatestRequest
from ..kit.path_row import open_path_dialog
from ..state.train_form import TrainForm
from ..widgets.train_gallery import SampleGallery
from ..widgets.train_log import RunLogView
from ..widgets.train_plots import TrainPlots
from ..widgets.train_run_monitor import RunMonitor
from ..widgets.train_runs import RunsList
from ..widgets.train_settings import SettingsForm
from ..widgets.wheel_guard import install_wheel_guard
from .train_close_choice import ask_close_choice
from .train_launch_card import LaunchCard
from .train_live_card import CheckpointsPage, LiveCard
from .train_preflight_card import PreflightCard
from .train_run_card import RunCard
from .train_style import LOCAL_STYLE
from .train_watching import RESUMABLE, RunWatching

TAB_TITLE = "Train"
TAB_ORDER = 40

PRESET_FULL, PRESET_DEMO = "kohaku-xl-delta", "tiny-demo"
REDRAW_MS = 40  # one slot per tick: each slot is redrawn at most ~6 times a second, whatever the event rate
PREFLIGHT_DELAY_MS = 400
SETTINGS_HINT = "Hover an option for its TOML key; the search finds any option."


class TrainTab(RunWatching, QWidget):
    preflight_done = Signal(object)  # PreflightReport
    run_started = Signal(object)  # Path of the run directory
    run_ended = Signal(str)  # finished | stopped | failed
    monitor_changed = Signal(object)  # RunMonitor | None

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        install_wheel_guard()  # idempotent: the wheel scrolls the settings, it never rewrites them in passing
        self.context = context
        self.setStyleSheet(LOCAL_STYLE)
        self.form = TrainForm.from_engine(load_preset(PRESET_FULL), PRESET_FULL)
        self.monitor: RunMonitor | None = None
        self.report: PreflightReport | None = None
        self.gpus: list[tuple[str, int]] = []
        self._gpu_probe_done = False
        self._run_dir_auto = True
        self._port = free_port()
        self._drawn = {"samples": -1, "saves": -1}
        self._slot_drawn: dict[str, int] = {}  # series version each redraw slot shows
        self._slot_time: dict[str, float] = {}
        self._next_slot = 0
        self.handshake_timeout_s = 120.0
        self.stop_grace_s = 90.0
        self.term_grace_s = 20.0
        self.close_choice = ask_close_choice  # replaced in tests
        self._form_locked = False
        self._settings_run: Path | None = None  # the run whose config.toml the form shows

        self.preflight_request = LatestRequest(
            "Training pre-flight", parent=self, delay_ms=PREFLIGHT_DELAY_MS
        )
        self._build()
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setInterval(REDRAW_MS)
        self._redraw_timer.timeout.connect(self._on_redraw_tick)
        self._redraw_timer.start()

        context.workspace_changed.connect(self._on_workspace)
        context.requested.connect(self._on_request)
        self.apply_preset(PRESET_FULL)
        self._probe_gpus()
        if context.workspace is not None:
            self._on_workspace(context.workspace)
        self._set_live_state("idle", "")

    # ================================================================================================ layout
    def _build(self) -> None:
        outer = QHBoxLayout(self)
        outer.setContentsMargins(12, 12, 12, 12)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setChildrenCollapsible(False)
        outer.addWidget(splitter)

        self.left_scroll = QScrollArea()
        self.left_scroll.setWidgetResizable(True)
        self.left_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        left = QWidget()
        left.setObjectName("pageContent")
        lcol = QVBoxLayout(left)
        lcol.setContentsMargins(0, 0, 8, 0)
        lcol.setSpacing(10)
        self.run_card = RunCard(self.form)
        self.run_card.edited.connect(self._on_form_edited)
        self.run_card.preset_chosen.connect(self.apply_preset)
        self.run_card.load_requested.connect(self._load_toml_dialog)
        self.run_card.save_requested.connect(self._save_toml_dialog)
        for path_row in (self.run_card.dataset_row, self.run_card.base_row, self.run_card.run_dir_row):
            path_row.start_folder = self._browse_start
        lcol.addWidget(self.run_card)
        self.preflight_card = PreflightCard()
        lcol.addWidget(self.preflight_card)
        self.launch_card = LaunchCard()
        self.launch_card.launch_button.clicked.connect(self.launch)
        self.launch_card.copy_button.clicked.connect(
            lambda: self.context.show_status("Launch command copied")
        )
        self.command_box, self.copy_button = self.launch_card.command_box, self.launch_card.copy_button
        self.launch_button = self.launch_card.launch_button
        lcol.addWidget(self.launch_card)
        self.settings_card = Card("Settings", SETTINGS_HINT)
        self.settings = SettingsForm(self.form.settings)
        self.settings.edited.connect(self._on_form_edited)
        self.settings_card.body.addWidget(self.settings)
        lcol.addWidget(self.settings_card)
        lcol.addStretch(1)
        self.left_scroll.setWidget(left)
        self.left_scroll.setMinimumWidth(420)
        splitter.addWidget(self.left_scroll)

        right = QWidget()
        rcol = QVBoxLayout(right)
        rcol.setContentsMargins(8, 0, 0, 0)
        rcol.setSpacing(8)
        self.live_card = LiveCard()
        self.live_card.stop_clicked.connect(self.stop)
        self.live_card.resume_clicked.connect(self.resume)
        self.live_card.command_clicked.connect(self._command)
        rcol.addWidget(self.live_card)
        self.plots = TrainPlots()
        rcol.addWidget(self.plots, 3)
        self.live_tabs = QTabWidget()
        self.live_tabs.setObjectName("liveTabs")
        self.gallery = SampleGallery()
        self.live_tabs.addTab(self.gallery, "Samples")
        self.checkpoints = CheckpointsPage()
        self.checkpoints.selection_changed.connect(self._sync_buttons)
        self.checkpoints.open_in_generate.connect(self.open_in_generate)
        self.checkpoints.compare_states.connect(self.compare_states)
        self.live_tabs.addTab(self.checkpoints, "Checkpoints")
        self.runs = RunsList()
        self.runs.open_requested.connect(self.attach)
        self.runs.mark_stopped_requested.connect(self._mark_stopped)
        self.runs.kill_requested.connect(self._kill_run)
        self.runs.refreshed.connect(self._on_runs_listed)
        self.live_tabs.addTab(self.runs, "Runs")
        self.log_view = RunLogView()
        self.live_tabs.addTab(self.log_view, "Log")
        self.live_tabs.setMinimumHeight(210)
        rcol.addWidget(self.live_tabs, 2)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([500, 860])
        # the widgets tests and the window reach by name
        rc, lc, cp = self.run_card, self.live_card, self.checkpoints
        self.preset_combo, self.device_combo, self.load_button = (
            rc.preset_combo,
            rc.device_combo,
            rc.load_button,
        )
        self.dataset_edit, self.base_edit, self.run_dir_edit = (
            rc.dataset_row.edit,
            rc.base_row.edit,
            rc.run_dir_row.edit,
        )
        self.processes_spin, self.machines_spin = rc.processes_spin, rc.machines_spin
        self.stop_button, self.resume_button = lc.stop_button, lc.resume_button
        self.sample_button, self.save_now_button = lc.sample_button, lc.save_now_button
        self.live_message, self.failure_log, self.figures = lc.live_message, lc.failure_log, lc.figures
        self.run_title = lc.run_title
        self.states_list, self.lokr_list, self.open_generate_button = (
            cp.states_list,
            cp.lokr_list,
            cp.open_generate_button,
        )

    # ================================================================================================ the form
    def apply_preset(self, name: str) -> None:
        """A shipped preset's settings; the chosen dataset, base and run folder are kept."""
        self.form.load(TrainForm.from_engine(load_preset(name), name), keep_paths=True)
        self._settings_run = None
        self._update_settings_subtitle()
        self._refresh_auto_run_dir()
        self._show_form()

    def _show_form(self) -> None:
        """The form changed in code: show it in every bound widget, then follow up like a user edit."""
        self.run_card.show_form()
        self.settings.show_values()
        self._on_form_changed()

    def _on_form_edited(self, name: str) -> None:
        """The user changed field `name` (the form already holds the new value)."""
        if name == "run_dir":
            self._run_dir_auto = not self.form.run_dir.strip()
        elif name == "output.name" and self._refresh_auto_run_dir():
            self.run_card.show_form()
        elif name == "machines":
            self.run_card.show_form()  # the main-node row appears with a second machine
        self._on_form_changed()

    def _on_form_changed(self) -> None:
        run_dir = self.run_dir
        if run_dir is not None:
            try:
                self.command_box.setPlainText(commands_text(self.launch_plan(run_dir / "config.toml")))
            except KxlError as exc:
                self.command_box.setPlainText(str(exc))
        self._schedule_preflight()
        self._sync_buttons()

    def _on_workspace(self, ws: Workspace) -> None:
        if ws.kind == "demo":
            self.apply_preset(PRESET_DEMO)
        dataset, base = newest_dataset(ws), default_base(ws)
        self.form.dataset, self.form.base = str(dataset) if dataset else "", str(base) if base else ""
        self._run_dir_auto = True
        self._refresh_auto_run_dir()
        self._show_form()
        self.runs.set_root(ws.runs_path)

    def _on_request(self, action: str, payload: object) -> None:
        if action == "train.set_base" and payload:
            self.form.base = str(payload)
        elif action == "train.set_dataset" and payload:
            self.form.dataset = str(payload)
        else:
            return
        self._show_form()

    def _refresh_auto_run_dir(self) -> bool:
        """A fresh `<runs>/<output.name>-<time>` folder unless the user chose one; True if it changed."""
        ws = self.context.workspace
        if not self._run_dir_auto or ws is None:
            return False
        name = str(self.form.settings["output.name"]).strip() or "run"
        old, self.form.run_dir = self.form.run_dir, str(new_run_dir(ws.runs_path, name))
        return old != self.form.run_dir

    def _browse_start(self) -> str:
        ws = self.context.workspace
        return str(ws.root) if ws is not None else ""

    def current_config(self) -> TrainConfig:
        """The settings as a validated config with the chosen paths (raises KxlError naming the bad key)."""
        return self.form.to_engine()

    @property
    def run_dir(self) -> Path | None:
        return self.form.run_path

    def _gpu_present(self) -> bool:
        return bool(self.gpus) if self._gpu_probe_done else shutil.which("nvidia-smi") is not None

    def launch_plan(
        self, config: Path, resume_from: Path | None = None, processes: int | None = None
    ) -> LaunchPlan:
        return self.form.launch_plan(config, local_port=self._port, gpu_present=self._gpu_present(),
                                     resume_from=resume_from, processes=processes)  # fmt: skip

    # ---- files --------------------------------------------------------------------------------------------
    def load_toml(self, path: Path) -> None:
        """Settings and paths from a training TOML (a run's config.toml or a saved one)."""
        self.form.load(TrainForm.from_engine(load_config(path), self.form.preset))
        self._settings_run = None
        self._update_settings_subtitle()
        self._show_form()
        self.context.show_status(f"Loaded training settings from {path}")

    def show_run_settings(self, run_dir: Path) -> bool:
        """Show the settings a run was started with (its config.toml snapshot) in the form."""
        try:
            self.load_toml(Path(run_dir) / "config.toml")
        except KxlError as exc:
            self._settings_run = None
            self.settings_card.set_subtitle(f"This run's settings could not be read: {exc}")
            return False
        self._settings_run = Path(run_dir)
        self._update_settings_subtitle()
        return True

    def save_toml(self, path: Path) -> None:
        atomic_write_text(path, self.current_config().with_absolute_paths().to_toml())
        self.context.show_status(f"Saved training settings to {path}")

    def _load_toml_dialog(self) -> None:
        open_path_dialog(self, "open_file", "Load training settings", self._browse_start(),
                         lambda p: self._guarded(self.load_toml, Path(p)), "TOML (*.toml)")  # fmt: skip

    def _save_toml_dialog(self) -> None:
        open_path_dialog(self, "save_file", "Save training settings", self._browse_start(),
                         lambda p: self._guarded(self.save_toml, Path(p)), "TOML (*.toml)", "toml")  # fmt: skip

    def _guarded(self, action, path: Path) -> None:
        try:
            action(path)
        except KxlError as exc:
            self._show_launch_error(str(exc))

    # ================================================================================================ pre-flight
    def _probe_gpus(self) -> None:
        def done(gpus: list) -> None:
            self.gpus, self._gpu_probe_done = gpus, True
            self._on_form_changed()

        job = Job(lambda _p: detect_gpus(), name="Detect GPUs", parent=self)
        job.succeeded.connect(done)
        job.start()

    def _schedule_preflight(self, delay_ms: int | None = None) -> None:
        """Check the form's config in a worker after a pause in typing; only the newest check's answer shows."""
        try:
            cfg = self.current_config()
        except KxlError as exc:
            self.preflight_request.cancel()
            self._show_preflight(None, str(exc))
            return
        processes, machines, cpu = (
            self.form.processes,
            self.form.machines,
            self.form.use_cpu(self._gpu_present()),
        )
        run_dir, gpus = self.run_dir, list(self.gpus)
        self.preflight_request.submit(
            lambda _p: preflight(cfg, processes, machines, run_dir, gpus=gpus, cpu=cpu),
            on_result=self._show_preflight, on_error=lambda msg: self._show_preflight(None, msg), delay_ms=delay_ms,
        )  # fmt: skip

    def check_now(self) -> None:
        """Run the pre-flight at once (no typing pause)."""
        self._schedule_preflight(delay_ms=0)

    def _show_preflight(self, report: PreflightReport | None, error: str | None = None) -> None:
        self.report = report
        self.preflight_card.show_report(report, error)
        self._sync_buttons()
        if report is not None:
            self.preflight_done.emit(report)

    # ================================================================================================ launch
    def _supervisor(
        self, run_dir: Path, argv: list[str] | None = None, env: dict | None = None
    ) -> Supervisor:
        # not tied to this process: a run launched here survives the window closing (reattach from the runs list)
        return Supervisor(run_dir, argv, env, handshake_s=self.handshake_timeout_s,
                          stop_grace_s=self.stop_grace_s, term_grace_s=self.term_grace_s)  # fmt: skip

    def launch(self) -> Path | None:
        """Write the run's config.toml and start the trainer; returns the run directory (None if refused)."""
        if self.monitor is not None and self.monitor.active:
            self._show_launch_error("A run is being watched and still active: stop it first (or detach).")
            return None
        try:
            cfg = self.current_config()
            run_dir = self.run_dir
            if run_dir is None:
                raise KxlError("choose an output run folder")
            if self.report is None or not self.report.ok:
                raise KxlError("the pre-flight check has problems (see above); fix them before launching")
            if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
                raise KxlError("this run folder already holds a run: open it from the Runs list and press "
                               "Resume, or choose a new folder", path=run_dir)  # fmt: skip
            run_dir.mkdir(parents=True, exist_ok=True)
            config_path = run_dir / "config.toml"
            atomic_write_text(config_path, cfg.with_absolute_paths().to_toml())
            plan = self.launch_plan(config_path)
            sup = self._supervisor(run_dir, *launch_command(plan))
            sup.start()
        except KxlError as exc:
            self._show_launch_error(str(exc))
            return None
        self._show_launch_error(None)
        self.command_box.setPlainText(commands_text(plan))
        self._watch(sup, show_settings=False)
        self._port = free_port()  # the next run must not collide with this one's rendezvous
        self._run_dir_auto = True
        self._refresh_auto_run_dir()
        self.run_card.show_form()
        self.run_started.emit(run_dir)
        self.context.show_status(f"Training launched: {run_dir}")
        return run_dir

    def resume(self) -> Path | None:
        """Continue the watched run from the state selected in the Checkpoints list (newest if none selected)."""
        m = self.monitor
        if m is None:
            return None
        if m.active:
            self._show_launch_error("The run is still active: stop it before resuming.")
            return None
        if m.state not in RESUMABLE:
            self._show_launch_error("This run finished: there is nothing left to resume.")
            return None
        run_dir = m.run_dir
        states = checkpoint_states(run_dir)
        chosen = self.checkpoints.selected_state()
        state = next((s for s in states if s.path == chosen), states[-1] if states else None)
        if state is None:
            self._show_launch_error("This run has no saved training state to resume from.")
            return None
        world = state.world_size or self.form.processes * self.form.machines
        try:
            plan = self.launch_plan(run_dir / "config.toml", resume_from=state.path,
                                    processes=max(1, int(world) // self.form.machines))  # fmt: skip
            sup = self._supervisor(run_dir, *launch_command(plan))
            sup.start()
        except KxlError as exc:
            self._show_launch_error(str(exc))
            return None
        self._show_launch_error(None)
        self.command_box.setPlainText(commands_text(plan))
        self._port = free_port()
        self._watch(sup)
        self.run_started.emit(run_dir)
        self.context.show_status(f"Resuming {run_dir.name} from step {state.step}")
        return run_dir

    def _show_launch_error(self, text: str | None) -> None:
        self.launch_card.message.show_error(text)

    def _lock_form(self, locked: bool) -> None:
        """While the watched run is live the form shows its settings read-only: edits would not reach it."""
        if locked == self._form_locked:
            return
        self._form_locked = locked
        self.settings.set_read_only(locked)
        self.run_card.set_read_only(locked)
        self._update_settings_subtitle()

    def _update_settings_subtitle(self) -> None:
        source = self._settings_run
        if source is not None and self._form_locked:
            text = f"Settings of the running run {source.name} (its config.toml), read-only while it runs."
        elif source is not None:
            text = f"Loaded from run {source.name} (its config.toml). {SETTINGS_HINT}"
        else:
            text = SETTINGS_HINT
        self.settings_card.set_subtitle(text)


def create_tab(context: AppContext) -> QWidget:
    return TrainTab(context)
