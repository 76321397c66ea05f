"""Every training option as a form, grouped by TOML section, with a search box that finds any of them.

The rows are generated from the form state's fields (kxl_gui.state.train_form.SETTING_FIELDS, themselves from
the config dataclasses), so a new option shows up without GUI work; `HELP` adds a sentence per key. Each row's
tooltip names its TOML key ("training.batch_size"), which is also what the search matches besides the label and
help text. Every editor is bound to its key of the form's `SettingValues` (kxl_gui.kit.FormBinding): the widgets
hold no state of their own, and the form's `to_engine()` rejects bad input with the CLI's messages.

Paths (model.base, dataset.path, output.run_dir) are edited in the Run card, not here.
"""

from __future__ import annotations

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

from trainer_core.train.config import BF16_NOTE

from ..kit.form_binding import FormBinding
from ..state.train_form import SETTING_FIELDS, SettingField, SettingValues, prompt_lines

GROUPS = (
    ("training", "Training"),
    ("optimizer", "Optimizer"),
    ("network", "Network (LoKr)"),
    ("dataset", "Dataset and captions"),
    ("model", "Model"),
    ("output", "Output"),
)
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
    "training.mixed_precision": f"Weights and compute precision (CPU: use 'no'); {BF16_NOTE}.",
    "training.vae_dtype": "VAE precision (fp32 avoids NaN latents with the SDXL VAE).",
    "training.checkpointing": "Recompute activations in backward. full: least memory; selective: only the UNet's "
    "transformer blocks (+4.4 GiB at 1024² batch 4, ~3% less compute, for 24 GB cards); none: ~50 GiB at the "
    "card's settings.",
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


class SettingsForm(QWidget):
    """The settings panel over `values`; `edited(key)` after the user changed an option."""

    edited = Signal(str)

    def __init__(self, values: SettingValues, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.binding = FormBinding(values, self)
        self.binding.edited.connect(self.edited)
        self.editors: dict[str, QWidget] = {}
        self.rows: dict[str, tuple[QLabel, QWidget]] = {}
        self.groups: dict[str, tuple[QFrame, QFormLayout]] = {}
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
            for field in (f for f in SETTING_FIELDS if f.section == section):
                editor = self._make_editor(field)
                label = QLabel(_label(field.name))
                tip = f"<b>{field.key}</b><br>{HELP.get(field.key, '')}"
                label.setToolTip(tip)
                editor.setToolTip(tip)
                form.addRow(label, editor)
                self.editors[field.key] = editor
                self.rows[field.key] = (label, editor)

    # ---- editors ------------------------------------------------------------------------------------------
    def _make_editor(self, field: SettingField) -> QWidget:
        key, bind = field.key, self.binding
        if field.kind == "choice":
            w = QComboBox()
            w.addItems(list(field.choices))
            bind.bind(key, w.currentText, lambda v, w=w: w.setCurrentIndex(max(0, w.findText(str(v)))),
                      w.currentIndexChanged)  # fmt: skip
        elif field.kind == "bool":
            w = QCheckBox()
            bind.check(w, key)
        elif field.kind == "int":
            w = QSpinBox()
            w.setRange(field.minimum, field.maximum)
            w.setSingleStep(field.step)
            # no thousands separator: the values read as in the TOML file and next to the float fields
            # ("dim 10000" beside "alpha 10000", not "10,000")
            bind.spin(w, key)
        elif field.kind == "lines":
            w = QPlainTextEdit()
            w.setPlaceholderText("one prompt per line")
            w.setFixedHeight(70)
            bind.bind(key, lambda w=w: prompt_lines(w.toPlainText()), lambda v, w=w: w.setPlainText("\n".join(v)),
                      w.textChanged)  # fmt: skip
        else:
            w = QLineEdit()
            bind.line(w, key)
        w.setObjectName(f"setting:{key}")
        return w

    def show_values(self) -> None:
        """Show the bound values after they changed in code (a preset, a loaded file, a run's config)."""
        self.binding.push()

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
