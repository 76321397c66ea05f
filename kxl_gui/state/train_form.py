"""The Train tab's launch form as plain data: every field of the Run card and of the settings panel, no Qt.

`TrainForm` holds what the user sees: paths and launch choices, and in `settings` one value per training option
(`SETTING_FIELDS`, generated from the config dataclasses, so a new option needs no form work). Whole numbers,
switches and choices are held as values; numbers, number lists and `Name=factor` tables are held as the text the
user typed, so a half-typed "2.5e-" is kept and reported by `to_engine()` instead of being lost.

- `to_engine()` is the validated `TrainConfig` a launch writes (KxlError naming the key when a value is bad:
  the same messages as the CLI, through `config_from_dict`);
- `from_engine(config)` is the form of a preset, a loaded TOML, or the config.toml of a run being reattached;
- `settings` is addressed by TOML key, also as attributes, so kxl_gui.kit.FormBinding binds each option's
  widget like any other field: no re-entrancy flags or blocked signals in the tab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_core.errors import KxlError
from trainer_core.train import config as train_config
from trainer_core.train.config import (
    MAX_DATA_WORKERS,
    MIXED_PRECISION,
    OPTIMIZERS,
    SCHEDULERS,
    SECTIONS,
    VAE_DTYPES,
    TrainConfig,
    config_from_dict,
)
from trainer_core.train.launch import DEFAULT_PORT, LaunchPlan

PATH_KEYS = ("model.base", "dataset.path", "output.run_dir")  # edited in the Run card, not in the settings
CHOICES = {
    "optimizer.type": OPTIMIZERS,
    "optimizer.lr_scheduler": SCHEDULERS,
    "training.mixed_precision": MIXED_PRECISION,
    "training.vae_dtype": VAE_DTYPES,
    "network.algo": ("lokr",),
}
# training.checkpointing ("full" | "selective" | "none") replaces the gradient_checkpointing switch; read its
# choices from config.py when that version is installed, so the form follows whichever the engine has
if hasattr(train_config, "CHECKPOINTING"):
    CHOICES["training.checkpointing"] = tuple(train_config.CHECKPOINTING)
# (minimum, step) of whole-number options, the lowest value trainer_core.train.config.validate() accepts, so a
# spin box cannot hold a value the engine refuses. config.py states these only as checks inside validate(), so
# they are listed here and tests/core/test_form_state_train.py holds each one against validate() (minimum
# accepted, one below refused): a changed rule fails that test instead of drifting. Other ints start at 0.
INT_RANGES = {
    "dataset.resolution": (64, 64),
    "dataset.min_bucket_reso": (1, 64),
    "dataset.max_bucket_reso": (1, 64),
    "dataset.bucket_step": (32, 32),
    "dataset.max_token_length": (75, 75),
    "dataset.num_workers": (-1, 1),  # -1: automatic
    "network.dim": (1, 1),
    "network.conv_dim": (1, 1),
    "network.factor": (-1, 1),  # -1: balanced
    "training.batch_size": (1, 1),
    "training.gradient_accumulation_steps": (1, 1),
    "training.keep_states": (1, 1),
    "training.sample_steps": (1, 1),
    "training.max_nonfinite_steps": (1, 1),
}
INT_MAXIMUMS = {"dataset.max_token_length": 225, "dataset.num_workers": MAX_DATA_WORKERS}
INT_MAX = 1_000_000_000
DEVICES = ("auto", "gpu", "cpu")


@dataclass(frozen=True)
class SettingField:
    """One training option. `kind`: choice | bool | int | lines (a list of strings, one per line) | number |
    numbers (comma-separated) | factors (`Name=int` pairs) | text."""

    key: str
    kind: str
    default: Any
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = INT_MAX
    step: int = 1

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]


def _kind(key: str, default: Any) -> str:
    if key in CHOICES:
        return "choice"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, dict):
        return "factors"
    if isinstance(default, list):
        return "numbers" if all(isinstance(v, float) for v in default) and default else "lines"
    return "text"


def _setting_fields() -> tuple[SettingField, ...]:
    out = []
    for section, cls in SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            if key in PATH_KEYS:
                continue
            default = getattr(defaults, f.name)
            low, step = INT_RANGES.get(key, (0, 1))
            out.append(SettingField(key, _kind(key, default), default, tuple(CHOICES.get(key, ())), low,
                                    INT_MAXIMUMS.get(key, INT_MAX), step))  # fmt: skip
    return tuple(out)


SETTING_FIELDS = _setting_fields()
FIELDS_BY_KEY = {f.key: f for f in SETTING_FIELDS}


def format_number(value: float) -> str:
    """A float as a user would type it: 4e-05 stays short, 2.0 reads 2."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") and "e" not in text else text


