"""Training configuration: a versioned TOML file, validated with messages that name the file and the key.

Layout (every key optional except `model.base` and `dataset.path`; defaults are the Kohaku XL Delta card's):

    schema_version = 1
    [model]      base, v_prediction
    [dataset]    path, resolution, min_bucket_reso, max_bucket_reso, bucket_step, bucket_no_upscale, random_crop,
                 shuffle_caption, keep_tokens, keep_tokens_separator, caption_tag_dropout_rate,
                 caption_dropout_rate, max_token_length, cache_latents, num_workers
    [network]    algo, dim, alpha, conv_dim, conv_alpha, factor, full_matrix, train_norm, train_text_encoder,
                 module_factors = { Attention = 4, FeedForward = 2, CLIPAttention = 8, CLIPMLP = 8 }
    [optimizer]  type, unet_lr, text_encoder_lr, betas, weight_decay, max_grad_norm, lr_scheduler, lr_warmup_steps
    [training]   batch_size, gradient_accumulation_steps, epochs, max_steps, seed, mixed_precision, vae_dtype,
                 checkpointing, min_snr_gamma, noise_offset, save_every_n_steps, keep_states,
                 sample_every, sample_prompts, sample_steps, save_every_minutes, max_nonfinite_steps, data_seed,
                 ddp_timeout_minutes
    [output]     name, run_dir, tensorboard

Relative paths are resolved against the folder of the TOML file, so a run directory can be moved as a whole.
`training.gradient_checkpointing = true/false` (the setting before `training.checkpointing`) is still read, as
"full"/"none"; files are written with `checkpointing`.
Presets are shipped TOML files in `resources/presets/` (see `load_preset`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import KxlError
from ..paths import resources_dir

SCHEMA_VERSION = 1
OPTIMIZERS = ("Lion8bit", "Lion", "AdamW", "AdamW8bit")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
VAE_DTYPES = ("fp32", "fp16", "bf16")
# Activation checkpointing of the UNet (memory_model.py has the cost of each): "full" recomputes every block in the
# backward, "selective" only the transformer blocks (where most activation bytes are), "none" keeps everything.
CHECKPOINTING = ("full", "selective", "none")
LEGACY_CHECKPOINTING_KEY = "gradient_checkpointing"
# bf16 arithmetic on NVIDIA GPUs starts with Ampere (compute capability 8.0: RTX 30xx, A100); older cards emulate
# it slowly or refuse it.
BF16_NOTE = "bf16 needs an NVIDIA Ampere or newer GPU (RTX 30xx/40xx, A100, H100); use fp16 on older cards"
MAX_DATA_WORKERS = 64


@dataclass
class ModelConfig:
    base: str = ""
    v_prediction: bool = False


@dataclass
class DatasetConfig:
    path: str = ""
    resolution: int = 1024
    min_bucket_reso: int = 256
    max_bucket_reso: int = 4096
    bucket_step: int = 64
    bucket_no_upscale: bool = False
    random_crop: bool = False
    shuffle_caption: bool = True
    keep_tokens: int = 0
    keep_tokens_separator: str = "|||"
    caption_tag_dropout_rate: float = 0.1
    caption_dropout_rate: float = 0.0
    max_token_length: int = 225
    cache_latents: bool = False
    # Processes that decode, resize and crop images ahead of the training step (data_loader.py); 0 = on the
    # training thread; -1 = min(4, CPU cores per local rank - 1), resolved at run time. Does not change the batches.
    num_workers: int = -1


@dataclass
class NetworkConfig:
    algo: str = "lokr"
    dim: int = 10000
    alpha: float = 10000.0
    conv_dim: int = 10000
    conv_alpha: float = 10000.0
    factor: int = 8
    full_matrix: bool = False
    train_norm: bool = True
    train_text_encoder: bool = True
    module_factors: dict[str, int] = field(
        default_factory=lambda: {"Attention": 4, "FeedForward": 2, "CLIPAttention": 8, "CLIPMLP": 8}
    )


@dataclass
class OptimizerConfig:
    type: str = "Lion8bit"
    unet_lr: float = 4e-5
    text_encoder_lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 100


@dataclass
class TrainingConfig:
    batch_size: int = 4
    gradient_accumulation_steps: int = 16
    epochs: int = 1
    max_steps: int = 0  # 0: run `epochs` whole epochs
    seed: int = 1337
    mixed_precision: str = "fp16"
    vae_dtype: str = "fp32"  # the SDXL VAE overflows in fp16 (NaN latents)
    # One of CHECKPOINTING; the math is the same for all three, only memory and speed differ.
    checkpointing: str = "full"
    min_snr_gamma: float = 5.0  # 0 disables
    noise_offset: float = 0.05
    save_every_n_steps: int = 2000  # 0: only at the end
    keep_states: int = 2  # full training states kept on disk (LoKr files are all kept)
    sample_every: int = 0  # 0: no sample images during training
    sample_prompts: list[str] = field(default_factory=list)
    sample_steps: int = 20
    # A 17-day run must survive what a short one never meets:
    save_every_minutes: float = (
        60.0  # also save a state by wall time (0: steps only); bounds the work at risk
    )
    max_nonfinite_steps: int = (
        8  # a non-finite loss skips the update; this many in a row end the run (exit 3)
    )
    data_seed: int = (
        0  # 0: the data order follows `seed`; another value reshuffles (set on resume to move on)
    )
    ddp_timeout_minutes: float = (
        30.0  # a rank stuck this long in a collective ends the run instead of hanging
    )

    @property
    def gradient_checkpointing(self) -> bool:
        """The pre-`checkpointing` setting: True unless checkpointing is "none" (code and configs still use it)."""
        return self.checkpointing != "none"

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.checkpointing = "full" if on else "none"


@dataclass
class OutputConfig:
    name: str = "kxl-lokr"
    run_dir: str = ""  # default: the folder holding the config file
    tensorboard: bool = False  # also write step scalars as TensorBoard files in <run_dir>/tensorboard/


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    schema_version: int = SCHEMA_VERSION
    source: Path | None = None  # the file it was read from (not serialised)

    # ------------------------------------------------------------------ paths
    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source is not None else Path.cwd()

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.output.run_dir) if self.output.run_dir else self.base_dir

    @property
    def base_path(self) -> Path:
        return self.resolve(self.model.base)

    @property
    def dataset_path(self) -> Path:
        return self.resolve(self.dataset.path)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            if f.name in ("schema_version", "source"):
                continue
            out[f.name] = dataclasses.asdict(getattr(self, f.name))
        return out

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def resume_fingerprint(self) -> str:
        """Hash of every setting a resumed run must share with the run that saved the state.

        Length settings (epochs, max_steps), save/sample cadence, output names and the data worker count may change
        between runs.
        """
        d = self.to_dict()
        d["dataset"].pop("num_workers", None)  # the batches are the same for any worker count
        # Hashed as the old bool, so states saved before `checkpointing` existed still resume (and full/selective,
        # the same math, may be swapped on resume).
        d["training"][LEGACY_CHECKPOINTING_KEY] = d["training"].pop("checkpointing") != "none"
        d["training"] = {k: v for k, v in d["training"].items()
                         if k not in ("epochs", "max_steps", "save_every_n_steps", "keep_states",
                                      "sample_every", "sample_prompts", "sample_steps", "save_every_minutes",
                                      "max_nonfinite_steps", "data_seed", "ddp_timeout_minutes")}  # fmt: skip
        d["model"]["base"] = str(self.base_path.resolve())
        d["dataset"]["path"] = str(self.dataset_path.resolve())
        d.pop("output")
        raw = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def with_absolute_paths(self) -> TrainConfig:
        """A copy whose paths no longer depend on where the TOML lives (for writing it elsewhere)."""
        new = dataclasses.replace(
            self,
            model=dataclasses.replace(
                self.model, base=str(self.base_path.resolve()) if self.model.base else ""
            ),
            dataset=dataclasses.replace(
                self.dataset, path=str(self.dataset_path.resolve()) if self.dataset.path else ""
            ),
            output=dataclasses.replace(self.output, run_dir=""),
        )
        return new


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "dataset": DatasetConfig,
    "network": NetworkConfig,
    "optimizer": OptimizerConfig,
    "training": TrainingConfig,
    "output": OutputConfig,
}


def config_from_dict(data: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
    """Build and validate a config from parsed TOML; errors name `source` and the offending key."""
    where = Path(source) if source is not None else None
    data = dict(data)
    version = data.pop("schema_version", None)
    if version is None:
        raise KxlError("training config has no schema_version (expected schema_version = 1)", path=where)
    if version != SCHEMA_VERSION:
        raise KxlError(
            f"training config schema_version {version!r} is not supported (this version reads {SCHEMA_VERSION})",
            path=where,
        )
    sections = {}
    for name, value in data.items():
        if name not in SECTIONS:
            raise KxlError(f"unknown section [{name}] (known: {', '.join(SECTIONS)})", path=where)
        if not isinstance(value, dict):
            raise KxlError(f"'{name}' must be a table ([{name}])", path=where)
    for name, cls in SECTIONS.items():
        sections[name] = _section(cls, name, data.get(name, {}), where)
    cfg = TrainConfig(**sections, source=where)
    validate(cfg)
    return cfg


def _section(cls: type, name: str, values: dict[str, Any], where: Path | None) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    if cls is TrainingConfig:
        values = _legacy_checkpointing(values, where)
    for key, value in values.items():
        if key not in fields:
            raise KxlError(f"unknown key '{name}.{key}' (known: {', '.join(fields)})", path=where)
        kwargs[key] = _coerce(getattr(defaults, key), value, f"{name}.{key}", where)
    return cls(**kwargs)


def _legacy_checkpointing(values: dict[str, Any], where: Path | None) -> dict[str, Any]:
    """`gradient_checkpointing = true/false` read as `checkpointing = "full"/"none"`; both keys must agree."""
    if LEGACY_CHECKPOINTING_KEY not in values:
        return values
    values = dict(values)
    on = _coerce(True, values.pop(LEGACY_CHECKPOINTING_KEY), f"training.{LEGACY_CHECKPOINTING_KEY}", where)
    mode = values.get("checkpointing")
    if mode is None:
        values["checkpointing"] = "full" if on else "none"
    elif isinstance(mode, str) and (mode != "none") != on:
        raise KxlError(f"'training.{LEGACY_CHECKPOINTING_KEY} = {str(on).lower()}' contradicts 'training."
                       f"checkpointing = \"{mode}\"'; keep only 'training.checkpointing'", path=where)  # fmt: skip
    return values


def _coerce(default: Any, value: Any, key: str, where: Path | None) -> Any:
    """Check `value` against the type of the default; ints are accepted where floats are expected."""

    def bad(kind: str) -> KxlError:
        return KxlError(f"'{key}' must be {kind}, got {value!r}", path=where)

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")  # inf/nan (TOML allows both) would only fail hours later as NaN loss
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise bad("a list")
        return list(value)
    if isinstance(default, dict):
        if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value.values()):  # fmt: skip
            raise bad("a table of whole numbers")
        return dict(value)
    return value


def validate(cfg: TrainConfig) -> None:
    where = cfg.source

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise KxlError(message, path=where)

    d, n, o, t = cfg.dataset, cfg.network, cfg.optimizer, cfg.training
    need(d.resolution >= 64 and d.resolution % d.bucket_step == 0 if d.bucket_step > 0 else False,
         f"'dataset.resolution' ({d.resolution}) must be >= 64 and a multiple of dataset.bucket_step")  # fmt: skip
    need(d.bucket_step > 0 and d.bucket_step % 32 == 0,
         f"'dataset.bucket_step' ({d.bucket_step}) must be a positive multiple of 32 (SDXL needs /32 sizes)")  # fmt: skip
    need(0 < d.min_bucket_reso <= d.max_bucket_reso,
         "'dataset.min_bucket_reso' must be > 0 and <= 'dataset.max_bucket_reso'")  # fmt: skip
    need(d.max_token_length in (75, 150, 225),
         f"'dataset.max_token_length' must be 75, 150 or 225, got {d.max_token_length}")  # fmt: skip
    need(-1 <= d.num_workers <= MAX_DATA_WORKERS,
         f"'dataset.num_workers' must be -1 (automatic), 0 (no worker processes) or up to {MAX_DATA_WORKERS}, "
         f"got {d.num_workers}")  # fmt: skip
    for key in ("caption_tag_dropout_rate", "caption_dropout_rate"):
        v = getattr(d, key)
        need(0.0 <= v <= 1.0, f"'dataset.{key}' must be between 0 and 1, got {v}")
    need(n.algo == "lokr", f"'network.algo' must be 'lokr' (got '{n.algo}')")
    need(n.dim > 0 and n.conv_dim > 0, "'network.dim' and 'network.conv_dim' must be > 0")
    need(n.factor == -1 or n.factor > 0, "'network.factor' must be -1 (balanced) or a positive number")
    for cls, f in n.module_factors.items():
        need(f == -1 or f > 0, f"'network.module_factors.{cls}' must be -1 or a positive number, got {f}")
    need(o.type in OPTIMIZERS, f"'optimizer.type' must be one of {', '.join(OPTIMIZERS)}, got '{o.type}'")
    need(o.lr_scheduler in SCHEDULERS,
         f"'optimizer.lr_scheduler' must be one of {', '.join(SCHEDULERS)}, got '{o.lr_scheduler}'")  # fmt: skip
    need(len(o.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas),
         f"'optimizer.betas' must be two numbers in [0, 1), got {o.betas}")  # fmt: skip
    need(o.unet_lr >= 0 and o.text_encoder_lr >= 0, "learning rates must be >= 0")
    need(0 <= t.seed < 2**63, f"'training.seed' must be a whole number in [0, 2^63), got {t.seed}")
    need(d.keep_tokens >= 0, f"'dataset.keep_tokens' must be >= 0, got {d.keep_tokens}")
    need(o.weight_decay >= 0, "'optimizer.weight_decay' must be >= 0")
    need(o.max_grad_norm >= 0, "'optimizer.max_grad_norm' must be >= 0 (0 disables clipping)")
    need(o.lr_warmup_steps >= 0, "'optimizer.lr_warmup_steps' must be >= 0")
    need(t.batch_size >= 1, "'training.batch_size' must be >= 1")
    need(t.gradient_accumulation_steps >= 1, "'training.gradient_accumulation_steps' must be >= 1")
    need(t.epochs >= 1 or t.max_steps >= 1, "set 'training.epochs' or 'training.max_steps' to at least 1")
    need(t.max_steps >= 0, "'training.max_steps' must be >= 0")
    need(t.mixed_precision in MIXED_PRECISION,
         f"'training.mixed_precision' must be one of {', '.join(MIXED_PRECISION)}")  # fmt: skip
    need(t.vae_dtype in VAE_DTYPES, f"'training.vae_dtype' must be one of {', '.join(VAE_DTYPES)}")
    need(t.checkpointing in CHECKPOINTING,
         f"'training.checkpointing' must be one of {', '.join(CHECKPOINTING)}, got '{t.checkpointing}'")  # fmt: skip
    need(t.min_snr_gamma >= 0, "'training.min_snr_gamma' must be >= 0 (0 disables)")
    need(t.noise_offset >= 0, "'training.noise_offset' must be >= 0")
    need(t.save_every_n_steps >= 0 and t.sample_every >= 0, "save/sample intervals must be >= 0")
    need(t.keep_states >= 1, "'training.keep_states' must be >= 1")
    need(t.sample_steps >= 1, f"'training.sample_steps' must be >= 1, got {t.sample_steps}")
    need(t.save_every_minutes >= 0, "'training.save_every_minutes' must be >= 0 (0: save by steps only)")
    need(t.max_nonfinite_steps >= 1, "'training.max_nonfinite_steps' must be >= 1")
    need(
        0 <= t.data_seed < 2**63,
        f"'training.data_seed' must be a whole number in [0, 2^63), got {t.data_seed}",
    )
    need(t.ddp_timeout_minutes > 0, "'training.ddp_timeout_minutes' must be > 0")
    need(all(isinstance(p, str) for p in t.sample_prompts), "'training.sample_prompts' must be strings")
    need(bool(cfg.output.name.strip()) and "/" not in cfg.output.name and "\\" not in cfg.output.name,
         "'output.name' must be a plain file name")  # fmt: skip


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a training TOML."""
    path = Path(path)
    if not path.is_file():
        raise KxlError("training config not found", path=path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KxlError(f"not valid TOML ({exc})", path=path) from None
    return config_from_dict(data, path)


def presets_dir() -> Path:
    return resources_dir() / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def load_preset(name: str) -> TrainConfig:
    """A shipped preset ("kohaku-xl-delta", "tiny-demo"); model.base and dataset.path are still empty."""
    path = presets_dir() / f"{name}.toml"
    if not path.is_file():
        raise KxlError(f"unknown training preset '{name}' (available: {', '.join(preset_names()) or 'none'})")
    cfg = load_config(path)
    cfg.source = None
    return cfg
