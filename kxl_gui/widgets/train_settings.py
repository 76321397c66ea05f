"""Every training option as a form, grouped by TOML section, with a search box that finds any of them.

The form is generated from the config dataclasses (trainer_core.train.config), so a new option shows up without
GUI work; `HELP` adds a sentence per key. Each row's tooltip names its TOML key ("training.batch_size"), which is
also what the search matches besides the label and help text. Values go back through `config_from_dict`, so
the GUI and the CLI reject the same bad input with the same message.

Paths (model.base, dataset.path, output.run_dir) are edited in the Run card, not here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from trainer_core.errors import KxlError
from trainer_core.train.config import (
    MIXED_PRECISION,
    OPTIMIZERS,
    SCHEDULERS,
    SECTIONS,
    VAE_DTYPES,
    TrainConfig,
    config_from_dict,
)

SKIPPED = {"model.base", "dataset.path", "output.run_dir"}
GROUPS = (
    ("training", "Training"),
    ("optimizer", "Optimizer"),
    ("network", "Network (LoKr)"),
    ("dataset", "Dataset and captions"),
    ("model", "Model"),
    ("output", "Output"),
)
CHOICES = {
    "optimizer.type": OPTIMIZERS,
    "optimizer.lr_scheduler": SCHEDULERS,
    "training.mixed_precision": MIXED_PRECISION,
    "training.vae_dtype": VAE_DTYPES,
    "network.algo": ("lokr",),
}
# (minimum, step) of whole-number options, matching trainer_core.train.config.validate(), so a spin box cannot
# hold a value the engine refuses (typing or stepping below stops at the minimum); other ints start at 0.
INT_RANGES = {
    "dataset.resolution": (64, 64),
    "dataset.min_bucket_reso": (1, 64),
    "dataset.max_bucket_reso": (1, 64),
    "dataset.bucket_step": (32, 32),
    "dataset.max_token_length": (75, 75),
    "network.dim": (1, 1),
    "network.conv_dim": (1, 1),
    "network.factor": (-1, 1),  # -1: balanced
    "training.batch_size": (1, 1),
    "training.gradient_accumulation_steps": (1, 1),
    "training.keep_states": (1, 1),
    "training.sample_steps": (1, 1),
    "training.max_nonfinite_steps": (1, 1),
    "dataset.num_workers": (-1, 1),  # -1: automatic
}
INT_MAXIMUMS = {"dataset.max_token_length": 225, "dataset.num_workers": 64}
INT_MAX = 1_000_000_000
HELP = {
    "model.v_prediction": "Train with v-prediction targets (only for v-pred base models).",
    "dataset.resolution": "Bucket area target: buckets hold about resolution² pixels.",
    "dataset.min_bucket_reso": "Smallest bucket side.",
    "dataset.max_bucket_reso": "Largest bucket side.",
    "dataset.bucket_step": "Bucket sides are multiples of this (SDXL needs 32; 64 is the card's).",
    "dataset.num_workers": "Processes that decode images ahead of the step: -1 automatic (min(4, cores - 1)), 0 none. "
    "The batches are the same for any count.",
    "training.save_every_minutes": "Also save a training state after this many minutes of wall time (0: by steps only).",
    "training.max_nonfinite_steps": "A step with a non-finite loss or gradient is skipped; this many in a row stop "
    "the run.",
    "training.data_seed": "0: the data order follows the seed. Another value reshuffles the order from here on.",
    "training.ddp_timeout_minutes": "A process stuck this long waiting for the others ends the run instead of hanging.",
    "dataset.bucket_no_upscale": "Never upscale small images; they get their own smaller buckets.",
    "dataset.random_crop": "Crop a random window instead of the centre (cannot be used with cached latents).",
    "dataset.shuffle_caption": "Shuffle the tags after the '|||' separator every epoch.",
    "dataset.keep_tokens": "Number of leading tags never shuffled or dropped (when no separator is used).",
    "dataset.keep_tokens_separator": "Tags before this separator stay fixed.",
    "dataset.caption_tag_dropout_rate": "Probability of dropping each flexible tag.",
    "dataset.caption_dropout_rate": "Probability of training an image with an empty caption.",
    "dataset.max_token_length": "75, 150 or 225 tokens (the card uses 225: three CLIP chunks).",
    "dataset.cache_latents": "Encode each image once with the VAE and keep the latents on disk.",
    "network.algo": "LyCORIS algorithm (the recipe is LoKr).",
    "network.dim": "LoKr rank; >= half the factor size switches w2 to a full matrix (the card's setting).",
    "network.alpha": "LoKr alpha; with full matrices the scale is 1.",
    "network.conv_dim": "Rank for convolution layers.",
    "network.conv_alpha": "Alpha for convolution layers.",
    "network.factor": "Kronecker factor for layers without a per-class factor (-1: balanced).",
    "network.full_matrix": "Force full-matrix w2 whatever dim is.",
    "network.train_norm": "Also train the normalization layers.",
    "network.train_text_encoder": "Train LoKr modules on both text encoders.",
    "network.module_factors": "Per-module-class factors, e.g. Attention=4, FeedForward=2, CLIPAttention=8, CLIPMLP=8.",
    "optimizer.type": "Lion8bit is the card's optimizer (8-bit state, bitsandbytes).",
    "optimizer.unet_lr": "Learning rate of the UNet LoKr.",
    "optimizer.text_encoder_lr": "Learning rate of the text-encoder LoKr.",
    "optimizer.betas": "Two numbers, e.g. 0.9, 0.95.",
    "optimizer.weight_decay": "Decoupled weight decay.",
    "optimizer.max_grad_norm": "Clip the gradient norm to this (0 disables clipping).",
    "optimizer.lr_scheduler": "Learning-rate schedule over the optimizer steps.",
    "optimizer.lr_warmup_steps": "Linear warm-up length in optimizer steps.",
    "training.batch_size": "Images per process per micro-batch.",
    "training.gradient_accumulation_steps": "Micro-batches per optimizer step.",
    "training.epochs": "Passes over the dataset (used when max_steps is 0).",
    "training.max_steps": "Stop after this many optimizer steps (0: run whole epochs).",
    "training.seed": "Seed of the data order, noise and LoKr initialisation.",
    "training.mixed_precision": "Weights and compute precision (CPU: use 'no').",
    "training.vae_dtype": "VAE precision (fp32 avoids NaN latents with the SDXL VAE).",
    "training.gradient_checkpointing": "Recompute activations in backward: much less memory, ~25% slower.",
    "training.min_snr_gamma": "Min-SNR loss weighting gamma (0 disables).",
    "training.noise_offset": "Offset noise strength.",
    "training.save_every_n_steps": "Save the LoKr and a resumable state every N steps (0: only at the end).",
    "training.keep_states": "Resumable training states kept on disk (LoKr files are all kept).",
    "training.sample_every": "Render the sample prompts every N steps (0: never).",
    "training.sample_prompts": "Prompts for sample images, one per line (A1111 syntax).",
    "training.sample_steps": "Sampler steps per sample image.",
    "output.name": "File name stem of the saved LoKr files.",
}


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize().replace("Lr", "LR").replace("lr", "LR").replace("Te ", "TE ")


def _format_float(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") and "e" not in text else text


class SettingsForm(QWidget):
    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._cfg = TrainConfig()
        self.editors: dict[str, QWidget] = {}
        self.rows: dict[str, tuple[QLabel, QWidget]] = {}
        self.groups: dict[str, tuple[QFrame, QFormLayout]] = {}
        self._loading = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search settings (name, key or description)…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.filter)
        lay.addWidget(self.search)
        self.no_match = QLabel("No setting matches.")
        self.no_match.setObjectName("muted")
        self.no_match.hide()
        lay.addWidget(self.no_match)
        for section, title in GROUPS:
            frame = QFrame()
            frame.setObjectName("settingsGroup")
            box = QVBoxLayout(frame)
            box.setContentsMargins(10, 8, 10, 8)
            head = QLabel(title)
            head.setObjectName("groupTitle")
            box.addWidget(head)
            form = QFormLayout()
            form.setHorizontalSpacing(12)
            form.setVerticalSpacing(5)
            box.addLayout(form)
            lay.addWidget(frame)
            self.groups[section] = (frame, form)
            for f in dataclasses.fields(SECTIONS[section]):
                key = f"{section}.{f.name}"
                if key in SKIPPED:
                    continue
                default = getattr(SECTIONS[section](), f.name)
                editor = self._make_editor(key, default)
                label = QLabel(_label(f.name))
                tip = f"<b>{key}</b><br>{HELP.get(key, '')}"
                label.setToolTip(tip)
                editor.setToolTip(tip)
                form.addRow(label, editor)
                self.editors[key] = editor
                self.rows[key] = (label, editor)
        self.set_config(self._cfg)

    # ---- editors ------------------------------------------------------------------------------------------
    def _make_editor(self, key: str, default: Any) -> QWidget:
        if key in CHOICES:
            w = QComboBox()
            w.addItems(list(CHOICES[key]))
            w.currentIndexChanged.connect(self._emit_changed)
        elif isinstance(default, bool):
            w = QCheckBox()
            w.toggled.connect(self._emit_changed)
        elif isinstance(default, int):
            w = QSpinBox()
            low, step = INT_RANGES.get(key, (0, 1))
            w.setRange(low, INT_MAXIMUMS.get(key, INT_MAX))
            w.setSingleStep(step)
            w.setGroupSeparatorShown(True)
            w.valueChanged.connect(self._emit_changed)
        elif key == "training.sample_prompts":
            w = QPlainTextEdit()
            w.setPlaceholderText("one prompt per line")
            w.setFixedHeight(70)
            w.textChanged.connect(self._emit_changed)
        else:
            w = QLineEdit()
            w.textChanged.connect(self._emit_changed)
        w.setObjectName(f"setting:{key}")
        return w

    def _emit_changed(self, *_args: object) -> None:
        if not self._loading:
            self.changed.emit()

    def set_config(self, cfg: TrainConfig) -> None:
        self._cfg = cfg
        data = cfg.to_dict()
        self._loading = True
        try:
            for key, w in self.editors.items():
                section, name = key.split(".", 1)
                value = data[section][name]
                if isinstance(w, QComboBox):
                    i = w.findText(str(value))
                    w.setCurrentIndex(max(0, i))
                elif isinstance(w, QCheckBox):
                    w.setChecked(bool(value))
                elif isinstance(w, QSpinBox):
                    w.setValue(int(value))
                elif isinstance(w, QPlainTextEdit):
                    w.setPlainText("\n".join(value))
                elif isinstance(value, dict):
                    w.setText(", ".join(f"{k}={v}" for k, v in value.items()))
                elif isinstance(value, list):
                    w.setText(", ".join(_format_float(v) for v in value))
                elif isinstance(value, float):
                    w.setText(_format_float(value))
                else:
                    w.setText(str(value))
        finally:
            self._loading = False
        self.changed.emit()

    def _value(self, key: str, default: Any) -> Any:
        w = self.editors[key]
        if isinstance(w, QComboBox):
            return w.currentText()
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, QSpinBox):
            return w.value()
        if isinstance(w, QPlainTextEdit):
            return [line.strip() for line in w.toPlainText().splitlines() if line.strip()]
        text = w.text().strip()
        try:
            if isinstance(default, dict):
                out = {}
                for part in filter(None, (p.strip() for p in text.split(","))):
                    name, _, number = part.partition("=")
                    out[name.strip()] = int(number)
                return out
            if isinstance(default, list):
                return [float(p) for p in text.replace(" ", "").split(",") if p]
            if isinstance(default, float):
                return float(text)
        except ValueError:
            kind = {dict: "Name=number pairs separated by commas", list: "numbers separated by commas"}
            raise KxlError(f"'{key}' must be {kind.get(type(default), 'a number')}, got {text!r}") from None
        return text

    def config(self, base: TrainConfig | None = None) -> TrainConfig:
        """The validated config these widgets describe; paths come from `base` (default: the last set_config)."""
        base = base or self._cfg
        data = base.to_dict()
        for key in self.editors:
            section, name = key.split(".", 1)
            data[section][name] = self._value(key, data[section][name])
        return config_from_dict(data)

    def set_read_only(self, read_only: bool) -> None:
        """Show the values without letting them change (a live run's settings); the search still works."""
        for w in self.editors.values():
            if isinstance(w, (QLineEdit, QPlainTextEdit, QSpinBox)):
                w.setReadOnly(read_only)
            else:
                w.setEnabled(not read_only)

    # ---- search -------------------------------------------------------------------------------------------
    def filter(self, text: str) -> int:
        """Show only the options whose label, key or help contains every word of `text`; returns how many."""
        words = text.lower().split()
        shown = 0
        for section, (frame, form) in self.groups.items():
            visible_here = 0
            for key, (label, _editor) in self.rows.items():
                if not key.startswith(section + "."):
                    continue
                hay = f"{key} {label.text()} {HELP.get(key, '')}".lower()
                ok = all(w in hay for w in words)
                form.setRowVisible(label, ok)
                visible_here += ok
            frame.setVisible(visible_here > 0)
            shown += visible_here
        self.no_match.setVisible(shown == 0)
        return shown

    def visible_keys(self) -> list[str]:
        return [k for k, (label, _) in self.rows.items()
                if self.groups[k.split(".")[0]][1].isRowVisible(label)
                and not self.groups[k.split(".")[0]][0].isHidden()]  # fmt: skip
