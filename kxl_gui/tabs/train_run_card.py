"""The Train tab's Run card: preset, dataset, base model, run folder, processes × machines, device, main node, and
Load/Save TOML. Every input is bound to a field of the tab's `TrainForm` (kxl_gui.kit.FormBinding); the card
keeps no value of its own. `edited(name)` reports the field the user changed."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from trainer_core.train.config import preset_names

from ..kit.card import Card
from ..kit.form_binding import FormBinding
from ..kit.path_row import PathRow
from ..state.train_form import TrainForm

DEVICE_LABELS = (("auto", "Auto (GPU if present)"), ("gpu", "GPU"), ("cpu", "CPU (gloo)"))


class RunCard(Card):
    edited = Signal(str)  # the TrainForm field the user changed
    preset_chosen = Signal(str)  # a preset picked in the combo (its settings replace the form's)
    load_requested = Signal()
    save_requested = Signal()

    def __init__(self, form: TrainForm, parent: QWidget | None = None) -> None:
        super().__init__("Run", parent=parent)
        self.binding = FormBinding(form, self)
        self.binding.edited.connect(self.edited)
        grid = QFormLayout()
        grid.setHorizontalSpacing(10)
        self.preset_combo = QComboBox()
        for name in preset_names():
            self.preset_combo.addItem(name, name)
        self.preset_combo.setToolTip("Load a shipped preset's settings (paths are kept)")
        self.preset_combo.activated.connect(lambda i: self.preset_chosen.emit(self.preset_combo.itemData(i)))
        grid.addRow("Preset", self.preset_combo)
        self.dataset_row = PathRow("folder", "Dataset folder",
                                   placeholder="Kohaku dataset folder (<repeats>_<name>/ + .txt captions)")  # fmt: skip
        self.dataset_row.edit.setToolTip("dataset.path")
        grid.addRow("Dataset", self.dataset_row)
        self.base_row = PathRow("open_file", "Base checkpoint", "SDXL checkpoint (*.safetensors)",
                                placeholder="Base SDXL checkpoint (.safetensors)")  # fmt: skip
        self.base_row.edit.setToolTip("model.base")
        grid.addRow("Base model", self.base_row)
        self.run_dir_row = PathRow("folder", "Run folder", placeholder="Run folder (created at launch)")
        self.run_dir_row.edit.setToolTip(
            "The run directory: config.toml, events.jsonl, checkpoints/, samples/, logs/"
        )
        grid.addRow("Output", self.run_dir_row)
        self.processes_spin = QSpinBox()
        self.processes_spin.setRange(1, 64)
        self.processes_spin.setToolTip("Processes (GPUs) per machine: accelerate launch --num_processes")
        self.machines_spin = QSpinBox()
        self.machines_spin.setRange(1, 256)
        self.machines_spin.setToolTip("Machines (multi-node): each runs its own command line, shown below")
        self.device_combo = QComboBox()
        for key, label in DEVICE_LABELS:
            self.device_combo.addItem(label, key)
        procs = QHBoxLayout()
        procs.addWidget(self.processes_spin)
        procs.addWidget(QLabel("per machine  ×"))
        procs.addWidget(self.machines_spin)
        procs.addWidget(QLabel("machine(s)"))
        procs.addStretch(1)
        grid.addRow("Processes", procs)
        grid.addRow("Device", self.device_combo)
        self.node_row = QWidget()
        node = QHBoxLayout(self.node_row)
        node.setContentsMargins(0, 0, 0, 0)
        self.main_ip_edit = QLineEdit()
        self.main_ip_edit.setPlaceholderText("main machine IP")
        self.main_ip_edit.setToolTip("Address of machine 0 (--main_process_ip)")
        self.port_spin = QSpinBox()
        self.port_spin.setRange(1024, 65535)
        self.port_spin.setToolTip("Rendezvous port on machine 0 (--main_process_port)")
        node.addWidget(self.main_ip_edit, 1)
        node.addWidget(QLabel("Port"))
        node.addWidget(self.port_spin)
        grid.addRow("Main node", self.node_row)
        self.grid = grid
        self.body.addLayout(grid)
        files = QHBoxLayout()
        self.load_button = QPushButton("Load TOML…")
        self.load_button.clicked.connect(self.load_requested)
        self.save_button = QPushButton("Save TOML…")
        self.save_button.clicked.connect(self.save_requested)
        files.addWidget(self.load_button)
        files.addWidget(self.save_button)
        files.addStretch(1)
        self.body.addLayout(files)

        b = self.binding
        b.path(self.dataset_row, "dataset")
        b.path(self.base_row, "base")
        b.path(self.run_dir_row, "run_dir")
        b.spin(self.processes_spin, "processes")
        b.spin(self.machines_spin, "machines")
        b.combo_data(self.device_combo, "device")
        b.line(self.main_ip_edit, "main_ip")
        b.spin(self.port_spin, "port")
        b.bind("preset", self.preset_combo.currentData,
               lambda v: self.preset_combo.setCurrentIndex(max(0, self.preset_combo.findData(v))),
               self.preset_combo.activated)  # fmt: skip
        self.show_form()

    def show_form(self) -> None:
        """Show the form's values (after a preset, a loaded file, a run's config, a cross-tab request)."""
        self.binding.push()
        self.grid.setRowVisible(self.node_row, self.binding.form.machines > 1)

    def set_read_only(self, locked: bool) -> None:
        """A live run's settings: the paths and the preset cannot change under it."""
        for row in (self.dataset_row, self.base_row):
            row.edit.setReadOnly(locked)
            row.browse_button.setEnabled(not locked)
        for w in (self.preset_combo, self.load_button):
            w.setEnabled(not locked)