def display_value(field: SettingField, value: Any) -> Any:
    """An engine value as the form holds it (text for numbers, lists and tables)."""
    if field.kind == "number":
        return format_number(value)
    if field.kind == "numbers":
        return ", ".join(format_number(v) for v in value)
    if field.kind == "factors":
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if field.kind == "lines":
        return [str(v) for v in value]
    if field.kind == "text":
        return str(value)
    return value


def engine_value(field: SettingField, shown: Any) -> Any:
    """The form's value for the engine; KxlError naming the key when typed text is not what it must be."""
    if field.kind in ("choice", "bool", "int"):
        return shown
    if field.kind == "lines":
        return [line.strip() for line in shown if line.strip()]
    text = str(shown).strip()
    try:
        if field.kind == "factors":
            out = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                name, _, number = part.partition("=")
                out[name.strip()] = int(number)
            return out
        if field.kind == "numbers":
            return [float(p) for p in text.replace(" ", "").split(",") if p]
        if field.kind == "number":
            return float(text)
    except ValueError:
        kind = {"factors": "Name=number pairs separated by commas", "numbers": "numbers separated by commas"}
        raise KxlError(f"'{field.key}' must be {kind.get(field.kind, 'a number')}, got {text!r}") from None
    return text


def prompt_lines(text: str) -> list[str]:
    """Sample prompts typed one per line: blank lines are no prompt."""
    return [line.strip() for line in text.splitlines() if line.strip()]


class SettingValues:
    """The training options' form values keyed by TOML key. Attribute access by key (`getattr(values,
    "training.batch_size")`) lets kxl_gui.kit.form_binding bind a widget to an option as to any form field."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_values", {f.key: display_value(f, f.default) for f in SETTING_FIELDS})
        for key, value in (values or {}).items():
            setattr(self, key, value)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no training option {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in self._values:
            raise AttributeError(f"no training option {key!r}")
        self._values[key] = list(value) if FIELDS_BY_KEY[key].kind == "lines" else value

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SettingValues) and other._values == self._values

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


@dataclass(eq=False)
class TrainForm:
    """The Train launch form: the Run card's fields and the settings panel's `settings`."""

    preset: str = ""
    dataset: str = ""
    base: str = ""
    run_dir: str = ""
    processes: int = 1
    machines: int = 1
    device: str = "auto"  # one of DEVICES
    main_ip: str = ""
    port: int = DEFAULT_PORT  # the rendezvous port of a multi-machine run
    settings: SettingValues = dataclasses.field(default_factory=SettingValues)

    @classmethod
    def from_engine(cls, cfg: TrainConfig, preset: str = "") -> TrainForm:
        """The form of a config: a preset (no paths), a loaded TOML, a run's config.toml (paths resolved against
        the file they came from)."""
        data = cfg.to_dict()
        settings = SettingValues({f.key: display_value(f, data[f.section][f.name]) for f in SETTING_FIELDS})
        return cls(preset=preset, base=str(cfg.base_path) if cfg.model.base else "",
                   dataset=str(cfg.dataset_path) if cfg.dataset.path else "", settings=settings)  # fmt: skip

    def load(self, other: TrainForm, keep_paths: bool = False) -> None:
        """Take `other`'s settings (a preset's, a file's) and, unless `keep_paths`, its dataset and base."""
        for key, value in other.settings.as_dict().items():  # in place: widgets stay bound to this object
            setattr(self.settings, key, value)
        self.preset = other.preset
        if not keep_paths:
            self.dataset, self.base = other.dataset, other.base

    def to_engine(self) -> TrainConfig:
        """The validated config the form describes, with its dataset and base paths (KxlError names the key)."""
        data = TrainConfig().to_dict()
        data["model"]["base"] = self.base.strip()
        data["dataset"]["path"] = self.dataset.strip()
        for f in SETTING_FIELDS:
            data[f.section][f.name] = engine_value(f, self.settings[f.key])
        return config_from_dict(data)

    @property
    def run_path(self) -> Path | None:
        text = self.run_dir.strip()
        return Path(text).expanduser() if text else None

    def use_cpu(self, gpu_present: bool) -> bool:
        return True if self.device == "cpu" else False if self.device == "gpu" else not gpu_present

    def launch_plan(self, config: Path, *, local_port: int, gpu_present: bool, resume_from: Path | None = None,
                    processes: int | None = None) -> LaunchPlan:  # fmt: skip
        """How Launch (or Resume from `resume_from`) starts `config`. One machine uses `local_port` (a free one);
        several rendezvous on the form's port at the main node's address."""
        return LaunchPlan(config=config, processes=processes or self.processes, machines=self.machines,
                          main_ip=self.main_ip.strip(), port=self.port if self.machines > 1 else local_port,
                          cpu=self.use_cpu(gpu_present), mixed_precision=self.settings["training.mixed_precision"],
                          resume=resume_from is not None, resume_from=resume_from)  # fmt: skip
