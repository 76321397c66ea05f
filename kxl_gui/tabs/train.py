"""Train tab: configure a LoKr run, check it, launch it as a separate process, watch it live, stop or resume it.

Training never runs in the GUI process: Launch writes `<run>/config.toml` and starts `accelerate launch ... -m
trainer_core.train` in its own session (trainer_core.train.runs.start_trainer); the exact command is shown and
copyable, with one line per machine for multi-node runs. The live view follows the run's `events.jsonl`, so it
works the same for a run this window started, one started from the CLI, and one left running when the GUI was
closed (the runs list, reconciled against live processes, reattaches).

Cross-tab requests handled here: "train.set_base" (Path of an SDXL checkpoint) and "train.set_dataset" (Path of
a kohya dataset folder). Sent from here: "generate.add_lokr" (Path of a saved LoKr).
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import signal
import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from trainer_core.atomic import atomic_write_text
from trainer_core.errors import KxlError
from trainer_core.progress import format_duration
from trainer_core.train.config import TrainConfig, load_config, load_preset, preset_names
from trainer_core.train.launch import DEFAULT_PORT, LaunchPlan, format_command, free_port, launch_command
from trainer_core.train.runs import (
    PreflightReport,
    checkpoint_states,
    detect_gpus,
    format_gib,
    mark_run,
    new_run_dir,
    preflight,
    run_process_group,
    saved_lokrs,
    signal_group,
    start_trainer,
)
from trainer_core.workspace import Workspace

from ..context import AppContext
from ..jobs import Job
from ..pages.workspace_page import Card
from ..widgets.train_gallery import SampleGallery
from ..widgets.train_log import RunLogView
from ..widgets.train_plots import TrainPlots
from ..widgets.train_process import RunMonitor
from ..widgets.train_runs import RunsList
from ..widgets.train_settings import SettingsForm
from ..widgets.wheel_guard import install_wheel_guard

TAB_TITLE = "Train"
TAB_ORDER = 40

PRESET_FULL, PRESET_DEMO = "kohaku-xl-delta", "tiny-demo"
MERGED_BASE_PREFIX = "kohaku-xl-delta-base"  # what the Merge tab names the recipe's merged base
REDRAW_MS = 40  # one slot per tick: each slot is redrawn at most ~6 times a second, whatever the event rate
REDRAW_SLOTS = ("loss", "lr", "grad", "status")  # the three plots (TrainPlots.PLOTS), then figures and lists
CATCH_UP_REDRAW_S = 0.6
PREFLIGHT_DELAY_MS = 400
DEVICES = (("auto", "Auto (GPU if present)"), ("gpu", "GPU"), ("cpu", "CPU (gloo)"))
RESUMABLE = ("stopped", "failed")  # a finished run has nothing left to do; a live one is still doing it
SETTINGS_HINT = "Hover an option for its TOML key; the search finds any option."
STATE_TEXT = {"launching": "● launching", "running": "● running", "stopping": "● stopping", "finished": "✓ finished",
              "stopped": "■ stopped", "failed": "✕ failed", "idle": "no run"}  # fmt: skip
_SUBSET_RE = re.compile(r"^\d+_.+")

LOCAL_STYLE = """
QFrame#settingsGroup { background: #212328; border: 1px solid #30343a; border-radius: 8px; }
QLabel#groupTitle { color: #d8b66f; font-weight: 600; }
QPushButton#browseButton { padding: 4px 2px; }
QLineEdit, QComboBox, QSpinBox, QPlainTextEdit {
    background: #1d1f23; border: 1px solid #41454d; border-radius: 5px; padding: 3px 6px;
}
QLineEdit:focus, QComboBox:focus, QSpinBox:focus, QPlainTextEdit:focus { border-color: #e0a33a; }
QPlainTextEdit#commandBox, QPlainTextEdit#logTail { font-family: monospace; font-size: 9pt; color: #d6d2c8; }
QLabel#runState { border-radius: 9px; padding: 2px 10px; font-weight: 600; background: #2f3238; }
QLabel#runState[state="running"], QLabel#runState[state="launching"] { color: #9cc97a; background: #243020; }
QLabel#runState[state="stopping"] { color: #f2c15e; background: #3b2f17; }
QLabel#runState[state="failed"] { color: #f2b59b; background: #3a2520; }
QLabel#runState[state="stopped"] { color: #7fb2e5; background: #1f2a36; }
QLabel#runState[state="finished"] { color: #e6e2da; }
QLabel#figures { font-family: monospace; color: #e6e2da; }
QLabel#preflightItem[level="ok"] { color: #b9d98a; }
QLabel#preflightItem[level="warning"] { color: #f2c15e; }
QLabel#preflightItem[level="error"] { color: #f2b59b; }
QLabel#sampleThumb { background: #1d1f23; border: 1px solid #30343a; border-radius: 4px; }
QCheckBox { background: transparent; spacing: 7px; }
QCheckBox::indicator { width: 14px; height: 14px; border: 1px solid #55595f; border-radius: 3px; background: #1d1f23; }
QCheckBox::indicator:checked { background: #e0a33a; border-color: #e0a33a; }
QListWidget { background: #1d1f23; border: 1px solid #30343a; border-radius: 5px; }
QListWidget::item:selected { background: #4a3b1c; color: #f4efe6; }
QTabWidget#liveTabs::pane { border: none; border-top: 1px solid #30343a; }
"""


def newest_dataset(ws: Workspace) -> Path | None:
    """The most recently modified kohya dataset folder (one holding a `<repeats>_<name>/` subfolder)."""
    root = ws.datasets_path
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if p.is_dir() and any(c.is_dir() and _SUBSET_RE.match(c.name)
                                                              for c in p.iterdir())]  # fmt: skip
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def default_base(ws: Workspace) -> Path | None:
    """The merged base if the workspace has one (role "base", or the Merge tab's file name), else original/gamma."""
    explicit = ws.checkpoint_path("base")
    if explicit is not None and explicit.exists():
        return explicit
    if ws.models_path.is_dir():
        merged = [p for p in ws.models_path.glob(f"{MERGED_BASE_PREFIX}*.safetensors") if p.is_file()]
        if merged:
            return max(merged, key=lambda p: p.stat().st_mtime)
    for role in ("original", "gamma"):
        path = ws.checkpoint_path(role)
        if path is not None and path.exists():
            return path
    return None


_gc_frozen = False


def freeze_long_lived_objects() -> None:
    """Move every object alive now (modules, Qt wrappers, the built widgets: ~80k) out of the garbage collector's
    generations, once per process, when a run is first watched.

    Streaming events allocates dicts quickly, which triggers collections; a full one walked all of those objects
    and paused the GUI thread 25-65 ms (measured). Frozen objects are still freed by reference counting; only a
    reference cycle among them that dies later is kept, a small price for a window that lives for days.
    """
    global _gc_frozen
    if not _gc_frozen:
        _gc_frozen = True
        gc.freeze()


def ask_close_choice(parent: QWidget, run_name: str) -> str:
    """ "stop" | "leave" | "cancel": what to do with a live run when the window closes."""
    box = QMessageBox(parent)
    box.setWindowTitle("Training is running")
    box.setText(f"The run <b>{run_name}</b> is still training.")
    box.setInformativeText("Stop it (it saves its state first), or leave it running and reattach later from the "
                           "runs list?")  # fmt: skip
    stop = box.addButton("Stop training", QMessageBox.ButtonRole.DestructiveRole)
    leave = box.addButton("Leave running", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    clicked = box.clickedButton()
    return "stop" if clicked is stop else "leave" if clicked is leave else "cancel"


class TrainTab(QWidget):
    preflight_done = Signal(object)  # PreflightReport
    run_started = Signal(object)  # Path of the run directory
    run_ended = Signal(str)  # finished | stopped | failed
    monitor_changed = Signal(object)  # RunMonitor | None

    def __init__(self, context: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        install_wheel_guard()  # idempotent: the wheel scrolls the settings, it never rewrites them in passing
        self.context = context
        self.setStyleSheet(LOCAL_STYLE)
        self.monitor: RunMonitor | None = None
        self.report: PreflightReport | None = None
        self.gpus: list[tuple[str, int]] = []
        self._gpu_probe_done = False
        self._cfg = load_preset(PRESET_FULL)
        self._run_dir_auto = True
        self._port = free_port()
        self._preflight_gen = 0
        self._preflight_key: str | None = None
        self._preflight_job: Job | None = None
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

        self._build()
        self._preflight_timer = QTimer(self)
        self._preflight_timer.setSingleShot(True)
        self._preflight_timer.setInterval(PREFLIGHT_DELAY_MS)
        self._preflight_timer.timeout.connect(self._start_preflight)
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setInterval(REDRAW_MS)
        self._redraw_timer.timeout.connect(self._on_redraw_tick)
        self._redraw_timer.start()

        context.workspace_changed.connect(self._on_workspace)
        context.requested.connect(self._on_request)
        self._apply_preset(PRESET_FULL)
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

        left_scroll = QScrollArea()
        left_scroll.setWidgetResizable(True)
        left_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        left = QWidget()
        left.setObjectName("pageContent")
        lcol = QVBoxLayout(left)
        lcol.setContentsMargins(0, 0, 8, 0)
        lcol.setSpacing(10)
        lcol.addWidget(self._build_run_card())
        lcol.addWidget(self._build_preflight_card())
        lcol.addWidget(self._build_launch_card())
        settings_card = Card("Settings")
        settings_card.set_subtitle(SETTINGS_HINT)
        self.settings = SettingsForm()
        self.settings.changed.connect(self._on_settings_changed)
        settings_card.body.addWidget(self.settings)
        lcol.addWidget(settings_card)
        lcol.addStretch(1)
        left_scroll.setWidget(left)
        self.left_scroll, self.settings_card = left_scroll, settings_card
        left_scroll.setMinimumWidth(420)
        splitter.addWidget(left_scroll)

        right = QWidget()
        rcol = QVBoxLayout(right)
        rcol.setContentsMargins(8, 0, 0, 0)
        rcol.setSpacing(8)
        rcol.addWidget(self._build_live_header())
        self.plots = TrainPlots()
        rcol.addWidget(self.plots, 3)
        self.live_tabs = QTabWidget()
        self.live_tabs.setObjectName("liveTabs")
        self.gallery = SampleGallery()
        self.live_tabs.addTab(self.gallery, "Samples")
        self.live_tabs.addTab(self._build_checkpoints(), "Checkpoints")
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

    def _build_run_card(self) -> Card:
        card = Card("Run")
        card.set_subtitle("")
        form = QFormLayout()
        form.setHorizontalSpacing(10)
        self.preset_combo = QComboBox()
        for name in preset_names():
            self.preset_combo.addItem(name, name)
        self.preset_combo.setToolTip("Load a shipped preset's settings (paths are kept)")
        self.preset_combo.activated.connect(lambda i: self._apply_preset(self.preset_combo.itemData(i)))
        form.addRow("Preset", self.preset_combo)
        self.dataset_edit, dataset_row = self._path_row("Kohaku dataset folder (<repeats>_<name>/ + .txt captions)",
                                                        self._browse_dataset)  # fmt: skip
        self.dataset_edit.setToolTip("dataset.path")
        form.addRow("Dataset", dataset_row)
        self.base_edit, base_row = self._path_row("Base SDXL checkpoint (.safetensors)", self._browse_base)
        self.base_edit.setToolTip("model.base")
        form.addRow("Base model", base_row)
        self.run_dir_edit, run_row = self._path_row("Run folder (created at launch)", self._browse_run_dir)
        self.run_dir_edit.setToolTip(
            "The run directory: config.toml, events.jsonl, checkpoints/, samples/, logs/"
        )
        self.run_dir_edit.textEdited.connect(self._on_run_dir_edited)
        form.addRow("Output", run_row)
        self.processes_spin = QSpinBox()
        self.processes_spin.setRange(1, 64)
        self.processes_spin.setToolTip("Processes (GPUs) per machine: accelerate launch --num_processes")
        self.machines_spin = QSpinBox()
        self.machines_spin.setRange(1, 256)
        self.machines_spin.setToolTip("Machines (multi-node): each runs its own command line, shown below")
        self.device_combo = QComboBox()
        for key, label in DEVICES:
            self.device_combo.addItem(label, key)
        for w in (self.processes_spin, self.machines_spin, self.device_combo):
            (w.valueChanged if isinstance(w, QSpinBox) else w.currentIndexChanged).connect(
                self._on_settings_changed
            )
        procs = QHBoxLayout()
        procs.addWidget(self.processes_spin)
        procs.addWidget(QLabel("per machine  ×"))
        procs.addWidget(self.machines_spin)
        procs.addWidget(QLabel("machine(s)"))
        procs.addStretch(1)
        form.addRow("Processes", procs)
        form.addRow("Device", self.device_combo)
        self.node_row = QWidget()
        node = QHBoxLayout(self.node_row)
        node.setContentsMargins(0, 0, 0, 0)
        self.main_ip_edit = QLineEdit()
        self.main_ip_edit.setPlaceholderText("main machine IP")
        self.main_ip_edit.setToolTip("Address of machine 0 (--main_process_ip)")
        self.port_spin = QSpinBox()
        self.port_spin.setRange(1024, 65535)
        self.port_spin.setValue(DEFAULT_PORT)
        self.port_spin.setToolTip("Rendezvous port on machine 0 (--main_process_port)")
        self.main_ip_edit.textChanged.connect(self._on_settings_changed)
        self.port_spin.valueChanged.connect(self._on_settings_changed)
        node.addWidget(self.main_ip_edit, 1)
        node.addWidget(QLabel("Port"))
        node.addWidget(self.port_spin)
        form.addRow("Main node", self.node_row)
        self.run_form = form
        form.setRowVisible(self.node_row, False)
        card.body.addLayout(form)
        files = QHBoxLayout()
        self.load_button = QPushButton("Load TOML…")
        self.load_button.clicked.connect(self._load_toml_dialog)
        self.save_button = QPushButton("Save TOML…")
        self.save_button.clicked.connect(self._save_toml_dialog)
        files.addWidget(self.load_button)
        files.addWidget(self.save_button)
        files.addStretch(1)
        card.body.addLayout(files)
        for edit in (self.dataset_edit, self.base_edit):
            edit.textChanged.connect(self._on_settings_changed)
        self.run_card = card
        return card

    def _path_row(self, placeholder: str, browse) -> tuple[QLineEdit, QWidget]:
        row = QWidget()
        lay = QHBoxLayout(row)
        lay.setContentsMargins(0, 0, 0, 0)
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        button = QPushButton("…")
        button.setObjectName("browseButton")
        button.setFixedWidth(34)
        button.clicked.connect(browse)
        lay.addWidget(edit, 1)
        lay.addWidget(button)
        return edit, row

    def _build_preflight_card(self) -> Card:
        card = Card("Pre-flight")
        self.preflight_box = QVBoxLayout()
        self.preflight_box.setSpacing(3)
        card.body.addLayout(self.preflight_box)
        self.preflight_card = card
        return card

    def _build_launch_card(self) -> Card:
        card = Card("Launch")
        card.set_subtitle(
            "The exact command the button runs (copy it to run the same training from a shell):"
        )
        self.command_box = QPlainTextEdit()
        self.command_box.setObjectName("commandBox")
        self.command_box.setReadOnly(True)
        self.command_box.setFixedHeight(92)
        card.body.addWidget(self.command_box)
        row = QHBoxLayout()
        self.copy_button = QPushButton("Copy command")
        self.copy_button.clicked.connect(self._copy_command)
        self.launch_button = QPushButton("Launch training")
        self.launch_button.setObjectName("primaryButton")
        self.launch_button.clicked.connect(self.launch)
        row.addWidget(self.copy_button)
        row.addStretch(1)
        row.addWidget(self.launch_button)
        card.body.addLayout(row)
        self.launch_card = card
        return card

    def _build_live_header(self) -> Card:
        card = Card("Live")
        card.set_subtitle("")
        head = QHBoxLayout()
        self.run_title = QLabel("No run selected")
        self.run_title.setObjectName("bigFigure")
        self.run_title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.state_label = QLabel("")
        self.state_label.setObjectName("runState")
        head.addWidget(self.run_title, 1)
        head.addWidget(self.state_label)
        card.body.addLayout(head)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        card.body.addWidget(self.progress)
        self.figures = QLabel("")
        self.figures.setObjectName("figures")
        self.figures.setWordWrap(True)
        card.body.addWidget(self.figures)
        buttons = QHBoxLayout()
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip(
            "Graceful: the trainer saves and exits after its step; then SIGTERM, then SIGKILL"
        )
        self.stop_button.clicked.connect(self.stop)
        self.sample_button = QPushButton("Sample now")
        self.sample_button.setToolTip("Render training.sample_prompts after the current step")
        self.sample_button.clicked.connect(lambda: self._command("sample"))
        self.save_now_button = QPushButton("Save now")
        self.save_now_button.setToolTip("Save the LoKr and a resumable state after the current step")
        self.save_now_button.clicked.connect(lambda: self._command("save"))
        self.resume_button = QPushButton("Resume")
        self.resume_button.setObjectName("resumeButton")
        self.resume_button.clicked.connect(self.resume)
        for b in (self.stop_button, self.resume_button, self.sample_button, self.save_now_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        card.body.addLayout(buttons)
        self.live_message = QLabel("")
        self.live_message.setWordWrap(True)
        self.live_message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.live_message.hide()
        card.body.addWidget(self.live_message)
        self.failure_log = QPlainTextEdit()
        self.failure_log.setObjectName("logTail")
        self.failure_log.setReadOnly(True)
        self.failure_log.setFixedHeight(120)
        self.failure_log.hide()
        card.body.addWidget(self.failure_log)
        self.live_card = card
        return card

    def _build_checkpoints(self) -> QWidget:
        page = QWidget()
        lay = QHBoxLayout(page)
        lay.setContentsMargins(0, 6, 0, 0)
        states = QVBoxLayout()
        states.addWidget(QLabel("Training states (Resume, next to Stop, continues from the selected one)"))
        self.states_list = QListWidget()
        states.addWidget(self.states_list, 1)
        lokrs = QVBoxLayout()
        lokrs.addWidget(QLabel("Saved LoKr files"))
        self.lokr_list = QListWidget()
        lokrs.addWidget(self.lokr_list, 1)
        self.open_generate_button = QPushButton("Open in Generate")
        self.open_generate_button.clicked.connect(self.open_in_generate)
        lokrs.addWidget(self.open_generate_button)
        lay.addLayout(states, 1)
        lay.addLayout(lokrs, 1)
        self.states_list.itemSelectionChanged.connect(self._sync_buttons)
        self.lokr_list.itemSelectionChanged.connect(self._sync_buttons)
        return page

    # ================================================================================================ settings
    def _apply_preset(self, name: str) -> None:
        base, dataset = self.base_edit.text(), self.dataset_edit.text()
        cfg = load_preset(name)
        self._settings_run = None
        cfg.model.base, cfg.dataset.path = base, dataset
        self.preset_combo.setCurrentIndex(max(0, self.preset_combo.findData(name)))
        self._cfg = cfg
        self.settings.set_config(cfg)
        self._update_settings_subtitle()
        self._refresh_auto_run_dir()

    def _on_workspace(self, ws: Workspace) -> None:
        if ws.kind == "demo":
            self._apply_preset(PRESET_DEMO)
        dataset, base = newest_dataset(ws), default_base(ws)
        self.dataset_edit.setText(str(dataset) if dataset else "")
        self.base_edit.setText(str(base) if base else "")
        self._run_dir_auto = True
        self._refresh_auto_run_dir()
        self.runs.set_root(ws.runs_path)

    def _on_request(self, action: str, payload: object) -> None:
        if action == "train.set_base" and payload:
            self.base_edit.setText(str(payload))
        elif action == "train.set_dataset" and payload:
            self.dataset_edit.setText(str(payload))

    def _on_run_dir_edited(self, text: str) -> None:
        self._run_dir_auto = not text.strip()
        self._on_settings_changed()

    def _refresh_auto_run_dir(self) -> None:
        if not self._run_dir_auto:
            return
        ws = self.context.workspace
        name = self.settings.editors["output.name"].text().strip() or "run"
        if ws is not None:
            self.run_dir_edit.setText(str(new_run_dir(ws.runs_path, name)))

    def current_config(self) -> TrainConfig:
        """The settings as a validated config with the chosen paths (raises KxlError naming the bad key)."""
        base = TrainConfig()
        base.model.base = self.base_edit.text().strip()
        base.dataset.path = self.dataset_edit.text().strip()
        return self.settings.config(base)

    @property
    def run_dir(self) -> Path | None:
        text = self.run_dir_edit.text().strip()
        return Path(text).expanduser() if text else None

    def _use_cpu(self) -> bool:
        device = self.device_combo.currentData()
        if device == "cpu":
            return True
        if device == "gpu":
            return False
        return not self.gpus if self._gpu_probe_done else shutil.which("nvidia-smi") is None

    def launch_plan(
        self, config: Path, resume_from: Path | None = None, processes: int | None = None
    ) -> LaunchPlan:
        machines = self.machines_spin.value()
        mp = self._cfg.training.mixed_precision
        try:
            mp = self.current_config().training.mixed_precision
        except KxlError:
            pass
        return LaunchPlan(config=config, processes=processes or self.processes_spin.value(), machines=machines,
                          main_ip=self.main_ip_edit.text().strip(),
                          port=self.port_spin.value() if machines > 1 else self._port, cpu=self._use_cpu(),
                          mixed_precision=mp, resume=resume_from is not None, resume_from=resume_from)  # fmt: skip

    def command_text(self, plan: LaunchPlan) -> str:
        if plan.machines == 1:
            return format_command(*launch_command(plan))
        lines = []
        for rank in range(plan.machines):
            lines.append(f"# machine {rank}" + (" (main)" if rank == 0 else ""))
            lines.append(format_command(*launch_command(plan, rank)))
        return "\n".join(lines)

    def _on_settings_changed(self, *_args: object) -> None:
        self.run_form.setRowVisible(self.node_row, self.machines_spin.value() > 1)
        if self.sender() is self.settings:
            self._refresh_auto_run_dir()
        run_dir = self.run_dir
        if run_dir is not None:
            try:
                self.command_box.setPlainText(self.command_text(self.launch_plan(run_dir / "config.toml")))
            except KxlError as exc:
                self.command_box.setPlainText(str(exc))
        self._preflight_timer.start()
        self._sync_buttons()

    # ---- files --------------------------------------------------------------------------------------------
    def _browse_dataset(self) -> None:
        ws = self.context.workspace
        start = self.dataset_edit.text() or (str(ws.datasets_path) if ws else "")
        path = QFileDialog.getExistingDirectory(self, "Dataset folder", start)
        if path:
            self.dataset_edit.setText(path)

    def _browse_base(self) -> None:
        ws = self.context.workspace
        start = self.base_edit.text() or (str(ws.models_path) if ws else "")
        path, _ = QFileDialog.getOpenFileName(
            self, "Base checkpoint", start, "SDXL checkpoint (*.safetensors)"
        )
        if path:
            self.base_edit.setText(path)

    def _browse_run_dir(self) -> None:
        ws = self.context.workspace
        path = QFileDialog.getExistingDirectory(self, "Run folder", str(ws.runs_path) if ws else "")
        if path:
            self.run_dir_edit.setText(path)
            self._on_run_dir_edited(path)

    def load_toml(self, path: Path) -> None:
        """Settings and paths from a training TOML (a run's config.toml or a saved one)."""
        cfg = load_config(path)
        self.base_edit.setText(str(cfg.base_path) if cfg.model.base else "")
        self.dataset_edit.setText(str(cfg.dataset_path) if cfg.dataset.path else "")
        self._cfg = cfg
        self.settings.set_config(cfg)
        self._settings_run = None
        self._update_settings_subtitle()
        self.context.show_status(f"Loaded training settings from {path}")

    def show_run_settings(self, run_dir: Path) -> bool:
        """Show the settings a run was started with (its config.toml snapshot) in the form."""
        path = Path(run_dir) / "config.toml"
        try:
            self.load_toml(path)
        except KxlError as exc:
            self._settings_run = None
            self.settings_card.set_subtitle(f"This run's settings could not be read: {exc}")
            return False
        self._settings_run = Path(run_dir)
        self._update_settings_subtitle()
        return True

    def save_toml(self, path: Path) -> None:
        cfg = self.current_config()
        atomic_write_text(path, cfg.with_absolute_paths().to_toml())
        self.context.show_status(f"Saved training settings to {path}")

    def _load_toml_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load training settings", "", "TOML (*.toml)")
        if path:
            try:
                self.load_toml(Path(path))
            except KxlError as exc:
                self._show_launch_error(str(exc))

    def _save_toml_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save training settings", "train.toml", "TOML (*.toml)")
        if path:
            try:
                self.save_toml(Path(path))
            except KxlError as exc:
                self._show_launch_error(str(exc))

    # ================================================================================================ pre-flight
    def _probe_gpus(self) -> None:
        def done(gpus: list) -> None:
            self.gpus, self._gpu_probe_done = gpus, True
            self._on_settings_changed()

        job = Job(lambda _p: detect_gpus(), name="Detect GPUs", parent=self)
        job.succeeded.connect(done)
        job.start()

    def _start_preflight(self) -> None:
        try:
            cfg = self.current_config()
        except KxlError as exc:
            self._show_preflight(None, str(exc))
            return
        processes, machines, cpu = self.processes_spin.value(), self.machines_spin.value(), self._use_cpu()
        run_dir, gpus = self.run_dir, list(self.gpus)
        key = json.dumps(
            [cfg.to_dict(), processes, machines, cpu, str(run_dir), gpus], sort_keys=True, default=str
        )
        self._preflight_gen += 1
        gen = self._preflight_gen

        def finished(report: PreflightReport) -> None:
            if gen == self._preflight_gen:
                self._preflight_key = key
                self._show_preflight(report)

        job = Job(lambda _p: preflight(cfg, processes, machines, run_dir, gpus=gpus, cpu=cpu),
                  name="Training pre-flight", parent=self)  # fmt: skip
        job.succeeded.connect(finished)
        job.failed.connect(
            lambda msg: self._show_preflight(None, msg) if gen == self._preflight_gen else None
        )
        self._preflight_job = job.start()

    def _show_preflight(self, report: PreflightReport | None, error: str | None = None) -> None:
        self.report = report
        while self.preflight_box.count():
            item = self.preflight_box.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        lines = (
            [("error", error)] if error else [(i.level, i.message) for i in (report.items if report else [])]
        )
        marks = {"ok": "✓", "warning": "⚠", "error": "✕"}
        for level, text in lines:
            label = QLabel(f"{marks[level]}  {text}")
            label.setObjectName("preflightItem")
            label.setProperty("level", level)
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.preflight_box.addWidget(label)
        if report is not None and report.memory is not None:
            self.preflight_card.set_subtitle(
                f"Estimated memory per process: {format_gib(report.memory.total)}"
            )
        else:
            self.preflight_card.set_subtitle("")
        self._sync_buttons()
        if report is not None:
            self.preflight_done.emit(report)

    # ================================================================================================ launch
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
            argv, env = launch_command(plan)
            proc = start_trainer(argv, env, run_dir)
        except KxlError as exc:
            self._show_launch_error(str(exc))
            return None
        self._show_launch_error(None)
        self.command_box.setPlainText(self.command_text(plan))
        self._watch(run_dir, proc, show_settings=False)
        self._port = free_port()  # the next run must not collide with this one's rendezvous
        self._run_dir_auto = True
        self._refresh_auto_run_dir()
        self.run_started.emit(run_dir)
        self.context.show_status(f"Training launched: {run_dir}")
        return run_dir

    def resume(self) -> Path | None:
        """Continue the watched run from the state selected in the Checkpoints list (newest if none selected)."""
        if self.monitor is None:
            return None
        if self.monitor.active:
            self._show_launch_error("The run is still active: stop it before resuming.")
            return None
        if self.monitor.state not in RESUMABLE:
            self._show_launch_error("This run finished: there is nothing left to resume.")
            return None
        run_dir = self.monitor.run_dir
        states = checkpoint_states(run_dir)
        item = self.states_list.currentItem()
        chosen = Path(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None
        state = next((s for s in states if s.path == chosen), states[-1] if states else None)
        if state is None:
            self._show_launch_error("This run has no saved training state to resume from.")
            return None
        try:
            world = json.loads((state.path / "train_state.json").read_text(encoding="utf-8"))["world_size"]
        except (OSError, ValueError, KeyError):
            world = self.processes_spin.value() * self.machines_spin.value()
        machines = self.machines_spin.value()
        try:
            plan = self.launch_plan(run_dir / "config.toml", resume_from=state.path,
                                    processes=max(1, int(world) // machines))  # fmt: skip
            argv, env = launch_command(plan)
            proc = start_trainer(argv, env, run_dir)
        except KxlError as exc:
            self._show_launch_error(str(exc))
            return None
        self._show_launch_error(None)
        self.command_box.setPlainText(self.command_text(plan))
        self._port = free_port()
        self._watch(run_dir, proc)
        self.run_started.emit(run_dir)
        self.context.show_status(f"Resuming {run_dir.name} from step {state.step}")
        return run_dir

    def _show_launch_error(self, text: str | None) -> None:
        self.launch_card.set_error(text)

    def _copy_command(self) -> None:
        QGuiApplication.clipboard().setText(self.command_box.toPlainText())
        self.context.show_status("Launch command copied")

    # ================================================================================================ watching
    def _watch(self, run_dir: Path, proc=None, show_settings: bool = True) -> RunMonitor:
        """Follow `run_dir` (its events, its log); with `show_settings` the form shows the run's config.toml."""
        freeze_long_lived_objects()
        if self.monitor is not None:
            self.monitor.detach()
            self.monitor.deleteLater()
        monitor = RunMonitor(run_dir, proc, handshake_timeout_s=self.handshake_timeout_s,
                             stop_grace_s=self.stop_grace_s, term_grace_s=self.term_grace_s, parent=self)  # fmt: skip
        monitor.state_changed.connect(self._set_live_state)
        monitor.ended.connect(self._on_run_ended)
        self.monitor = monitor
        self._drawn = {"samples": -1, "saves": -1}
        self._slot_drawn.clear()
        self.gallery.clear()
        self.log_view.follow(run_dir)
        if show_settings:
            self.show_run_settings(run_dir)
        else:
            self._settings_run = run_dir  # launched from the form: the form is what config.toml holds
        self.plots.set_series(monitor.series)
        self.run_title.setText(run_dir.name)
        self.run_title.setToolTip(str(run_dir))
        self._set_live_state(monitor.state, monitor.detail)
        self._refresh_checkpoints()
        self.monitor_changed.emit(monitor)
        return monitor

    def attach(self, run_dir: Path) -> RunMonitor | None:
        """Watch (or inspect) a run from the runs list; a live one is followed until it ends."""
        if self.monitor is not None and self.monitor.run_dir == Path(run_dir):
            return self.monitor
        if self.monitor is not None and self.monitor.owns_process:
            self._show_launch_error(
                "This window launched the current run; it keeps watching it until it ends."
            )
            return None
        monitor = self._watch(Path(run_dir))
        self.live_tabs.setCurrentIndex(0)
        return monitor

    def _on_runs_listed(self, runs: list) -> None:
        if self.monitor is not None:
            return
        live = [r for r in runs if r.state in ("running", "launching")]
        if live:
            self.attach(live[0].run_dir)  # reattach to what was left running (newest first)

    def _set_live_state(self, state: str, detail: str) -> None:
        self.state_label.setText(STATE_TEXT.get(state, state))
        self.state_label.setProperty("state", state)
        self.state_label.style().unpolish(self.state_label)
        self.state_label.style().polish(self.state_label)
        failed = state == "failed"
        self.live_message.setObjectName(
            "inlineError" if failed or (state == "launching" and detail) else "muted"
        )
        self.live_message.style().unpolish(self.live_message)
        self.live_message.style().polish(self.live_message)
        self.live_message.setText(detail)
        self.live_message.setVisible(bool(detail))
        tail = self.monitor.log_tail if self.monitor is not None else []
        show_log = bool(tail) and (failed or state == "launching")
        self.failure_log.setPlainText("\n".join(tail))
        self.failure_log.verticalScrollBar().setValue(self.failure_log.verticalScrollBar().maximum())
        self.failure_log.setVisible(show_log)
        if self.monitor is not None:
            self.figures.setText(self._figures_text())
        self._sync_buttons()

    def _on_run_ended(self, state: str) -> None:
        self._refresh_checkpoints()
        self.runs.refresh()
        self.run_ended.emit(state)
        self.context.show_status(f"Training {state}: {self.monitor.run_dir.name if self.monitor else ''}")

    def _on_redraw_tick(self) -> None:
        """One slot of the live view per tick, round robin. A slot is one plot, or the figures + lists; each is a
        separate paint, so a tick stays short while every slot is still redrawn ~6 times a second (REDRAW_MS x
        len(REDRAW_SLOTS)). Plots are skipped while the tab is not on screen (they catch up when it is)."""
        m = self.monitor
        if m is None:
            return
        version = m.series.version
        now = time.monotonic()
        visible = self.isVisible()
        for _ in range(len(REDRAW_SLOTS)):
            slot = REDRAW_SLOTS[self._next_slot]
            self._next_slot = (self._next_slot + 1) % len(REDRAW_SLOTS)
            if self._slot_drawn.get(slot) == version or (not visible and slot != "status"):
                continue
            if m.far_behind and now - self._slot_time.get(slot, 0.0) < CATCH_UP_REDRAW_S:
                continue  # reading a long backlog (reattach): intermediate states are not worth a repaint each
            self._slot_time[slot] = now
            self._refresh_live(slot)
            return

    def _refresh_live(self, slot: str | None = None) -> None:
        """Redraw what changed: one of REDRAW_SLOTS, or all of them (None)."""
        m = self.monitor
        if m is None:
            return
        s = m.series
        if self.plots.series is not s:  # the events file was replaced: the monitor started a new series
            self.plots.set_series(s)
            self._drawn = {"samples": -1, "saves": -1}
            self._slot_drawn.clear()
        for name in REDRAW_SLOTS if slot is None else (slot,):
            if self._slot_drawn.get(name) == s.version:
                continue
            self._slot_drawn[name] = s.version
            if name == "status":
                self._refresh_status(s)
            else:
                self.plots.refresh(name)

    def _refresh_status(self, s) -> None:
        total = s.total_steps or 0
        self.progress.setMaximum(max(1, total))
        self.progress.setValue(min(s.last_step, max(1, total)))
        self.figures.setText(self._figures_text())
        if len(s.samples) != self._drawn["samples"]:
            self._drawn["samples"] = len(s.samples)
            self.gallery.set_samples(s.samples)
        saves = sum(1 for mk in s.markers if mk.kind == "save")
        if saves != self._drawn["saves"]:
            self._drawn["saves"] = saves
            self._refresh_checkpoints()

    def _figures_text(self) -> str:
        s = self.monitor.series
        if not s.n:
            return s.last_status or "Waiting for the first step…"
        parts = [f"step {s.last_step:,}" + (f" / {s.total_steps:,}" if s.total_steps else "")]
        loss = s.column("loss")[-1]
        parts.append(f"loss {loss:.4f} (smoothed {s.ema(self.plots.smoothing)[-1]:.4f})")
        ips = s.column("images_per_s")[-1]
        if ips == ips:
            parts.append(f"{ips:.2f} img/s")
        peak = s.peak_memory_mb()
        if peak is not None:
            parts.append(f"peak {peak:,.0f} MB")
        wait = s.data_wait_fraction()
        if wait is not None:
            parts.append(f"data wait {100 * wait:.0f}%")  # high: more dataset.num_workers, or faster storage
        skipped = s.skipped_steps()
        if skipped:
            parts.append(f"⚠ {skipped} step(s) skipped (non-finite)")
        eta = s.eta_seconds()
        if self.monitor.active:
            parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA estimating…")
        return "  ·  ".join(parts)

    def _refresh_checkpoints(self) -> None:
        self.states_list.clear()
        self.lokr_list.clear()
        if self.monitor is None:
            self._sync_buttons()
            return
        run_dir = self.monitor.run_dir
        for st in reversed(checkpoint_states(run_dir)):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.saved)) if st.saved else "?"
            item = QListWidgetItem(f"step {st.step:,}  —  {when}")
            item.setData(Qt.ItemDataRole.UserRole, str(st.path))
            self.states_list.addItem(item)
        if self.states_list.count():
            self.states_list.setCurrentRow(0)
        for path in saved_lokrs(run_dir):
            item = QListWidgetItem(path.name)
            item.setData(Qt.ItemDataRole.UserRole, str(path))
            item.setToolTip(str(path))
            self.lokr_list.addItem(item)
        if self.lokr_list.count():
            self.lokr_list.setCurrentRow(0)
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        m = self.monitor
        active = m is not None and m.active
        preflight_ok = self.report is not None and self.report.ok
        self.launch_button.setEnabled(not active and preflight_ok)
        self.stop_button.setEnabled(active and m.state != "stopping")
        self.sample_button.setEnabled(active and m.handshake)
        self.save_now_button.setEnabled(active and m.handshake)
        resumable = m is not None and not active and m.state in RESUMABLE and self.states_list.count() > 0
        self.resume_button.setEnabled(resumable)
        self.resume_button.setToolTip(self._resume_tip(resumable))
        self.open_generate_button.setEnabled(self.lokr_list.currentItem() is not None)
        self._lock_form(active)

    def _resume_tip(self, resumable: bool) -> str:
        m = self.monitor
        if resumable:
            item = self.states_list.currentItem()
            return f"Continue this run from its saved state ({item.text() if item else 'newest'}; pick another " \
                   "in Checkpoints)"  # fmt: skip
        if m is None:
            return "Resume a stopped or failed run: open it from the Runs list first"
        if m.active:
            return "The run is still going: stop it first"
        if m.state == "finished":
            return "The run finished: there is nothing left to resume"
        return "This run has no saved training state to resume from"

    def _lock_form(self, locked: bool) -> None:
        """While the watched run is live the form shows its settings read-only: edits would not reach it."""
        if locked == self._form_locked:
            return
        self._form_locked = locked
        self.settings.set_read_only(locked)
        for edit in (self.dataset_edit, self.base_edit):
            edit.setReadOnly(locked)
        for w in (self.preset_combo, self.load_button):
            w.setEnabled(not locked)
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

    # ================================================================================================ actions
    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def _command(self, name: str) -> None:
        if self.monitor is not None and self.monitor.active:
            self.monitor.request(name)
            self.context.show_status(f"{name.capitalize()} requested: served after the current step")

    def open_in_generate(self) -> None:
        item = self.lokr_list.currentItem()
        if item is not None:
            self.context.request("generate.add_lokr", Path(item.data(Qt.ItemDataRole.UserRole)),
                                 switch_to="Generate")  # fmt: skip

    def _mark_stopped(self, run_dir: Path) -> None:
        mark_run(run_dir, "stopped", message="marked stopped by the user")
        self.runs.refresh()

    def _kill_run(self, run_dir: Path) -> None:
        if self.monitor is not None and self.monitor.run_dir == run_dir:
            self.monitor.kill()
        else:
            try:
                signal_group(run_process_group(run_dir), signal.SIGKILL)
            except KxlError as exc:
                self.context.show_status(str(exc))
        self.runs.refresh()

    def confirm_close(self) -> bool:
        """Asked by the main window before it closes: a live run is stopped or left running, or closing is cancelled."""
        m = self.monitor
        if m is None or not m.active:
            return True
        choice = self.close_choice(self, m.run_dir.name)
        if choice == "cancel":
            return False
        if choice == "stop":
            m.stop()
            m.detach()  # the stop file / signal is on its way; the trainer finishes without us
        else:
            m.detach()
        return True


def create_tab(context: AppContext) -> QWidget:
    return TrainTab(context)
